"""Block-level localization after ArchRepair: which blocks of the network does corruption break?

Forward hooks record every block's output on clean and corrupted copies of the same images.
Per block:
- drift: relative L2 distance between corrupted and clean features (how far the features move);
- gain: drift divided by the drift of the block's inputs (does the block amplify or damp it?);
- taylor: |<dL/da, a_corrupt - a_clean>|, the first-order share of the detection loss that the
  block's feature shift accounts for (a gradient-weighted activation statistic);
- gradcam: mean |dL/da * a|, the gradient-weighted activation magnitude.
Blocks with parameters are ranked by the mean of their gain and taylor ranks (1 = most vulnerable).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .finetune import criterion, targets
from .robustness import Sample, device_of, to_tensor


def _feats(o) -> list[torch.Tensor]:
    """A block's output tensors; the Detect head gives its raw box and class maps."""
    if isinstance(o, (tuple, list)):
        o = o[1] if len(o) > 1 and isinstance(o[1], dict) else o[0]
    if isinstance(o, dict):
        return [o["boxes"], o["scores"]]
    return [o]


def _flat(ts: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample concatenation of a block's tensors (missing gradients count as zero)."""
    return torch.cat([(t if t is not None else torch.zeros_like(r)).detach().flatten(1) for t, r in zip(ts, like)], 1)


def rank_blocks(model: torch.nn.Module, clean: Sequence[np.ndarray], corrupted: Sequence[np.ndarray],
                labels: Sequence[Sample], imgsz: int) -> list[dict]:
    """Vulnerability statistics and rank for every block of ``model.model`` (clean[i] pairs corrupted[i])."""
    layers = model.model
    acts: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, _feats(o)))
             for k, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        dev = device_of(model)
        xc, xb = to_tensor(clean, imgsz, dev), to_tensor(corrupted, imgsz, dev)
        with torch.no_grad():
            model(xc)
            ref = {k: _flat(v, v) for k, v in acts.items()}
        with torch.enable_grad():
            xb.requires_grad_(True)  # parameters stay untouched; gradients flow to the activations
            preds = model(xb)
            feats = [acts[k] for k in range(len(layers))]
            loss = criterion(model)(preds, targets(labels, imgsz, dev))[0].sum()
            flat = torch.autograd.grad(loss, [t for ts in feats for t in ts], allow_unused=True)
            grads, pos = [], 0
            for ts in feats:
                grads.append(flat[pos:pos + len(ts)])
                pos += len(ts)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    img_drift = float(((xb.detach() - xc).flatten(1).norm(dim=1) / xc.flatten(1).norm(dim=1).clamp(min=1e-9)).mean())
    rows, drift = [], {}
    for k, layer in enumerate(layers):
        a, g = _flat(feats[k], feats[k]), _flat(grads[k], feats[k])
        delta = a - ref[k]
        drift[k] = float((delta.norm(dim=1) / ref[k].norm(dim=1).clamp(min=1e-9)).mean())
        src = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        inp = [img_drift if k == 0 and s == -1 else drift[k - 1 if s == -1 else s] for s in src]
        rows.append({"index": k, "type": type(layer).__name__, "params": sum(p.numel() for p in layer.parameters()),
                     "drift": drift[k], "gain": drift[k] / max(float(np.mean(inp)), 1e-9),
                     "taylor": float((g * delta).sum(1).abs().mean()),
                     "gradcam": float((g * a).abs().mean())})
    ranked = [r for r in rows if r["params"]]
    for key in ("gain", "taylor"):
        for pos, r in enumerate(sorted(ranked, key=lambda r: -r[key])):
            r[f"{key}_rank"] = pos + 1
    for r in ranked:
        r["score"] = (r["gain_rank"] + r["taylor_rank"]) / 2
    for pos, r in enumerate(sorted(ranked, key=lambda r: (r["score"], -r["taylor"]))):
        r["rank"] = pos + 1
    return rows


def top_k(rows: list[dict], k: int) -> list[int]:
    """Indices of the k most vulnerable blocks that have parameters."""
    return [r["index"] for r in sorted((r for r in rows if "rank" in r), key=lambda r: r["rank"])[:k]]
