"""``vqp filter``: y4m on stdin -> preprocessed y4m on stdout, for ffmpeg pipelines."""
from __future__ import annotations

import os
import sys

from . import add_detector_args, detector_from_args, take_stdout
from .encode import add_video_args, options_from_args


def register(sub) -> None:
    p = sub.add_parser("filter", help="y4m pipe filter: ffmpeg ... -f yuv4mpegpipe - | vqp filter | ffmpeg -i - ...")
    from ..codecs import CODECS

    p.add_argument("--codec", default="libx264", metavar="NAME",
                   help=f"the encoder that follows, whose block grid the quantizer uses: {', '.join(CODECS)} "
                        "(default libx264)")
    p.add_argument("--stats", action="store_true", help="print a summary on stderr at the end")
    add_video_args(p)
    add_detector_args(p)
    p.set_defaults(func=run, imgsz=None)  # None: vqp.video.DETECT_SIZE


def run(args) -> int:
    from ..filter import filter_y4m
    from ..video import validate
    from ..video.io import ffmpeg_logging

    o = options_from_args(args, codec=args.codec, method="pixel")
    validate(o)  # before the detector loads
    ffmpeg_logging(args.verbose)
    out = take_stdout(buffering=1 << 20)
    det = detector_from_args(args, fast=True, steer=True) if o.preprocess else None
    try:
        st = filter_y4m(sys.stdin.buffer, out, o, detector=det)
        out.close()
    except BrokenPipeError:  # the reader went away (ffmpeg stopped early): end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())  # whatever is still buffered goes nowhere
        os.close(devnull)
        return 0
    if args.stats:
        print(f"vqp filter: {st.summary()}", file=sys.stderr)
    return 0
