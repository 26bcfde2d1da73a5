"""Failure-guided augmentation after DeepRepair: train on what breaks the detector, in proportion.

Each training sample is drawn as one of three kinds:
- clean, so the repair does not forget the clean distribution;
- degraded by a (corruption, severity) drawn with probability proportional to the mAP the
  detector lost there in the failure analysis (plus a small floor so nothing is never seen);
- after a failure cluster (DeepRepair): a cluster of failure samples (see cluster.py) is drawn
  in proportion to its failure mass (objects lost), then one of its members; the clean image
  either takes that member's style, the low-frequency Fourier amplitude of the degraded image
  (Fourier domain adaptation, Yang and Soatto 2020: colour cast, contrast, haze, brightness),
  or is degraded afresh by the member's own (corruption, severity), which carries the
  high-frequency damage such as noise that a style transfer cannot.
Horizontal flips (boxes flipped too) are applied to every kind. With ``colour`` > 0 the clean
image itself is first colour-jittered the way Ultralytics trains (hue, saturation and value
gains), and the distillation teacher sees that jittered image, so the repair trains on the colour
range the original was trained on. (It was meant to stop the repaired model losing to the held-out
saturate corruption; it did not: RESULTS.md, "Colour jitter against the saturate loss".) With
``mix`` > 0, that share of the training images is first put through AugMix's pixel-level
operations (``augmix``) while the distillation teacher still sees the image before them, so the
repair is asked for features that do not move under tonal changes it was not trained to undo.
With ``scale`` > 0 each image (boxes too) is first downscaled by a random factor in
[1 - scale, 1], so a few dozen images give new pixel grids and object sizes at every draw instead
of the same views a thousand steps over.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from .corruptions import degrade
from .robustness import Failure, Sample, resize_long


def fda(src: np.ndarray, style: np.ndarray, beta: float = 0.05) -> np.ndarray:
    """``src`` with the low-frequency amplitude spectrum of ``style`` (phase, hence layout, kept)."""
    h, w = src.shape[:2]
    if style.shape[:2] != (h, w):
        style = np.asarray(Image.fromarray(style).resize((w, h), Image.BILINEAR))
    fs = np.fft.fftshift(np.fft.fft2(src.astype(np.float32), axes=(0, 1)), axes=(0, 1))
    ft = np.fft.fftshift(np.fft.fft2(style.astype(np.float32), axes=(0, 1)), axes=(0, 1))
    b = max(1, int(min(h, w) * beta))
    cy, cx = h // 2, w // 2
    amp, phase = np.abs(fs), np.angle(fs)
    amp[cy - b:cy + b + 1, cx - b:cx + b + 1] = np.abs(ft)[cy - b:cy + b + 1, cx - b:cx + b + 1]
    out = np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * phase), axes=(0, 1)), axes=(0, 1)).real
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


HSV_GAINS = (0.015, 0.7, 0.4)  # Ultralytics' default hsv_h, hsv_s, hsv_v


def jitter(rgb: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) with hue, saturation and value scaled as Ultralytics' RandomHSV does,
    gains drawn from ``rng`` up to ``scale`` x HSV_GAINS (its lookup tables, our generator)."""
    h, s, v = rng.uniform(-1, 1, 3) * np.asarray(HSV_GAINS) * scale
    x = np.arange(256, dtype=np.float64)
    sat = np.clip(x * (1 + s), 0, 255).astype(np.uint8)
    sat[0] = 0
    lut = np.stack([((x + h * 180) % 180).astype(np.uint8), sat,
                    np.clip(x * (1 + v), 0, 255).astype(np.uint8)], -1).reshape(1, 256, 3)
    return cv2.cvtColor(cv2.LUT(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), lut), cv2.COLOR_HSV2RGB)


def _ops(level: float):
    """AugMix's pixel-level operations at ``level`` in (0, 1]. Its geometric ones would move the
    boxes, and it leaves out colour, contrast, brightness and sharpness itself because they overlap
    the corruption benchmarks."""
    return (ImageOps.autocontrast, ImageOps.equalize,
            lambda im: ImageOps.posterize(im, 8 - max(1, round(4 * level))),
            lambda im: ImageOps.solarize(im, 256 - round(256 * level)))


def augmix(rgb: np.ndarray, rng: np.random.Generator, width: int = 3, level: float = 0.5) -> np.ndarray:
    """AugMix (Hendrycks et al., ICLR 2020) on ``rgb`` (H, W, 3 uint8): ``width`` chains of 1 to 3
    random operations, mixed with Dirichlet(1) weights, then mixed with the image by a Beta(1, 1)
    weight, so the result stays near the image while its tones vary widely."""
    ops = _ops(level * rng.uniform(0.1, 1))
    im = Image.fromarray(rgb)
    mixed = np.zeros(rgb.shape, np.float32)
    for w in rng.dirichlet([1.0] * width):
        x = im
        for k in rng.integers(len(ops), size=rng.integers(1, 4)):
            x = ops[k](x)
        mixed += w * np.asarray(x, np.float32)
    m = rng.beta(1.0, 1.0)
    return np.clip(np.round((1 - m) * rgb + m * mixed), 0, 255).astype(np.uint8)


def rescale(s: Sample, factor: float) -> Sample:
    """``s`` downscaled by ``factor`` (at most 1), its boxes with it."""
    h, w = s.rgb.shape[:2]
    rgb, f = resize_long(s.rgb, max(1, round(factor * max(h, w))))
    return replace(s, rgb=rgb, boxes=np.asarray(s.boxes, np.float32) * f) if f < 1 else s


@dataclass
class Policy:
    """Sampling weights over (corruption, severity) plus failure samples to borrow style from."""

    choices: list[tuple[str, int]]
    weights: np.ndarray
    styles: list[np.ndarray] = field(default_factory=list)          # failure images
    recipes: list[tuple[str, int]] = field(default_factory=list)    # their (corruption, severity)
    groups: list[np.ndarray] = field(default_factory=list)          # failure indices per cluster
    group_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # each cluster's failure mass share
    p_clean: float = 0.2
    p_style: float = 0.3
    beta: float = 0.05
    colour: float = 0.0  # colour jitter of the clean image, times HSV_GAINS (0: none, the stream unchanged)
    mix: float = 0.0     # share of training images put through augmix first (0: none, the stream unchanged)
    scale: float = 0.0   # downscale each image by a factor in [1 - scale, 1] first (0: none, the stream unchanged)

    @classmethod
    def from_failures(cls, clean: float, cells: dict[str, dict[int, float]], failures: Sequence[Failure] = (),
                      labels: Sequence[int] | None = None, floor: float = 0.02, **kw) -> "Policy":
        """Corruption weights proportional to the relative mAP drop of each cell of the failure
        analysis; failure clusters (``labels``, one per failure; default one cluster) weighted by
        the objects their members lost."""
        choices = [(c, s) for c, sev in cells.items() for s in sev]
        drop = np.array([max(clean - cells[c][s], 0.0) / max(clean, 1e-9) + floor for c, s in choices])
        keep = [i for i, f in enumerate(failures) if f.rgb is not None]
        labels = np.zeros(len(failures), np.int64) if labels is None else np.asarray(labels)
        groups = [np.array([j for j, i in enumerate(keep) if labels[i] == c]) for c in sorted(set(labels[keep].tolist()))]
        mass = np.array([sum(failures[keep[j]].missed for j in g) for g in groups], float)
        return cls(choices, drop / drop.sum(), [failures[i].rgb for i in keep],
                   [(failures[i].corruption, failures[i].severity) for i in keep], groups,
                   mass / mass.sum() if mass.sum() else mass, **kw)

    def pick(self, rng: np.random.Generator) -> int:
        """A failure sample: its cluster drawn by failure mass, then a member uniformly."""
        g = self.groups[rng.choice(len(self.groups), p=self.group_weights)]
        return int(g[rng.integers(len(g))])

    def describe(self) -> list[dict]:
        return [{"corruption": c, "severity": s, "weight": round(float(w), 4)}
                for (c, s), w in sorted(zip(self.choices, self.weights), key=lambda x: -x[1])]

    def __call__(self, s: Sample, rng: np.random.Generator) -> Sample:
        return self.pair(s, rng)[1]

    def pair(self, s: Sample, rng: np.random.Generator) -> tuple[np.ndarray, Sample]:
        """The clean image and the training sample drawn from it, flipped alike (the clean one is
        the distillation target's input, see finetune.fit)."""
        if self.scale:
            s = rescale(s, rng.uniform(1 - self.scale, 1))
        clean = jitter(s.rgb, rng, self.colour) if self.colour else s.rgb
        u = rng.random()
        rgb = augmix(clean, rng) if self.mix and rng.random() < self.mix else clean
        if u >= self.p_clean + (self.p_style if self.styles else 0):
            c, sev = self.choices[rng.choice(len(self.choices), p=self.weights)]
            rgb = degrade(rgb, c, sev, seed=int(rng.integers(2**31)))
        elif u >= self.p_clean:
            j = self.pick(rng)
            if rng.random() < 0.5:
                rgb = fda(rgb, self.styles[j], self.beta)
            else:
                rgb = degrade(rgb, *self.recipes[j], seed=int(rng.integers(2**31)))
        boxes = s.boxes
        if rng.random() < 0.5:
            w = rgb.shape[1]
            rgb, clean = np.ascontiguousarray(rgb[:, ::-1]), clean[:, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1) if len(boxes) else boxes
        return clean, replace(s, rgb=rgb, boxes=boxes)
