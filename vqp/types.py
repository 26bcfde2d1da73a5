"""Small typed records passed between the pipeline stages."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Box:
    """One detection in pixel coordinates of the frame it was found in."""

    x1: float
    y1: float
    x2: float
    y2: float
    conf: float
    cls: int
    name: str

    def to_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Detections:
    """All boxes found in one frame of size (height, width)."""

    boxes: list[Box]
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "boxes": [b.to_dict() for b in self.boxes]}

    def above(self, conf: float) -> "Detections":
        """The boxes at or above ``conf``: what is reported when the detector ran lower, for steering."""
        return Detections([b for b in self.boxes if b.conf >= conf], self.height, self.width)


@dataclass
class RoiMap:
    """Per-block importance in [0, 1] on the encoder's block grid.

    ``importance`` has shape (N, ceil(H/block), ceil(W/block)); 1 keeps a block untouched,
    0 quantizes it with the full background strength.
    """

    importance: torch.Tensor
    block: int
    height: int
    width: int

    @property
    def active(self) -> torch.Tensor:
        """Per frame: True when anything in the frame is important (i.e. it had detections)."""
        return self.importance.flatten(1).amax(1) > 0
