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


def detection_map(gt: dict, dets: dict) -> dict:
    """mAP50-95, mAP50 and per-class AP50-95 of detections with pycocotools' COCOeval: vqp's one
    mAP, used by the benchmark harness and the robustness benchmark alike.

    ``gt``: image -> (boxes (K, 4) xyxy, classes (K,), height, width);
    ``dets``: image -> [[x1, y1, x2, y2, conf, cls], ...]. Returns {"map", "map50", "per_class"}.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {name: i + 1 for i, name in enumerate(sorted(gt))}
    images, anns = [], []
    for name, (boxes, classes, h, w) in gt.items():
        images.append({"id": ids[name], "height": int(h), "width": int(w)})
        for (x1, y1, x2, y2), c in zip(np.asarray(boxes, float).reshape(-1, 4), classes):
            anns.append({"id": len(anns) + 1, "image_id": ids[name], "category_id": int(c), "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    res = [{"image_id": ids[name], "category_id": int(c), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(s)} for name, ds in dets.items() if name in ids for x1, y1, x2, y2, s, c in ds]
    if not res or not anns:
        return {"map": 0.0, "map50": 0.0, "per_class": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        cats = sorted({a["category_id"] for a in anns} | {d["category_id"] for d in res})
        g.dataset = {"images": images, "annotations": anns, "categories": [{"id": i} for i in cats]}
        g.createIndex()
        e = COCOeval(g, g.loadRes(res), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    prec = e.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class) at all areas, 100 detections
    per_class = {}
    for k, c in enumerate(e.params.catIds):
        if any(a["category_id"] == c for a in anns):  # classes with ground truth, as mAP averages them
            p = prec[:, :, k]
            per_class[int(c)] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return {"map": max(0.0, float(e.stats[0])), "map50": max(0.0, float(e.stats[1])), "per_class": per_class}
