"""The still-background hold of the pixel method.

For inter codecs a background macroblock whose source has barely changed keeps the previous
output's pixels exactly, so the encoder codes it as a skip block: temporal noise in the
requantized background is what would otherwise eat the saving. Objects are never held.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def grow(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    """(N, Hg, Wg) grid -> (N, h, w) pixels, each cell repeated f times, cropped."""
    return x.repeat_interleave(f, 1).repeat_interleave(f, 2)[:, :h, :w]


class Holder:
    """Keeps background macroblocks bit-identical to the previous output while their source is still.

    The change is measured against the source the held block was taken from, so slow drifts
    (light, shadows) still refresh the block once they add up to ``rms`` luma levels. Frames
    without any object pass through and break the chain (nothing is held across them).

    When less than ``still`` of the background could be held, the camera is moving: nothing can
    be held and a coarse background only moves under the fixed block grid, which costs the
    encoder's motion compensation more than it saves. Such frames pass through untouched until
    twice that share is still again (hysteresis, so the decision does not flicker).

    Every decision stays a tensor on the planes' device: no host synchronisation per frame.
    """

    def __init__(self, rms: float, grid: int = 16, still: float = 0.3):
        self.rms, self.grid, self.still = rms, grid, still
        self.ref: torch.Tensor | None = None          # luma source behind the current output
        self.valid: torch.Tensor | None = None        # whether ref may be held against
        self.moving: torch.Tensor | None = None
        self.prev: list[torch.Tensor] | None = None   # the previous output planes

    def reset(self) -> None:
        """A frame passed through untouched: the next one has nothing to be held against."""
        if self.valid is not None:
            self.valid = torch.zeros_like(self.valid)

    def masks(self, y: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells to hold (N, Hg, Wg) and frames to pass through (N,) for luma planes y (N, H, W)."""
        n, h, w = y.shape
        dev = y.device
        importance = importance.to(dev)
        hold = torch.zeros(importance.shape, dtype=torch.bool, device=dev)
        moving = torch.zeros(n, dtype=torch.bool, device=dev)
        if self.rms <= 0:
            return hold, moving
        if self.ref is None or self.ref.shape != (h, w):
            self.ref = y[0].float()
            self.valid = torch.zeros((), dtype=torch.bool, device=dev)
            self.moving = torch.zeros((), dtype=torch.bool, device=dev)
        for i in range(n):  # each frame's decision depends on the previous ones
            yi, imp = y[i].float(), importance[i].float()
            active = imp.amax() > 0
            valid = self.valid & active
            mse = F.avg_pool2d(((yi - self.ref) ** 2)[None, None], self.grid, ceil_mode=True)[0, 0]
            bg = imp < 1
            still = (mse < (self.rms * (1 - imp)) ** 2) & bg
            share = still.sum() / bg.sum().clamp(min=1)
            now = share < self.still * (1 + self.moving.float())
            self.moving = torch.where(valid, now, self.moving)
            moving[i] = valid & self.moving
            hold[i] = still & valid & ~self.moving
            self.ref = torch.where(grow(hold[i][None], self.grid, h, w)[0], self.ref, yi)
            self.valid = active
        return hold, moving

    def apply(self, planes: list[torch.Tensor], hold: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per frame, the output planes with held cells taken from the previous output."""
        h = planes[0].shape[1]
        masks = [grow(hold, self.grid * p.shape[1] // h, *p.shape[1:]) for p in planes]
        frames = []
        for i in range(planes[0].shape[0]):
            out = [p[i] for p in planes]
            if self.prev is not None and self.prev[0].shape == out[0].shape:
                out = [torch.where(m[i], q, p) for p, q, m in zip(out, self.prev, masks)]
            self.prev = out
            frames.append(out)
        return frames
