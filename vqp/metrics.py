"""Measure stage: PSNR-Y and MS-SSIM over the full frame, a region, or its complement.

MS-SSIM comes from pytorch-msssim. Its default 5 scales with an 11-px window need a short side
above 160 px; smaller inputs (object crops, thumbnails) use a smaller window, and below 33 px
single-scale SSIM (see ``msssim``). Objects are scored per box crop, weighted by box area.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim

from .quant import RGB2YCC

def luma(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """JFIF Y of (..., H, W, 3) uint8 RGB (or (N, 3, H, W) tensors) as float."""
    if isinstance(rgb, np.ndarray):
        rgb = torch.from_numpy(np.require(rgb, requirements=("C", "W"))).permute(2, 0, 1)
    w = RGB2YCC[0].to(rgb.device)
    return torch.einsum("c,...chw->...hw", w, rgb.float())


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB between two planes, optionally only where ``mask`` is true; inf when equal."""
    err = (a.float() - b.float()) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = err.mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def msssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """MS-SSIM of two (H, W) planes or (C, H, W) images in [0, 255], for any size.

    pytorch-msssim always downsamples 4 times and asserts a short side above (win - 1) * 16.
    Short sides over 160 px use its defaults (11-px window, 5 scales). From 33 to 160 px the
    window shrinks to the largest odd size that passes (7 px at 100 px); all 5 scales stay.
    Below 33 px only single-scale SSIM fits (window up to 11 px); under 3 px there is no score (NaN).
    """
    a = a.float()[None, None] if a.dim() == 2 else a.float()[None]
    b = b.float()[None, None] if b.dim() == 2 else b.float()[None]
    short = min(a.shape[-2:])
    if short > 160:
        return float(ms_ssim(a, b, data_range=255))
    win = (short - 1) // 16 + 1  # largest w with (w - 1) * 16 < short ...
    win -= 1 - win % 2  # ... made odd
    if win >= 3:
        return float(ms_ssim(a, b, data_range=255, win_size=win))
    win = min(11, short if short % 2 else short - 1)
    return float(ssim(a, b, data_range=255, win_size=win)) if win >= 3 else float("nan")


def box_mask(boxes, height: int, width: int) -> torch.Tensor:
    """Union of boxes (x1, y1, x2, y2) as a boolean (H, W) mask."""
    m = torch.zeros(height, width, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes:
        m[max(0, int(y1)):min(height, int(math.ceil(y2))), max(0, int(x1)):min(width, int(math.ceil(x2)))] = True
    return m


def region_scores(ref: np.ndarray, out: np.ndarray, boxes) -> dict[str, float]:
    """PSNR-Y and MS-SSIM (Y) for the full frame, inside the boxes and outside them."""
    yr, yo = luma(ref), luma(out)
    h, w = yr.shape
    m = box_mask(boxes, h, w)
    res = {"psnr_full": psnr(yr, yo), "psnr_obj": psnr(yr, yo, m), "psnr_bg": psnr(yr, yo, ~m),
           "msssim_full": msssim(yr, yo)}
    objs = [msssim(yr[int(y1):int(math.ceil(y2)), int(x1):int(math.ceil(x2))],
                   yo[int(y1):int(math.ceil(y2)), int(x1):int(math.ceil(x2))]) for x1, y1, x2, y2 in boxes]
    objs = [(s, (x2 - x1) * (y2 - y1)) for s, (x1, y1, x2, y2) in zip(objs, boxes) if not math.isnan(s)]
    res["msssim_obj"] = sum(s * a for s, a in objs) / sum(a for _, a in objs) if objs else float("nan")
    # background MS-SSIM: objects filled with the reference in both, so only background differences count
    yb = torch.where(m, yr, yo)
    res["msssim_bg"] = msssim(yr, yb) if (~m).any() else float("nan")
    return res
