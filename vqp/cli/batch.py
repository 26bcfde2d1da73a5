"""``vqp batch INPUT... -o OUTDIR``: images and videos in one run, in-process or on Ray (``--ray``)."""
from __future__ import annotations

import json
import logging
import re
import sys
from collections import Counter

from ..errors import VqpError
from ..jpeg import BACKGROUND_WEIGHT, check_options
from . import add_detector_args, add_roi_args, check_detector_args, roi_from_args
from .encode import add_codec_args, add_video_args, options_from_args

ADDRESS = re.compile(r"auto|local|ray://\S+|[\w.-]+:\d+")


def register(sub) -> None:
    from ..video import DETECT_SIZE

    p = sub.add_parser("batch", help="encode many images and videos, in this process or on a Ray cluster",
                       description="Images become object-aware JPEG (as `vqp image`), videos are encoded as by "
                                   "`vqp encode`. Outputs mirror the input tree under OUTDIR; OUTDIR/manifest.jsonl "
                                   "gets one line per input, and a re-run skips what is done with the same options.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or (quoted) globs; images and videos mixed")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray: alone, a local Ray on this machine's cores (or $RAY_ADDRESS); 'auto' or "
                        "ray://HOST:10001 joins a cluster. Put it after the inputs, or write --ray=ADDRESS")
    p.add_argument("--actors", type=int, metavar="N", help="Ray workers (default: one per GPU, else one per CPU)")
    p.add_argument("--images-per-task", type=int, default=8, metavar="N",
                   help="images handed to a worker at once (default 8); each video is one task")
    p.add_argument("--json", action="store_true", help="print each manifest line as it is written")
    g = p.add_argument_group("images (as vqp image)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--match-quality", type=int, metavar="Q",
                   help="no larger than plain JPEG at quality Q (1-100), best objects (default: 75)")
    m.add_argument("--quality", type=int, metavar="Q", help="fixed JPEG quality Q (1-100); never larger than plain at Q")
    m.add_argument("--target-size", type=int, metavar="BYTES", help="no larger than BYTES, best objects")
    g.add_argument("--encoder", default="pillow", choices=["pillow", "jpegli"], help="JPEG encoder (default pillow)")
    g.add_argument("--background-weight", type=float, default=BACKGROUND_WEIGHT, metavar="W",
                   help=f"share of background quality in the search, >= 0 (default {BACKGROUND_WEIGHT})")
    add_roi_args(p)
    v = p.add_argument_group("videos (as vqp encode; its --quality is --mjpeg-quality here)")
    add_codec_args(v, quality="--mjpeg-quality")
    v.add_argument("--frames", type=int, metavar="N", help="encode only the first N frames of each video")
    v.add_argument("--compare", action="store_true", help="also encode plainly (not written) to record its size")
    v.add_argument("--video-imgsz", type=int, default=DETECT_SIZE,
                   help=f"detector input size on videos (as vqp encode --imgsz; default {DETECT_SIZE})")
    add_video_args(p)
    add_detector_args(p)
    p.set_defaults(func=run)


def settings_from_args(args):
    """Batch settings from the flags, every option checked before any input is read."""
    from ..batch import DetectorSpec, ImageOptions, Settings
    from ..models import FALLBACK, resolve_model
    from ..video import validate

    quality, match, target = check_options(args.quality, args.match_quality, args.target_size,
                                           args.background_weight, flags=True)
    check_detector_args(args)
    if args.video_imgsz < 32:
        raise VqpError(f"--video-imgsz must be at least 32, got {args.video_imgsz}")
    image = ImageOptions(quality, match, target, args.encoder, args.background_weight, roi_from_args(args))
    video = options_from_args(args, codec=args.codec, method=args.method, crf=args.crf, bitrate=args.bitrate,
                              two_pass=args.two_pass, match_crf=args.match_crf, preset=args.preset, gop=args.gop,
                              mjpeg_quality=args.mjpeg_quality, codec_options=dict(args.codec_option),
                              measure_plain=args.compare, max_frames=args.frames,
                              roi_object=args.roi_offsets[0], roi_background=args.roi_offsets[1])
    validate(video)
    choice = resolve_model(args.model)  # resolved once: the workers all load this file
    if choice.source == FALLBACK and choice.how != "requested":
        logging.getLogger("vqp").warning("vqp: %s; using the weight-free OpenCV detector (people and faces only)",
                                         choice.how)
    det = DetectorSpec(choice.source, tuple(args.classes) if args.classes else None, args.conf, args.imgsz,
                       args.video_imgsz, args.device)
    return Settings(image, video, det)


def runner_from_args(args):
    if args.ray is None:
        if args.actors is not None:
            raise VqpError("--actors needs --ray")
        return None
    if args.ray and not ADDRESS.fullmatch(args.ray):
        raise VqpError(f"--ray {args.ray!r} is not a Ray address (auto, ray://HOST:PORT or HOST:PORT); "
                       "write --ray=ADDRESS, or put --ray after the inputs")
    from ..distributed import RayRunner

    return RayRunner(None if args.ray in ("", "local") else args.ray, actors=args.actors)


def run(args) -> int:
    from tqdm import tqdm

    from ..batch import FAILED, Batch

    batch = Batch(args.inputs, args.output, settings_from_args(args), args.images_per_task)
    count: Counter = Counter()
    saved = Counter()
    bar = tqdm(total=batch.total, unit="file", disable=not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)

    def emit(rec: dict) -> None:
        count[rec["status"]] += 1
        if rec["bytes"] and rec["plain_bytes"]:
            saved["bytes"] += rec["bytes"]
            saved["plain"] += rec["plain_bytes"]
        bar.update()
        bar.set_postfix(count, refresh=False)
        if args.json:
            tqdm.write(json.dumps(rec))
        elif rec["status"] == FAILED:
            tqdm.write(f"vqp: error: {rec['error']}", file=sys.stderr)

    runner = runner_from_args(args)
    try:
        batch.run(runner, emit)
    finally:
        bar.close()
        if runner:
            runner.close()
    size = f"; {saved['bytes']} B vs {saved['plain']} B plain (x{saved['bytes'] / saved['plain']:.4f})" \
        if saved["plain"] else ""
    line = f"{batch.total} inputs: {count['ok']} ok, {count['skipped']} skipped, {count['failed']} failed{size}; " \
           f"manifest {batch.manifest}"
    if count["failed"]:
        raise VqpError(line)
    print(line, file=sys.stderr if args.json else sys.stdout)
    return 0
