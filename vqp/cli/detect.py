"""``vqp detect IN``: print the detector's boxes as JSON."""
from __future__ import annotations

import json

from . import add_detector_args, detector_from_args


def register(sub) -> None:
    p = sub.add_parser("detect", help="print detections of an image as JSON")
    p.add_argument("input", help="image file")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..imageio import load_image

    pic = load_image(args.input)
    det = detector_from_args(args)
    print(json.dumps({"file": args.input, "model": det.source, **det([pic.rgb])[0].to_dict()}, indent=1))
    return 0
