"""``vqp image IN OUT``: object-aware JPEG for one file or a whole folder."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from ..errors import VqpError
from ..imageio import find_images, unclash
from ..jpeg import BACKGROUND_WEIGHT, check_options
from ..roi import ROI_CONF
from . import add_detector_args, add_roi_args, detector_from_args, roi_from_args

JPEG_SUFFIXES = (".jpg", ".jpeg")


def register(sub) -> None:
    p = sub.add_parser("image", help="encode images as object-aware JPEG",
                       description=f"Encode images as object-aware JPEG. Boxes down to confidence {ROI_CONF} steer "
                                   "the quantizer (weighted by confidence); boxes at --conf or above are reported and are what "
                                   "the size search counts as objects (times --priority).")
    p.add_argument("input", help="image file or folder")
    p.add_argument("output", help="output .jpg file, or folder when the input is a folder "
                                  "(a.png -> a.jpg; a.png beside a.jpg -> a.png.jpg)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--match-quality", type=int, metavar="Q",
                   help="no larger than plain JPEG at quality Q (1-100), best objects (default: 75)")
    m.add_argument("--quality", type=int, metavar="Q",
                   help="fixed encoder quality Q (1-100); never larger than plain JPEG at Q")
    m.add_argument("--target-size", type=int, metavar="BYTES", help="no larger than BYTES, best objects")
    p.add_argument("--encoder", default="pillow", choices=["pillow", "jpegli"], help="JPEG encoder (default pillow)")
    p.add_argument("--background-weight", type=float, default=BACKGROUND_WEIGHT, metavar="W",
                   help=f"share of background quality in the search, >= 0; 0 = objects only (default {BACKGROUND_WEIGHT})")
    p.add_argument("--json", action="store_true", help="print one JSON line per file")
    add_roi_args(p)
    add_detector_args(p)
    p.set_defaults(func=run)


def _out_names(files: list[Path], src: Path, dst: Path) -> list[Path]:
    """Output path per input, keeping the folder structure: ``a.png`` -> ``a.jpg``. Inputs that
    would share an output (``a.jpg`` and ``a.png``) keep their full name (``a.png.jpg``), except
    the one already named so (``a.jpg``); names are compared ignoring case."""
    want = [(dst / f.relative_to(src)).with_suffix(".jpg") for f in files]
    out = unclash(files, want, [f.name.lower() == p.name.lower() for f, p in zip(files, want)])
    clash = [p for p, n in Counter(str(p).lower() for p in out).items() if n > 1]
    if clash:
        raise VqpError(f"two inputs would both be written to {clash[0]}; rename one of them")
    return out


def _pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise VqpError(f"{dst}: exists and is not a folder")
        if dst.resolve() == src.resolve():
            raise VqpError("output folder is the input folder; choose another so no original is overwritten")
        files = find_images(src, skip=dst)  # an output folder inside the input holds earlier outputs
        if not files:
            raise VqpError(f"{src}: no image files found")
        pairs = list(zip(files, _out_names(files, src, dst)))
        inputs = {f.resolve() for f in files}
        for f, o in pairs:
            if o.resolve() in inputs:
                raise VqpError(f"{f} would be written over the input {o}; choose another output folder")
        return pairs
    if not src.exists():
        raise VqpError(f"{src}: no such file or folder")
    if dst.is_dir():
        dst = dst / (src.stem + ".jpg")
    if dst.exists() and dst.resolve() == src.resolve():
        raise VqpError("output is the input file; choose another name so the original is kept")
    if dst.suffix.lower() not in JPEG_SUFFIXES:
        raise VqpError(f"{dst}: vqp writes JPEG; name the output .jpg or .jpeg (or give an existing folder)")
    return [(src, dst)]


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VqpError(f"cannot create folder {folder}: {e.strerror}") from None


def _line(src: Path, dst: Path, r) -> str:
    """One human-readable summary line; sizes in bytes, so a difference of a few bytes shows."""
    n = len(r.detections)
    p = r.params
    how = "passed through" if p is None else f"background lam {p.lam:g}" if p.lam else f"strength {p.strength:g}"
    size = f"{r.size} B"
    if r.plain_bytes:
        size += f" vs {r.plain_bytes} B plain at q{r.reference_quality} ({r.size - r.plain_bytes:+d} B, " \
                f"x{r.size / r.plain_bytes:.4f})"
    return f"{src} -> {dst}: {n} detection{'s' * (n != 1)}, quality {r.quality}, {how}, {size}"


def run(args) -> int:
    from tqdm import tqdm

    from ..jpeg import save_jpeg
    check_options(args.quality, args.match_quality, args.target_size, args.background_weight, flags=True)
    roi = roi_from_args(args)
    pairs = _pairs(Path(args.input), Path(args.output))
    det = detector_from_args(args, steer=True)  # save_jpeg reports only the boxes >= args.conf
    failed = 0
    folder = Path(args.input).is_dir()
    bar = tqdm(pairs, unit="img", disable=not (len(pairs) > 1 and sys.stderr.isatty()), file=sys.stderr)
    for src, dst in bar:
        try:
            if folder:
                _mkdir(dst.parent)
            r = save_jpeg(src, dst, quality=args.quality, match_quality=args.match_quality,
                          target_size=args.target_size, encoder=args.encoder, detector=det, roi=roi,
                          device=args.device, background_weight=args.background_weight, conf=args.conf)
        except VqpError as e:
            msg = str(e) if str(src) in str(e) or str(dst) in str(e) else f"{src}: {e}"  # name the file
            if not folder:
                raise VqpError(msg) from None
            failed += 1
            tqdm.write(f"vqp: error: {msg}", file=sys.stderr)
            continue
        if args.json:
            tqdm.write(json.dumps({"input": str(src), "output": str(dst), **r.summary()}))
        else:
            tqdm.write(_line(src, dst, r))
    if failed:
        raise VqpError(f"{failed} of {len(pairs)} files failed")
    return 0
