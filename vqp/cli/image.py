"""``vqp image IN OUT``: object-aware JPEG for one file or a whole folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import VqpError
from ..jpeg import BACKGROUND_WEIGHT
from ..roi import ROI_CONF
from . import add_detector_args, add_roi_args, detector_from_args, roi_from_args

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}


def register(sub) -> None:
    p = sub.add_parser("image", help="encode images as object-aware JPEG")
    p.add_argument("input", help="image file or folder")
    p.add_argument("output", help="output .jpg file, or folder when the input is a folder")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--match-quality", type=int, metavar="Q",
                   help="no larger than plain JPEG at quality Q, best objects (default: 75)")
    m.add_argument("--quality", type=int, metavar="Q", help="fixed encoder quality Q (smaller than plain at Q)")
    m.add_argument("--target-size", type=int, metavar="BYTES", help="no larger than BYTES, best objects")
    p.add_argument("--encoder", default="pillow", choices=["pillow", "jpegli"], help="JPEG encoder (default pillow)")
    p.add_argument("--background-weight", type=float, default=BACKGROUND_WEIGHT, metavar="W",
                   help=f"share of background quality in the search, 0 = objects only (default {BACKGROUND_WEIGHT})")
    p.add_argument("--json", action="store_true", help="print one JSON line per file")
    add_roi_args(p)
    add_detector_args(p, conf=ROI_CONF)
    p.set_defaults(func=run)


def _pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    if src.is_dir():
        files = sorted(f for f in src.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise VqpError(f"{src}: no image files found")
        if dst.exists() and not dst.is_dir():
            raise VqpError(f"{dst}: exists and is not a folder")
        if dst.resolve() == src.resolve():
            raise VqpError("output folder is the input folder; choose another so no original is overwritten")
        return [(f, (dst / f.relative_to(src)).with_suffix(".jpg")) for f in files]
    if not src.exists():
        raise VqpError(f"{src}: no such file or folder")
    if dst.is_dir():
        dst = dst / (src.stem + ".jpg")
    if dst.exists() and dst.resolve() == src.resolve():
        raise VqpError("output is the input file; choose another name so the original is kept")
    return [(src, dst)]


def run(args) -> int:
    from tqdm import tqdm

    from ..jpeg import save_jpeg
    pairs = _pairs(Path(args.input), Path(args.output))
    det = detector_from_args(args)
    roi = roi_from_args(args)
    failed = 0
    many = len(pairs) > 1
    bar = tqdm(pairs, unit="img", disable=not many, file=sys.stderr)
    for src, dst in bar:
        try:
            if many:
                dst.parent.mkdir(parents=True, exist_ok=True)
            r = save_jpeg(src, dst, quality=args.quality, match_quality=args.match_quality,
                          target_size=args.target_size, encoder=args.encoder, detector=det, roi=roi,
                          device=args.device, background_weight=args.background_weight)
        except VqpError as e:
            if not many:
                raise
            failed += 1
            tqdm.write(f"vqp: error: {e}", file=sys.stderr)
            continue
        s = r.summary()
        if args.json:
            tqdm.write(json.dumps({"input": str(src), "output": str(dst), **s}))
        else:
            plain = f"{s['plain_bytes']} B plain" if s["plain_bytes"] else "no plain reference"
            n = len(r.detections)
            how = f"strength {r.params.strength:g}" if r.params else "passed through"
            tqdm.write(f"{src} -> {dst}: {n} detection{'s' * (n != 1)}, quality {r.quality}, {how}, "
                       f"{r.size} B vs {plain}" + (f" (x{s['ratio']:.3f})" if s["ratio"] else ""))
    if failed:
        raise VqpError(f"{failed} of {len(pairs)} files failed")
    return 0
