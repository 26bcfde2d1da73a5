"""Benchmark inputs from ../shared/data: Kodak, coco128 (halved, with ground-truth boxes), clips."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("VQP_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
DATA = SHARED / "data"


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
    out = []
    for f in sorted((root / "images" / "train2017").glob("*.jpg")):
        lab = root / "labels" / "train2017" / (f.stem + ".txt")
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


def clips() -> list[Path]:
    return sorted((DATA / "video").glob("*.mp4")) + sorted((DATA / "video").glob("*.avi"))
