"""``vqp encode IN OUT``: object-aware H.264, H.265, MPEG-4 or Motion-JPEG video."""
from __future__ import annotations

import json

from ..video.options import VideoOptions, bitrate
from . import add_detector_args, detector_from_args, take_stdout


def codec_option(text: str) -> tuple[str, str]:
    key, sep, val = text.partition("=")
    if not sep or not key:
        raise ValueError(text)
    return key, val


def add_video_args(p) -> None:
    """Preprocessing options shared by `encode` and `filter`."""
    g = p.add_argument_group("preprocessing")
    g.add_argument("--detect-every", type=int, metavar="N",
                   help="run the detector on every N-th frame, track boxes in between (default: adaptive, "
                        "2-32 frames as the objects move)")
    g.add_argument("--strength", type=float, default=3.0, help="pixel method: background step multiplier (default 3)")
    g.add_argument("--hold", type=float, default=5.0, metavar="RMS",
                   help="pixel method: keep still background blocks identical while their source changes less than "
                        "RMS levels (default 5, 0 = off)")
    g.add_argument("--plain", action="store_true", help="no preprocessing: the plain encode, for comparison")


def add_codec_args(p, quality: str = "--quality") -> None:
    """Encoder and rate-control options, shared by `encode` and `batch` (which names the MJPEG
    quality ``--mjpeg-quality``: its --quality is the JPEG images')."""
    from ..codecs import CODECS, METHODS

    d = VideoOptions()
    p.add_argument("--codec", default="libx264", metavar="NAME", help=f"encoder: {', '.join(CODECS)} (default libx264)")
    p.add_argument("--method", metavar="M", help=f"{' | '.join(METHODS)}: drive the encoder's own per-block "
                   "quantizer with ROI offsets (roi), requantize the background pixels in front of it (pixel), "
                   "or both (default: the codec's best, roi where it reads ROI data)")
    rc = p.add_mutually_exclusive_group()
    rc.add_argument("--crf", type=float, help="constant quality (x264 default 23, x265 28, VP9 36); "
                    "mpeg4: fixed quantizer 1-31")
    rc.add_argument("--bitrate", type=bitrate, metavar="BPS", help="target bitrate, e.g. 800k or 2M (ABR)")
    rc.add_argument("--match-crf", type=float, metavar="C", help="no larger than the plain encode at CRF C, better objects")
    p.add_argument("--two-pass", action="store_true", help="two-pass encode to --bitrate (libx264)")
    p.add_argument("--preset", default="medium", help="x264/x265 preset (default medium)")
    p.add_argument("--gop", type=int, help="keyframe interval in frames")
    p.add_argument(quality, type=int, metavar="Q", help="MJPEG quality 1-100 (default 75)")
    p.add_argument("--roi-offsets", type=offsets, metavar="OBJ,BG", default=(d.roi_object, d.roi_background),
                   help="ROI method: quantizer offsets of objects and background as FFmpeg qoffsets in [-1, 1] "
                        f"(x 51 QP for x264/x265; default {d.roi_object:g},{d.roi_background:g})")
    p.add_argument("-x", "--codec-option", type=codec_option, action="append", default=[], metavar="KEY=VALUE",
                   help="encoder option passed through, e.g. aq-mode=2 or x264-params=... (repeatable)")


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode a video with object-aware rate allocation")
    p.add_argument("input", help="any video FFmpeg reads; - reads a stream (e.g. matroska) from stdin")
    p.add_argument("output", help="output file, the container follows the extension (.mp4, .mkv, .webm, .avi); "
                   "- writes to stdout (needs --format)")
    add_codec_args(p)
    p.add_argument("--format", metavar="FMT", help="output container (e.g. matroska, mp4, webm); needed for stdout")
    p.add_argument("--frames", type=int, metavar="N", help="encode only the first N frames")
    p.add_argument("--compare", action="store_true", help="also encode plainly (not written) to report its bitrate")
    p.add_argument("--preview", metavar="FILE.png", help="write a strip of frames with the ROI map and boxes drawn over them")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    add_video_args(p)
    add_detector_args(p)
    p.set_defaults(func=run, imgsz=None)  # None: vqp.video.DETECT_SIZE


def offsets(text: str) -> tuple[float, float]:
    a, sep, b = text.partition(",")
    if not sep:
        raise ValueError(text)
    return float(a), float(b)


def options_from_args(args, **kw):
    """VideoOptions from the shared flags; also settles the video detector size."""
    from ..video import DETECT_SIZE

    args.imgsz = args.imgsz or DETECT_SIZE
    every = {} if args.detect_every is None else dict(detect_every=args.detect_every, detect_min=args.detect_every,
                                                     detect_max=args.detect_every)
    return VideoOptions(strength=args.strength, hold=args.hold, preprocess=not args.plain, device=args.device,
                        report_conf=args.conf, **every, **kw)


def run(args) -> int:
    import sys

    from ..video import encode_video, validate
    from ..video.io import ffmpeg_logging, output_format

    to_pipe = args.output == "-"
    o = options_from_args(args, codec=args.codec, method=args.method, crf=args.crf, bitrate=args.bitrate,
                          two_pass=args.two_pass, match_crf=args.match_crf, preset=args.preset, gop=args.gop,
                          mjpeg_quality=args.quality, codec_options=dict(args.codec_option),
                          measure_plain=args.compare, max_frames=args.frames, container=args.format,
                          roi_object=args.roi_offsets[0], roi_background=args.roi_offsets[1])
    validate(o)  # before the detector loads: a bad option costs no wait
    output_format(args.output, o.container)
    ffmpeg_logging(args.verbose)
    out = take_stdout() if to_pipe else None
    det = detector_from_args(args, fast=True, steer=True) if o.preprocess else None
    st = encode_video(args.input, out or args.output, o, detector=det, progress=sys.stderr.isatty() and not to_pipe,
                      preview=args.preview)
    if args.json:  # with the video on stdout, take_stdout has sent print() to stderr
        print(json.dumps({"input": args.input, "output": args.output, **st.__dict__}))
    else:
        print(f"{args.input} -> {args.output}: {st.summary()}")
    return 0
