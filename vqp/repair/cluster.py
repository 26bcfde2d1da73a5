"""DeepRepair's failure clustering: group the failure samples by style, so augmentation covers every failure mode.

A failure sample is a degraded image on which the detector lost objects it found clean. Its
style is summarised by the channel mean and standard deviation of the detector's own early
feature maps (the statistics AdaIN-style transfer matches; they carry colour cast, contrast,
haze, noise and blur, not layout). The standardised statistics are clustered with k-means
(scikit-learn), and each cluster's failure mass is the number of objects lost in its members:
augmentation draws a cluster in proportion to that mass (see augment.Policy).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch

from .robustness import Failure, device_of, to_tensor

STYLE_BLOCKS = (1, 2, 4)  # stride 4 and 8 maps of YOLO11: low-level texture and colour, little semantics


@torch.no_grad()
def embed(model: torch.nn.Module, images: Sequence[np.ndarray], imgsz: int, blocks: Sequence[int] = STYLE_BLOCKS,
          batch: int = 16) -> np.ndarray:
    """(N, D) style statistics: per listed block, the channel means and standard deviations of its output."""
    acts: dict[int, torch.Tensor] = {}
    hooks = [model.model[k].register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o)) for k in blocks]
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            model(to_tensor(chunk, imgsz, device_of(model)))
            for j, im in enumerate(chunk):
                feats = []
                for k in blocks:
                    a = acts[k][j].float()
                    f = imgsz / a.shape[-1]  # statistics over the image area only, not the grey padding
                    a = a[:, :max(1, round(im.shape[0] / f)), :max(1, round(im.shape[1] / f))].flatten(1)
                    feats.append(torch.cat([a.mean(1), a.std(1, correction=0)]))
                rows.append(torch.cat(feats).cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return torch.stack(rows).numpy() if rows else np.zeros((0, 0), np.float32)


def kmeans(emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster labels 0..k'-1 of the standardised embeddings, k' = min(k, distinct rows)."""
    from sklearn.cluster import KMeans

    if not len(emb):
        return np.zeros(0, np.int64)
    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    k = max(1, min(k, len(np.unique(z.round(6), axis=0))))
    if k == 1:
        return np.zeros(len(z), np.int64)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(z).astype(np.int64)


def describe(failures: Sequence[Failure], labels: np.ndarray) -> list[dict]:
    """Per cluster, heaviest first: size, objects lost (mass), its share, and the degradations in it."""
    total = sum(f.missed for f in failures) or 1
    out = []
    for c in sorted(set(labels.tolist())):
        idx = [i for i, l in enumerate(labels) if l == c]
        mass = sum(failures[i].missed for i in idx)
        out.append({"cluster": int(c), "size": len(idx), "missed": int(mass), "share": round(mass / total, 4),
                    "degradations": dict(Counter(f"{failures[i].corruption} s{failures[i].severity}" for i in idx)
                                         .most_common()),
                    "examples": [failures[i].name for i in sorted(idx, key=lambda i: -failures[i].missed)[:6]],
                    "members": idx})
    return sorted(out, key=lambda r: -r["missed"])
