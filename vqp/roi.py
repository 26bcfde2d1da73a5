"""ROI stage: boxes to a per-block importance map on the encoder's block grid.

Importance is 1 on every block that a (margin-grown) box touches, then falls off linearly over
``feather`` pixels, so the quantizer's strength ramps up instead of stepping at the box edge.
Each box is weighted by its class priority and, below ``conf_full``, by its confidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import VqpError
from .types import Detections, RoiMap


# Detector threshold for driving the ROI map. Far below the usual 0.25: a missed object is quantized
# as background, so weak boxes are kept and weighted by confidence instead (measured on coco128).
ROI_CONF = 0.05


@dataclass(frozen=True)
class RoiConfig:
    margin: float = 4.0          # pixels added around every box before it is snapped to blocks
    feather: float = 16.0        # pixels over which importance falls from 1 to 0
    conf_full: float = 0.25      # boxes at or above this confidence get full weight
    priority: dict[str, float] = field(default_factory=dict)  # class name -> weight (default 1)
    default_priority: float = 1.0


def parse_priority(text: str) -> dict[str, float]:
    """Class weights written as ``person=1,car=0.5`` (each in [0, 1]), or a one-line error."""
    out = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, eq, value = item.partition("=")
        try:
            w = float(value) if eq and name.strip() else None
        except ValueError:
            w = None
        if w is None:
            raise VqpError(f"--priority expects CLASS=W,... with W in [0, 1] (e.g. person=1,car=0.5), got {item!r}")
        if not 0 <= w <= 1:
            raise VqpError(f"--priority weight for {name.strip()!r} must be in [0, 1], got {value.strip()}")
        out[name.strip()] = w
    return out


def roi_map(dets: Sequence[Detections], *, block: int = 8, config: RoiConfig = RoiConfig(),
            device: torch.device | str = "cpu") -> RoiMap:
    """Build the (N, ceil(H/block), ceil(W/block)) importance map for frames of equal size."""
    h, w = dets[0].height, dets[0].width
    hb, wb = -(-h // block), -(-w // block)
    n, k = len(dets), max([len(d) for d in dets] + [1])
    boxes = torch.zeros(n, k, 4, device=device)
    weight = torch.zeros(n, k, device=device)
    for i, d in enumerate(dets):  # per-frame box lists are ragged; everything after this is batched
        if len(d):
            boxes[i, :len(d)] = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in d.boxes], device=device)
            weight[i, :len(d)] = torch.tensor(
                [config.priority.get(b.name, config.default_priority) * min(1.0, b.conf / config.conf_full)
                 for b in d.boxes], device=device)
    y0 = torch.arange(hb, device=device, dtype=torch.float32) * block
    x0 = torch.arange(wb, device=device, dtype=torch.float32) * block
    bx1, by1, bx2, by2 = (boxes[..., j, None, None] for j in range(4))  # (n, k, 1, 1)
    # gap between the pixel centres of each block and each box [x1, x2), 0 where they overlap
    lo, hi = 0.5, block - 0.5
    dy = torch.clamp(torch.maximum(by1 - (y0 + hi)[:, None], (y0 + lo)[:, None] - by2), min=0)
    dx = torch.clamp(torch.maximum(bx1 - (x0 + hi)[None, :], (x0 + lo)[None, :] - bx2), min=0)
    dist = torch.sqrt(dy * dy + dx * dx)  # (n, k, hb, wb)
    ramp = torch.clamp(1 - (dist - config.margin) / max(config.feather, 1e-6), 0, 1)
    imp = (ramp * weight[..., None, None].clamp(0, 1)).amax(1)
    return RoiMap(imp, block, h, w)


def to_grid(roi: RoiMap, block: int) -> torch.Tensor:
    """Resample an importance map to a finer grid (e.g. 16x16 macroblocks to 8x8 DCT blocks)."""
    if block == roi.block:
        return roi.importance
    if roi.block % block:
        raise ValueError(f"cannot resample a {roi.block}-px grid to {block} px")
    f = roi.block // block
    imp = roi.importance.repeat_interleave(f, 1).repeat_interleave(f, 2)
    return imp[:, : -(-roi.height // block), : -(-roi.width // block)]
