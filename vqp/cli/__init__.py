"""``vqp`` command line: one module per subcommand, each a thin layer over the library."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from .. import __version__
from ..errors import VqpError

# subcommand modules; each has register(subparsers) and sets func(args) -> int
COMMANDS = ("detect", "image", "serve", "robustness", "repair", "encode", "filter", "batch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqp", description="Detector-driven encoder preprocessing: objects keep their bits.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("-V", "--version", action="version", version=f"vqp {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def add_detector_args(p: argparse.ArgumentParser, conf: float = 0.25) -> None:
    """Options shared by every command that runs the detector.

    ``--conf`` is what counts as a detection in what vqp reports; commands that steer bits
    also keep weaker boxes (down to ``vqp.roi.ROI_CONF``) internally, weighted by confidence.
    """
    g = p.add_argument_group("detector")
    g.add_argument("--model", help="model file, folder or name; 'opencv' for the weight-free fallback "
                   "(default: $VQP_MODEL, then the model folder $VQP_MODEL_DIR or ../shared/models)")
    g.add_argument("--classes", type=lambda s: [c for c in s.split(",") if c], help="comma-separated class names or ids to keep")
    g.add_argument("--conf", type=float, default=conf, help=f"confidence threshold (default {conf})")
    g.add_argument("--imgsz", type=int, default=640, help="detector input size (default 640)")
    g.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")


def check_detector_args(args) -> None:
    """The detector flags, checked before any model loads: one line for a bad value, a missing GPU
    or a typo in --device."""
    from ..video.options import check_device

    if not 0 <= args.conf <= 1:
        raise VqpError(f"--conf must be between 0 and 1, got {args.conf}")
    if args.imgsz < 32:
        raise VqpError(f"--imgsz must be at least 32, got {args.imgsz}")
    check_device(args.device)


def detector_from_args(args, fast: bool = False, steer: bool = False):
    """The detector the flags ask for; ``steer``: commands that steer bits also get the boxes
    between ``vqp.roi.ROI_CONF`` and ``--conf`` (they report only those at ``--conf`` and above)."""
    from ..detect import load_detector
    from ..roi import ROI_CONF

    check_detector_args(args)
    conf = min(args.conf, ROI_CONF) if steer else args.conf
    return load_detector(args.model, classes=args.classes, conf=conf, imgsz=args.imgsz, device=args.device, fast=fast)


def take_stdout(buffering: int = -1):
    """Stdout as a binary stream for the video alone: the real descriptor is duplicated for the
    caller and fd 1 (and ``sys.stdout``) now go to stderr, so no library's print lands in the stream."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=buffering)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return out


def add_roi_args(p: argparse.ArgumentParser) -> None:
    """ROI map options (vqp.roi.RoiConfig) shared by the image and video commands."""
    from ..roi import RoiConfig

    d = RoiConfig()
    g = p.add_argument_group("ROI map")
    g.add_argument("--margin", type=float, default=d.margin, help=f"pixels kept around each box (default {d.margin:g})")
    g.add_argument("--feather", type=float, default=d.feather,
                   help=f"pixels of transition from object to background (default {d.feather:g})")
    g.add_argument("--conf-full", type=float, default=d.conf_full,
                   help=f"boxes at or above this confidence are fully protected (default {d.conf_full:g})")
    g.add_argument("--priority", default="", metavar="CLASS=W,...",
                   help="per-class weight in [0, 1], e.g. person=1,car=0.5 (default 1 for every class)")


def roi_from_args(args):
    from ..roi import RoiConfig, parse_priority

    if not (args.margin >= 0 and args.feather >= 0 and 0 < args.conf_full <= 1):  # NaN fails too
        raise VqpError("--margin and --feather must be >= 0 and --conf-full in (0, 1]")
    return RoiConfig(margin=args.margin, feather=args.feather, conf_full=args.conf_full,
                     priority=parse_priority(args.priority))


# optional extras (pyproject.toml) and a module each of them brings
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "prometheus_client": "serve",
          "pydantic_settings": "serve", "pycocotools": "repair", "imagecorruptions": "repair", "ray": "ray"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends in one line on stderr and a status, never a traceback.

    Building the parser imports the subcommands (and with them torch), so Ctrl-C there is
    handled too.
    """
    os.environ.setdefault("YOLO_VERBOSE", "false")
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        return int(args.func(args) or 0)
    except VqpError as e:
        print(f"vqp: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        print(f"vqp: error: this command needs {root}: pip install 'vqp[{EXTRAS[root]}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this into a traceback
        print("vqp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (e.g. `| head`): end quietly
        return 0


if __name__ == "__main__":
    sys.exit(main())
