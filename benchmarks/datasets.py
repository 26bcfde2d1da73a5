"""Benchmark inputs from ../shared/data: Kodak, coco128 (halved, with ground-truth boxes), clips."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("VQP_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
DATA = SHARED / "data"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Sample:
    """One reference image; boxes are ground truth (x1, y1, x2, y2) in its pixels, empty if unknown."""

    name: str
    rgb: np.ndarray
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)


def kodak(limit: int | None = None) -> list[Sample]:
    files = sorted((DATA / "kodak").glob("*.png"))[:limit]
    return [Sample(f.stem, np.asarray(Image.open(f).convert("RGB"))) for f in files]


def coco(limit: int | None = None, scale: int = 2, with_boxes_only: bool = True) -> list[Sample]:
    """coco128 downscaled by ``scale`` (box filter) so the source JPEG grid washes out."""
    root = DATA / "coco"
    return yolo(root / "images" / "train2017", root / "labels" / "train2017", limit, scale, with_boxes_only)


def yolo(images: Path, labels: Path, limit: int | None = None, scale: int = 1,
         with_boxes_only: bool = True) -> list[Sample]:
    """A labelled set in YOLO format (one ``cls xc yc w h`` txt per image), optionally downscaled."""
    out = []
    for f in sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_EXTS):
        lab = Path(labels) / (f.stem + ".txt")
        rows = [l.split() for l in lab.read_text().splitlines() if l.strip()] if lab.exists() else []
        if with_boxes_only and not rows:
            continue
        im = Image.open(f).convert("RGB")
        if scale > 1:
            im = im.reduce(scale)
        w, h = im.size
        boxes, classes = [], []
        for c, xc, yc, bw, bh in ((int(r[0]), *map(float, r[1:5])) for r in rows):
            boxes.append(((xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h))
            classes.append(c)
        out.append(Sample(f.stem, np.asarray(im), boxes, classes))
        if limit and len(out) >= limit:
            break
    return out


def folder(path: Path, limit: int | None = None, scale: int = 1) -> list[Sample]:
    """Every image in a folder, without ground truth (objects then come from the detector)."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_EXTS)[:limit]
    ims = [Image.open(f).convert("RGB") for f in files]
    return [Sample(f.stem, np.asarray(im.reduce(scale) if scale > 1 else im)) for f, im in zip(files, ims)]


def clips() -> list[Path]:
    return sorted((DATA / "video").glob("*.mp4")) + sorted((DATA / "video").glob("*.avi"))


def excerpt(clip: Path, dst: Path, frames: int | None = None, start: int = 0) -> Path:
    """``frames`` frames of a clip from frame ``start`` as lossless FFV1 (same YUV 4:2:0 samples, same rate).

    Every codec then starts from identical frames and the reference is exact: the source
    clips are already compressed, so re-decoding them per codec would add nothing but time.
    """
    import av

    with av.open(str(clip)) as src:
        vin = src.streams.video[0]
        picked = (f for i, f in enumerate(src.decode(vin)) if i >= start)
        if frames:
            picked = (f for _, f in zip(range(frames), picked))
        return _ffv1(dst, picked, Fraction(vin.average_rate or 25), vin.codec_context.width, vin.codec_context.height)


def degrade_clip(src: Path, dst: Path, corruption: str, severity: int, seed: int = 0, vary: bool = False) -> Path:
    """``src`` with every frame degraded by vqp.repair.corruptions (the encoder's input in a degraded-clip
    benchmark), as lossless FFV1 again.

    With ``vary`` the seed advances with the frame index: sensor noise changes from frame to frame,
    which is what makes it expensive for an encoder. Without it every frame draws the same pattern:
    a fog bank or a blur direction that stays put instead of flickering. Both are reproducible.
    """
    import av

    from vqp.repair.corruptions import degrade

    with av.open(str(src)) as c:
        vin = c.streams.video[0]
        bad = (av.VideoFrame.from_ndarray(degrade(f.to_ndarray(format="rgb24"), corruption, severity,
                                                  seed=seed + i * vary), format="rgb24")
               for i, f in enumerate(c.decode(vin)))
        return _ffv1(dst, bad, Fraction(vin.average_rate or 25), vin.codec_context.width, vin.codec_context.height)


def _ffv1(dst: Path, frames, rate: Fraction, width: int, height: int) -> Path:
    """Write video frames as lossless FFV1 YUV 4:2:0 at ``rate``, renamed into place when complete."""
    import av

    tmp = dst.with_name("." + dst.name + ".part")
    with av.open(str(tmp), "w", format="matroska") as out:
        vout = out.add_stream("ffv1", rate=rate)
        vout.codec_context.time_base = 1 / rate
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        for i, f in enumerate(frames):
            f = f.reformat(format="yuv420p")
            f.pts, f.time_base = i, 1 / rate
            out.mux(vout.encode(f))
        out.mux(vout.encode())
    tmp.replace(dst)
    return dst
