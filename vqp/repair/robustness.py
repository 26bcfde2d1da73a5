"""Corruption benchmark: clean mAP50-95, mPC and rPC (Michaelis et al. 2019) on a YOLO-format set.

Images are downscaled once so the long side equals the detector input size, corrupted at that
size, padded to a square and run in batches straight through the torch model; AP comes from
Ultralytics' own matching (``DetectionValidator.match_predictions``) and ``ap_per_class``.
Every degraded set is made once and scored by every model, so models compare on the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import VqpError
from ..types import Box, Detections
from .corruptions import check, degrade

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Sample:
    """One image at benchmark size; boxes are (K, 4) xyxy pixels, cls (K,) ints (empty if unlabelled)."""

    name: str
    rgb: np.ndarray
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def resize_long(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Downscale so the long side is ``size`` (never upscale); returns the image and the factor."""
    h, w = rgb.shape[:2]
    f = min(1.0, size / max(h, w))
    if f == 1.0:
        return rgb, 1.0
    im = Image.fromarray(rgb).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    return np.asarray(im), f


def load_yolo(root: str | Path, size: int, limit: int | None = None) -> list[Sample]:
    """Images under ``root`` (any depth) with YOLO labels at the mirrored ``labels/`` path, sorted by name."""
    root = Path(root)
    if not root.exists():
        raise VqpError(f"{root}: no such folder")
    files = sorted((f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTS and "images" in f.parts),
                   key=lambda f: f.stem)
    if not files:
        raise VqpError(f"{root}: no images in an images/ folder (YOLO layout: images/..., labels/...)")
    out = []
    for f in files[:limit]:
        try:
            rgb, _ = resize_long(np.asarray(Image.open(f).convert("RGB")), size)
        except OSError as e:
            raise VqpError(f"{f}: cannot read image ({e})") from None
        h, w = rgb.shape[:2]
        parts = list(f.parts)
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        lab = Path(*parts).with_suffix(".txt")
        rows = np.array([l.split()[:5] for l in lab.read_text().splitlines() if l.strip()], np.float32) \
            if lab.exists() else np.zeros((0, 5), np.float32)
        rows = rows.reshape(-1, 5)
        xc, yc, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], 1).astype(np.float32)
        out.append(Sample(f.stem, rgb, boxes, rows[:, 0].astype(np.int64)))
    return out


def split(samples: Sequence[Sample], part: str) -> list[Sample]:
    """Split by image id (sorted names): the first half repairs, the second half evaluates."""
    s = sorted(samples, key=lambda x: x.name)
    half = len(s) // 2
    return {"all": s, "repair": s[:half], "eval": s[half:]}[part]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: the one asked for, else the first GPU where one exists, else the CPU."""
    from ..video.options import check_device

    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    check_device(str(device))
    return torch.device(device)


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters live; inputs and targets are built there."""
    return next(model.parameters()).device


def load_model(path: str | None = None, device: str | torch.device | None = None) -> tuple[torch.nn.Module, str]:
    """The trainable torch DetectionModel behind a .pt detector (fp32, eval, on ``device``) and its path."""
    from ..detect import YoloDetector, load_detector

    dev = device if isinstance(device, torch.device) else resolve_device(device)  # a torch.device is taken as is
    det = load_detector(path, device="cpu")  # loaded on the CPU, then moved where it will train
    if not isinstance(det, YoloDetector) or not str(det.source).endswith(".pt"):
        raise VqpError(f"robustness and repair need a trainable .pt detector, got {det.source}")
    model = det.model.model.float().to(dev).eval()
    return model, det.source


class Predictor:
    """Batched letterbox-free inference: images (long side <= imgsz) padded bottom-right to a square."""

    def __init__(self, model: torch.nn.Module, imgsz: int, batch: int = 16, conf: float = 0.001,
                 iou: float = 0.7, max_det: int = 300, multi_label: bool = True):
        self.model, self.imgsz, self.batch, self.multi_label = model, imgsz, batch, multi_label
        self.conf, self.iou, self.max_det = conf, iou, max_det

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image an (N, 6) array: x1, y1, x2, y2, conf, cls, sorted by confidence."""
        from ultralytics.utils.nms import non_max_suppression

        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(images), self.batch):
            x = to_tensor(images[i:i + self.batch], self.imgsz, device_of(self.model))
            pred = self.model(x)
            pred = pred[0] if isinstance(pred, (tuple, list)) else pred
            # multi_label as in Ultralytics' validator: a box may count for several classes
            nms = non_max_suppression(pred, self.conf, self.iou, multi_label=self.multi_label, max_det=self.max_det)
            for p, im in zip(nms, images[i:]):
                p = p.cpu().numpy()
                h, w = im.shape[:2]
                p[:, [0, 2]] = p[:, [0, 2]].clip(0, w)
                p[:, [1, 3]] = p[:, [1, 3]].clip(0, h)
                out.append(p)
        self.model.train(was_training)
        return out


def to_tensor(images: Sequence[np.ndarray], imgsz: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 3, imgsz, imgsz) float in [0, 1] on ``device``, each image at the top-left, padded with grey 114."""
    x = np.full((len(images), imgsz, imgsz, 3), 114, np.uint8)
    for j, im in enumerate(images):
        h, w = im.shape[:2]
        if max(h, w) > imgsz:
            raise VqpError(f"image {w}x{h} is larger than imgsz {imgsz}")
        x[j, :h, :w] = im
    return torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255


def detections(pred: np.ndarray, shape, names: dict[int, str], conf: float = 0.25) -> Detections:
    """Confident predictions as vqp Detections (for vqp's own background quantization)."""
    keep = pred[pred[:, 4] >= conf]
    return Detections([Box(*map(float, r[:5]), int(r[5]), names.get(int(r[5]), str(int(r[5])))) for r in keep],
                      shape[0], shape[1])


def score(preds: Sequence[np.ndarray], samples: Sequence[Sample], nc: int) -> dict:
    """mAP50-95, mAP50 and per-class AP50-95 of (N, 6) predictions (vqp.metrics.detection_map)."""
    from ..metrics import detection_map

    gt = {i: (s.boxes, s.cls, *s.rgb.shape[:2]) for i, s in enumerate(samples)}  # unlabelled: every box a false positive
    return detection_map(gt, {i: p.tolist() for i, p in enumerate(preds)})


def missed(pred: np.ndarray, s: Sample, conf: float = 0.25, iou: float = 0.5) -> int:
    """Labelled objects that no confident prediction of the right class covers at IoU >= 0.5."""
    from ultralytics.utils.metrics import box_iou

    p = pred[pred[:, 4] >= conf]
    if not len(s.cls):
        return 0
    if not len(p):
        return len(s.cls)
    m = box_iou(torch.from_numpy(s.boxes), torch.from_numpy(p[:, :4])).numpy()
    m = m * (s.cls[:, None] == p[None, :, 5].astype(np.int64))
    return int((m.max(1) < iou).sum())


def mpc(cells: dict[str, dict[int, float]]) -> float:
    """Mean performance under corruption: the mean over corruptions of the mean over severities."""
    return float(np.mean([np.mean(list(sev.values())) for sev in cells.values()])) if cells else float("nan")


def rpc(clean: float, cells: dict[str, dict[int, float]]) -> float:
    """Relative performance under corruption, mPC / clean, as a fraction."""
    return mpc(cells) / clean if clean > 0 else float("nan")


@dataclass
class Failure:
    """One failure sample: an image and degradation under which objects seen clean were lost."""

    name: str
    corruption: str
    severity: int
    missed: int
    rgb: np.ndarray = field(repr=False, default=None)


def benchmark(models: dict[str, torch.nn.Module], samples: Sequence[Sample], groups: dict[str, Sequence[str]],
              severities: Sequence[int], imgsz: int, *, reference: str | None = None, keep_failures: int = 0,
              progress: Callable | None = None) -> tuple[dict, list[Failure]]:
    """Score every model on the clean set and on each (corruption, severity) of each group.

    ``groups`` maps a group label (e.g. common, held_out, codecs) to corruption names. The
    reference model (default: the first) supplies the detections for ``vqp_background`` and the
    failure samples: degraded images on which it misses objects it found on the clean image.
    Returns ({model: {"clean": score, group: {corruption: {severity: mAP}}, "mpc_<group>": ...}},
    the ``keep_failures`` worst failure samples).
    """
    check([c for cs in groups.values() for c in cs], severities)
    names = next(iter(models.values())).names
    nc = len(names)
    reference = reference or next(iter(models))
    preds = {m: Predictor(model, imgsz) for m, model in models.items()}
    images = [s.rgb for s in samples]
    clean_pred = {m: p(images) for m, p in preds.items()}
    res = {m: {"clean": score(clean_pred[m], samples, nc), "per_class": {}} for m in models}
    ref_dets = [detections(p, s.rgb.shape, names) for p, s in zip(clean_pred[reference], samples)]
    # failure counts are relative to what the reference finds on the clean image
    seen = [replace(s, boxes=p[p[:, 4] >= 0.25, :4], cls=p[p[:, 4] >= 0.25, 5].astype(np.int64))
            for p, s in zip(clean_pred[reference], samples)]
    failures: list[Failure] = []
    jobs = [(g, c, sev) for g, cs in groups.items() for c in cs for sev in severities]
    for k, (g, c, sev) in enumerate(jobs):
        bad = [degrade(s.rgb, c, sev, detections=d, seed=i) for i, (s, d) in enumerate(zip(samples, ref_dets))]
        for m, p in preds.items():
            pr = p(bad)
            sc = score(pr, samples, nc)
            res[m].setdefault(g, {}).setdefault(c, {})[sev] = sc["map"]
            res[m]["per_class"].setdefault(g, []).append(sc["per_class"])
            if m == reference and keep_failures:
                failures += [Failure(s.name, c, sev, n, b) for s, b, q in zip(seen, bad, pr) if (n := missed(q, s))]
                failures = sorted(failures, key=lambda f: -f.missed)[:keep_failures]
        if progress:
            progress(k + 1, len(jobs), f"{c} s{sev}")
    for m in models:
        r = res[m]
        pcs = r.pop("per_class")
        r["per_class"] = {g: {int(cl): float(np.mean([pc.get(cl, 0.0) for pc in lst]))
                              for cl in r["clean"]["per_class"]} for g, lst in pcs.items()}
        r["clean_map"] = r["clean"]["map"]
        for g in groups:
            r[f"mpc_{g}"] = mpc(r[g])
            r[f"rpc_{g}"] = rpc(r["clean_map"], r[g])
    return res, failures
