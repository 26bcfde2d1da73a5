"""Repair by fine-tuning: only the top-k vulnerable blocks, or the whole network as the baseline.

Targets are pseudo-labels: the original model's confident boxes on the clean image, so any
unlabelled image or video frame can serve, and the repaired model learns to find on a degraded
image what the original found on the clean one. Both variants see the same batches in the same
order (one seeded generator), for the same number of steps: the comparison is at equal budget.
Frozen blocks get no gradient and keep their BatchNorm in eval mode, so they stay bit-identical.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import math
import os
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import VqpError
from ..imageio import publish, reserve_temp
from .robustness import Predictor, Sample, device_of, to_tensor


def criterion(model: torch.nn.Module):
    """Ultralytics' detection loss for ``model`` with the default box/cls/dfl gains."""
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace
    from ultralytics.utils.loss import v8DetectionLoss

    args = model.args if isinstance(model.args, dict) else vars(model.args)
    saved, model.args = model.args, IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **args})
    try:
        return v8DetectionLoss(model)
    finally:
        model.args = saved


def targets(labels: Sequence[Sample], imgsz: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """An Ultralytics training batch's label part: boxes as xywh normalized to the padded square."""
    idx, cls, boxes = [], [], []
    for i, s in enumerate(labels):
        b = torch.from_numpy(np.asarray(s.boxes, np.float32)).reshape(-1, 4)
        idx.append(torch.full((len(b),), float(i)))
        cls.append(torch.from_numpy(np.asarray(s.cls, np.float32)).reshape(-1))
        boxes.append(torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1) / imgsz)
    return {"batch_idx": torch.cat(idx).to(device), "cls": torch.cat(cls)[:, None].to(device),
            "bboxes": torch.cat(boxes).to(device)}


def pseudo_labels(model: torch.nn.Module, samples: Sequence[Sample], imgsz: int, conf: float = 0.25) -> list[Sample]:
    """Replace each sample's labels by the model's own confident detections on the clean image."""
    preds = Predictor(model, imgsz, conf=conf, multi_label=False)([s.rgb for s in samples])
    return [replace(s, boxes=p[p[:, 4] >= conf, :4].copy(), cls=p[p[:, 4] >= conf, 5].astype(np.int64))
            for p, s in zip(preds, samples)]


@contextlib.contextmanager
def neck(model: torch.nn.Module):
    """Collect, per forward pass, the feature maps the Detect head receives (P3, P4, P5)."""
    seen: list[list[torch.Tensor]] = []
    hook = model.model[-1].register_forward_pre_hook(lambda m, args: seen.append(list(args[0])))
    try:
        yield seen
    finally:
        hook.remove()


def feature_gap(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of the squared error relative to the teacher's energy: each level counts
    alike whatever its channel count and scale. (0 when the features agree.)"""
    return sum(((a - b) ** 2).mean() / (b ** 2).mean().clamp_min(1e-12) for a, b in zip(student, teacher))


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BatchNorm of ``model`` in eval mode: its running statistics stay as they are
    (batches of 8 give poor ones, see finetune) while its scale and shift still get gradients."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def fit(model: torch.nn.Module, train: Sequence[Sample], augment, trainable: set[int],
        groups: list[dict], *, steps: int, imgsz: int, batch: int = 8, seed: int = 0, freeze_bn: bool = True,
        teacher: torch.nn.Module | None = None, distill: float = 0.0, labels: float = 1.0,
        progress: Callable | None = None) -> list[float]:
    """Train ``model`` in place: AdamW over ``groups`` (torch parameter groups, each with its lr),
    cosine decay to a tenth, seeded batches; blocks outside ``trainable`` stay in eval mode.

    With ``distill`` > 0, the loss adds ``distill`` x (images) x ``feature_gap`` between the
    model's neck features on the training image and ``teacher``'s on the clean image it was drawn
    from (``augment.pair``). Pseudo-labels give a sparse target (a few boxes per image); the
    original's features on the clean image are a dense one, and on clean samples they hold the
    model to what it was, which is what keeps clean mAP as the steps grow. ``labels`` weighs the
    pseudo-label loss (0: the features alone; the labels' threshold makes every box the original
    scored under it a negative, which the features do not).

    Every caller with the same seed, steps and batch sees the same images in the same order
    (distillation or not). Returns the loss per step.
    """
    draw = augment.pair if distill else (lambda s, r: (None, augment(s, r)))
    layers = model.model
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.1 + 0.9 * (1 + math.cos(math.pi * t / steps)) / 2)
    crit = criterion(model)
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        cleans, picks = zip(*[draw(train[i], rng) for i in rng.choice(len(train), min(batch, len(train)), replace=False)])
        model.train()
        for k, layer in enumerate(layers):
            if k not in trainable:
                layer.eval()  # frozen blocks keep their BatchNorm statistics too
        if freeze_bn:
            freeze_batchnorm(model)
        dev = device_of(model)
        with neck(model) if distill else contextlib.nullcontext() as feats:
            preds = model(to_tensor([s.rgb for s in picks], imgsz, dev))
        loss = labels * crit(preds, targets(picks, imgsz, dev))[0].sum() if labels else 0.0
        if distill:
            with torch.no_grad(), neck(teacher) as goal:
                teacher(to_tensor(cleans, imgsz, dev))
            loss = loss + distill * len(picks) * feature_gap(feats[0], goal[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()) / len(picks))
        if progress:
            progress(step + 1, steps, f"loss {losses[-1]:.3f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def trainable_params(model: torch.nn.Module, blocks: set[int]) -> list[torch.nn.Parameter]:
    """Switch gradients on for the parameters of ``blocks`` only (never the fixed DFL projection)."""
    for k, layer in enumerate(model.model):
        for name, p in layer.named_parameters():
            p.requires_grad_(k in blocks and not name.startswith("dfl"))
    return [p for p in model.parameters() if p.requires_grad]


class LowRank(torch.nn.Module):
    """A convolution weight's parametrization W0 + up @ down (LoRA, Hu et al., ICLR 2022), in
    the (out, in x kh x kw) matrix view. ``up`` starts at zero, so the tuned layer starts as the
    original; only ``up`` and ``down`` train, and the change stays of rank ``rank`` at most."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        out, fan = weight.shape[0], weight[0].numel()
        self.down = torch.nn.Parameter(torch.empty(rank, fan, dtype=weight.dtype, device=weight.device))
        torch.nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's default, as in LoRA
        self.up = torch.nn.Parameter(torch.zeros(out, rank, dtype=weight.dtype, device=weight.device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.up @ self.down).view_as(w)


def low_rank(model: torch.nn.Module, blocks: set[int], rank: int) -> list[torch.nn.Parameter]:
    """Freeze ``model`` and give every convolution of ``blocks`` a LowRank change of at most
    ``rank`` (capped by the weight's own; never the fixed DFL projection); returns the parameters
    that train."""
    from torch.nn.utils import parametrize

    for p in model.parameters():
        p.requires_grad_(False)
    for k in sorted(blocks):
        for conv in [m for n, m in model.model[k].named_modules()
                     if isinstance(m, torch.nn.Conv2d) and not n.startswith("dfl")]:
            w = conv.weight
            parametrize.register_parametrization(conv, "weight", LowRank(w, min(rank, w.shape[0], w[0].numel())))
    return [p for p in model.parameters() if p.requires_grad]


def low_rank_size(model: torch.nn.Module, blocks: set[int], rank: int) -> int:
    """How many numbers low_rank trains for ``blocks`` at ``rank`` (on a copy of ``model``)."""
    return sum(p.numel() for p in low_rank(copy.deepcopy(model), blocks, rank))


def merge_low_rank(model: torch.nn.Module) -> None:
    """Fold every LowRank change into its plain weight: the model is an ordinary network again,
    which saves, fuses and loads with ``YOLO(path)`` like the original."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def finetune(model: torch.nn.Module, train: Sequence[Sample], augment: Callable, *, blocks: Sequence[int] | None,
             steps: int, imgsz: int, batch: int = 8, lr: float = 1e-4, seed: int = 0, freeze_bn: bool = True,
             distill: float = 0.0, labels: float = 1.0, rank: int = 0,
             progress: Callable | None = None) -> tuple[torch.nn.Module, list[float]]:
    """Fine-tune a copy of ``model``: only ``blocks`` (indices into model.model), or all when None.

    ``augment(sample, rng) -> sample`` degrades a training sample (see augment.Policy). With
    ``freeze_bn`` every BatchNorm keeps its running statistics (its scale and shift still
    train): batches of 8 mixed clean/degraded images give poor statistics, and in a first run
    with batch statistics the whole-network variant started at a 40% higher loss and lost 2.9
    points of clean mAP. ``distill``, ``labels``: the weights of the original ``model`` as teacher
    and of its pseudo-labels (see fit). ``rank`` > 0 trains a low-rank change of each convolution
    instead of its weights (low_rank), folded in before the copy is returned.
    Returns the tuned copy (eval mode) and the loss per step.
    """
    teacher, model = model, copy.deepcopy(model).float()
    trainable = set(range(len(model.model))) if blocks is None else set(blocks)
    params = low_rank(model, trainable, rank) if rank else trainable_params(model, trainable)
    losses = fit(model, train, augment, trainable, [{"params": params, "lr": lr}], steps=steps, imgsz=imgsz,
                 batch=batch, seed=seed, freeze_bn=freeze_bn, teacher=teacher, distill=distill, labels=labels,
                 progress=progress)
    if rank:
        merge_low_rank(model)
    return model, losses


def same_architecture(original: torch.nn.Module, tuned: torch.nn.Module) -> None:
    """Refuse, with one line, to merge weights of models whose tensors differ in name or shape
    (a searched block's variant has no counterpart in the original)."""
    a, b = original.state_dict(), tuned.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise VqpError("cannot merge models of different architectures")


def blend(original: torch.nn.Module, tuned: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A copy of ``tuned`` with every float weight and statistic at (1 - alpha) x original + alpha x tuned.

    Weight-space interpolation (WiSE-FT, Wortsman et al., CVPR 2022): a fine-tuned network and
    the network it was tuned from lie in one basin, so points between them keep much of the
    tuning's gain on the shifts it trained for while giving back less on those it did not.
    Both must have the same architecture (a searched variant does not blend with its original).
    """
    if not 0 <= alpha <= 1:
        raise VqpError(f"blend must be between 0 and 1, got {alpha}")
    same_architecture(original, tuned)
    a, b = original.state_dict(), tuned.state_dict()
    out = copy.deepcopy(tuned)
    out.load_state_dict({k: torch.lerp(a[k].to(v), v, alpha) if v.is_floating_point() else v for k, v in b.items()})
    return out


def save_checkpoint(model: torch.nn.Module, source: str | os.PathLike, dest: str | os.PathLike, note: dict) -> None:
    """Write ``model`` as an Ultralytics checkpoint (fp16, like its source) that vqp --model loads.

    The source checkpoint supplies the metadata (names, train_args); the file appears atomically.
    """
    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    ckpt.update(model=copy.deepcopy(model).to("cpu").half(), ema=None, optimizer=None, updates=None,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(), repair=note)
    tmp = reserve_temp(dest)
    try:
        torch.save(ckpt, tmp)
        publish(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
