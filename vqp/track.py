"""Temporal stage: keep object regions steady across frames.

The detector runs on every N-th frame only, and its boxes jitter and blink from one run to the
next. A region that blinks makes the quantizer flicker, which costs P-frame bits and looks bad.
Tracks therefore follow boxes across detection runs with hysteresis: a new object needs a
confident detection (``conf_enter``) to start a track, a known one is kept by weaker ones
(``conf_keep``) and survives ``hold`` runs without any detection. Frames between two runs get
boxes interpolated between the runs (or held, or back-filled for objects that just appeared),
so in-between frames are covered without running the detector on them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .types import Box, Detections


@dataclass(frozen=True)
class TrackConfig:
    conf_enter: float = 0.35   # a detection starts a track at or above this confidence
    conf_keep: float = 0.2     # ...and continues one at or above this
    iou: float = 0.2           # minimum overlap to match a detection to a track
    hold: int = 2              # detection runs a track survives without a match
    smooth: float = 0.5        # weight of the new box size against the track's (position follows at once)


@dataclass
class Track:
    id: int
    box: torch.Tensor          # (4,) x1, y1, x2, y2
    conf: float
    cls: int
    name: str
    misses: int = 0


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (A, 4) and (B, 4) boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-6)


class Tracker:
    """Greedy IoU tracker over detection runs; ``update`` returns the tracks shown at that run."""

    def __init__(self, config: TrackConfig = TrackConfig()):
        self.config = config
        self.tracks: list[Track] = []
        self._next = 0

    def update(self, dets: Detections) -> dict[int, Box]:
        """Feed one detection run; returns the shown boxes keyed by track id."""
        c = self.config
        boxes = [b for b in dets.boxes if b.conf >= c.conf_keep]
        hit = [False] * len(self.tracks)
        used = [False] * len(boxes)
        if self.tracks and boxes:
            ov = iou(torch.stack([t.box for t in self.tracks]), _xyxy(boxes))
            same = torch.tensor([[t.cls == b.cls for b in boxes] for t in self.tracks])
            ov = torch.where(same, ov, torch.zeros_like(ov))
            while True:  # greedy: best remaining pair first
                k = int(ov.argmax())
                ti, di = divmod(k, ov.shape[1])
                if ov[ti, di] < c.iou:
                    break
                t, b = self.tracks[ti], boxes[di]
                t.box = _blend_size(t.box, _xyxy([b])[0], c.smooth)
                t.conf, t.misses = b.conf, 0
                hit[ti] = used[di] = True
                ov[ti, :] = 0
                ov[:, di] = 0
        for t, h in zip(self.tracks, hit):
            t.misses += not h
        self.tracks = [t for t in self.tracks if t.misses <= c.hold]
        for b, u in zip(boxes, used):
            if not u and b.conf >= c.conf_enter:
                self.tracks.append(Track(self._next, _xyxy([b])[0], b.conf, b.cls, b.name))
                self._next += 1
        return {t.id: Box(*map(float, t.box), t.conf, t.cls, t.name) for t in self.tracks}


def between(a: dict[int, Box], b: dict[int, Box], steps: int) -> list[list[Box]]:
    """Boxes for the ``steps`` frames strictly between two detection runs (a at 0, b at steps + 1).

    Tracks in both runs move linearly; tracks only in ``a`` (leaving or missed) stay put, and
    tracks only in ``b`` (just appeared) are shown from the start so no frame misses them.
    """
    out = []
    for i in range(1, steps + 1):
        w = i / (steps + 1)
        frame = [_lerp(a[k], b[k], w) for k in a if k in b]
        frame += [a[k] for k in a if k not in b] + [b[k] for k in b if k not in a]
        out.append(frame)
    return out


def _lerp(a: Box, b: Box, w: float) -> Box:
    return Box(*(x + (y - x) * w for x, y in zip((a.x1, a.y1, a.x2, a.y2), (b.x1, b.y1, b.x2, b.y2))),
               max(a.conf, b.conf), b.cls, b.name)


def _xyxy(boxes: list[Box]) -> torch.Tensor:
    return torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=torch.float32)


def _blend_size(old: torch.Tensor, new: torch.Tensor, w: float) -> torch.Tensor:
    """Centre from the new box, size blended, so a box follows motion but does not breathe."""
    centre = (new[:2] + new[2:]) / 2
    size = (old[2:] - old[:2]) * (1 - w) + (new[2:] - new[:2]) * w
    return torch.cat([centre - size / 2, centre + size / 2])
