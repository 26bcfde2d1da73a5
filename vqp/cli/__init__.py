"""``vqp`` command line: one module per subcommand, each a thin layer over the library."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import VqpError

# subcommand modules; each has register(subparsers) and sets func(args) -> int
COMMANDS = ("detect", "image")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqp", description="Detector-driven encoder preprocessing: objects keep their bits.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the detector."""
    g = p.add_argument_group("detector")
    g.add_argument("--model", help="model file, folder or name; 'opencv' for the weight-free fallback "
                   "(default: $VQP_MODEL, then the model folder $VQP_MODEL_DIR or ../shared/models)")
    g.add_argument("--classes", type=lambda s: [c for c in s.split(",") if c], help="comma-separated class names or ids to keep")
    g.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    g.add_argument("--imgsz", type=int, default=640, help="detector input size (default 640)")
    g.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")


def detector_from_args(args):
    from ..detect import load_detector

    if not 0 <= args.conf <= 1:
        raise VqpError(f"--conf must be between 0 and 1, got {args.conf}")
    return load_detector(args.model, classes=args.classes, conf=args.conf, imgsz=args.imgsz, device=args.device)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    try:
        return int(args.func(args) or 0)
    except VqpError as e:
        print(f"vqp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (e.g. `| head`): end quietly
        return 0


if __name__ == "__main__":
    sys.exit(main())
