"""``vqp detect IN``: print the detector's boxes as JSON, for one image or every image in a folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import VqpError
from . import add_detector_args, detector_from_args


def register(sub) -> None:
    p = sub.add_parser("detect", help="print detections of an image (or of each image in a folder) as JSON")
    p.add_argument("input", help="image file, or folder (one JSON line per image, subfolders included)")
    add_detector_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..imageio import find_images, load_image

    src = Path(args.input)
    files = find_images(src) if src.is_dir() else [src]
    if not files:
        raise VqpError(f"{src}: no image files found")
    det = detector_from_args(args)
    failed = 0
    for f in files:
        try:
            pic = load_image(f)
        except VqpError as e:
            if not src.is_dir():
                raise
            failed += 1
            print(f"vqp: error: {e}", file=sys.stderr)
            continue
        out = {"file": str(f), "model": det.source, **det([pic.rgb])[0].to_dict()}
        print(json.dumps(out, indent=None if src.is_dir() else 1), flush=True)
    if failed:
        raise VqpError(f"{failed} of {len(files)} files failed")
    return 0
