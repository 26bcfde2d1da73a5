"""ArchRepair's block search: relax a vulnerable block into a softmax mixture of variants, train, discretise.

The relaxed block runs the original block once and mixes candidate tails on its output,
weighted by softmax(alpha) (DARTS-style continuous relaxation):
- ``original``: the block as it is;
- ``bn``: a BatchNorm after it, initialised to the block's output statistics on clean images
  (so it starts as the identity) - a re-normalisation that can learn to undo a corruption's shift;
- ``se``: squeeze-excitation channel attention (Ultralytics' ChannelAttention), started near
  the identity (gate 0.98), which re-weights channels by global context;
- ``conv1x1``: a 1x1 convolution started at the identity: the re-parameterised form of a
  residual adapter y + A y, widening the block's output mapping.
The block's parameters, the tails' and the architecture weights alpha train together, in one
AdamW step (alpha at a higher learning rate). Discretisation keeps the heaviest variant as a
plain ``nn.Sequential(block, tail)`` of torch and Ultralytics modules, carrying the routing
attributes (f, i, type, np) that the DetectionModel's forward reads, so the checkpoint loads
with ``YOLO(path)`` alone and keeps the input/output contract.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .finetune import fit, trainable_params
from .robustness import Sample, device_of, to_tensor

CANDIDATES = ("original", "bn", "se", "conv1x1")
ROUTING = ("f", "i", "type", "np")


def tail(name: str, mean: torch.Tensor, var: torch.Tensor) -> nn.Module:
    """A candidate's module after the block, initialised to (nearly) the identity on clean features."""
    from ultralytics.nn.modules.conv import ChannelAttention

    c = len(mean)
    if name == "bn":
        m = nn.BatchNorm2d(c)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        with torch.no_grad():
            m.weight.copy_((var + m.eps).sqrt())
            m.bias.copy_(mean)
        return m
    if name == "se":
        m = ChannelAttention(c)
        with torch.no_grad():
            m.fc.weight.zero_()
            m.fc.bias.fill_(4.0)
        return m
    if name == "conv1x1":
        m = nn.Conv2d(c, c, 1)
        with torch.no_grad():
            m.weight.copy_(torch.eye(c)[:, :, None, None])
            m.bias.zero_()
        return m
    raise ValueError(name)


def _route(src: nn.Module, dst: nn.Module) -> nn.Module:
    for a in ROUTING:
        if hasattr(src, a):
            setattr(dst, a, getattr(src, a))
    return dst


class Relaxed(nn.Module):
    """A block followed by the softmax(alpha)-weighted sum of its candidate tails (alpha[0]: none)."""

    def __init__(self, block: nn.Module, tails: dict[str, nn.Module]):
        super().__init__()
        self.block, self.names = block, ["original", *tails]
        self.tails = nn.ModuleList(tails.values())
        self.alpha = nn.Parameter(torch.zeros(len(self.names)))
        _route(block, self)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.alpha, 0)

    def forward(self, x):
        y = self.block(x)
        w = self.weights()
        return w[0] * y + sum(w[j + 1] * t(y) for j, t in enumerate(self.tails))

    def discretise(self) -> tuple[nn.Module, str]:
        """The heaviest variant as plain modules, and its name."""
        j = int(self.weights().argmax())
        if j == 0:
            return self.block, "original"
        return _route(self.block, nn.Sequential(self.block, self.tails[j - 1])), self.names[j]


@torch.no_grad()
def output_stats(model: nn.Module, images: Sequence[np.ndarray], imgsz: int, blocks: Sequence[int]) -> dict:
    """Per block whose output is one feature map: its channel mean and variance on ``images``."""
    acts: dict[int, object] = {}
    hooks = [model.model[k].register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o)) for k in blocks]
    try:
        model.eval()
        model(to_tensor(images, imgsz, device_of(model)))
    finally:
        for h in hooks:
            h.remove()
    return {k: (a.mean((0, 2, 3)), a.var((0, 2, 3))) for k, a in acts.items()
            if isinstance(a, torch.Tensor) and a.dim() == 4}


def relax(model: nn.Module, stats: dict, candidates: Sequence[str] = CANDIDATES) -> nn.Module:
    """Replace (in place) each block in ``stats`` by its relaxed version; returns the model."""
    dev = device_of(model)
    for k, (mean, var) in stats.items():
        tails = {n: tail(n, mean.float().cpu(), var.float().cpu()).to(dev) for n in candidates if n != "original"}
        model.model[k] = Relaxed(model.model[k], tails)
    return model


def discretise(model: nn.Module) -> list[dict]:
    """Replace (in place) every relaxed block by its heaviest variant; returns what was chosen."""
    out = []
    for k, m in enumerate(model.model):
        if isinstance(m, Relaxed):
            w = m.weights().detach().cpu().tolist()
            model.model[k], name = m.discretise()
            out.append({"block": k, "chosen": name, "weights": {n: round(v, 4) for n, v in zip(m.names, w)}})
    return out


def search(model: nn.Module, train: Sequence[Sample], augment: Callable, *, blocks: Sequence[int], steps: int,
           imgsz: int, batch: int = 8, lr: float = 1e-4, arch_lr: float = 3e-2, seed: int = 0,
           freeze_bn: bool = True, distill: float = 0.0, labels: float = 1.0, candidates: Sequence[str] = CANDIDATES,
           progress: Callable | None = None) -> tuple[nn.Module, list[float], list[dict]]:
    """Relaxed search over ``blocks`` of a copy of ``model``, at the same budget and batches as finetune.

    ``blocks`` are tuned as in block-level fine-tuning; those with a single feature-map output
    are relaxed too (the Detect head is tuned but not relaxed). Returns the discretised copy,
    the loss per step and, per relaxed block, the final architecture weights and the choice.
    ``distill``, ``labels``: the weights of the original ``model`` as teacher and of its
    pseudo-labels (see finetune.fit).
    """
    teacher, model = model, copy.deepcopy(model).float()
    stats = output_stats(model, [s.rgb for s in train[:16]], imgsz, blocks)
    relax(model, stats, candidates)
    params = trainable_params(model, set(blocks))
    alphas = [m.alpha for m in model.model if isinstance(m, Relaxed)]
    weights = [p for p in params if all(p is not a for a in alphas)]
    groups = [{"params": weights, "lr": lr}] + ([{"params": alphas, "lr": arch_lr, "weight_decay": 0.0}] if alphas else [])
    losses = fit(model, train, augment, set(blocks), groups, steps=steps, imgsz=imgsz, batch=batch, seed=seed,
                 freeze_bn=freeze_bn, teacher=teacher, distill=distill, labels=labels,
                 progress=progress)
    return model, losses, discretise(model)
