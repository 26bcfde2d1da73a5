"""Weight-space merges of a repaired checkpoint with its original beyond the uniform blend, scored
like benchmarks.blend: does any of them get the rPC gain without the loss on saturate?

    python -m benchmarks.merge out/repair-640-64-lr3e4/repaired.pt --fisher 0.5,0.8 --trim 0.2 \\
        --other out/repair-320-lr3e4/repaired.pt --sums 0.5/0.3 --imgsz 640

- ``--fisher L``: Fisher merging (Matena and Raffel, NeurIPS 2022). Each weight is the average of
  the two models' values weighted by L x F_original and (1 - L) x F_repaired, their diagonal
  Fisher information: the original's detection loss on the clean repair half, the repaired one's
  on the same images degraded by the run's corruptions, both against the original's pseudo-labels.
  A weight the original's clean loss is sensitive to stays near the original's value.
- ``--trim F``: the trim step of TIES-Merging (Yadav et al., NeurIPS 2023). Only the largest F share
  of each tensor's change is kept; the rest of the change is dropped as interference.
- ``--sums W/V``: task arithmetic (Ilharco et al., ICLR 2023): original + W x (repaired - original)
  + V x (other - original), with ``--other`` a second repair of the same original (another size,
  data or seed).

Prints benchmarks.blend's table, one row per model, on the held-out half of coco128 at one severity.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys

import torch

from vqp.cli.repair import DEFAULT_DATA
from vqp.errors import VqpError
from vqp.repair.corruptions import degrade
from vqp.repair.finetune import criterion, freeze_batchnorm, pseudo_labels, same_architecture, targets
from vqp.repair.robustness import Sample, device_of, load_model, load_yolo, split, to_tensor

from .blend import repair_corruptions, report
from .checkpoints import add_arguments

State = dict[str, torch.Tensor]


def fisher(model: torch.nn.Module, samples: list[Sample], imgsz: int, corruptions: list[str] = (),
           severity: int = 3) -> State:
    """Diagonal empirical Fisher of ``model``'s detection loss per parameter name: the squared gradient
    summed over ``samples`` one image at a time, BatchNorm in eval mode as ``vqp repair`` trains.
    With ``corruptions``, image i is degraded by corruptions[i mod n] (seeded by i) first. Images
    without labels are skipped."""
    m = copy.deepcopy(model).float()
    for p in m.parameters():
        p.requires_grad_(True)
    crit, out = criterion(m), {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    m.train()
    freeze_batchnorm(m)
    dev = device_of(m)
    for i, s in enumerate(x for x in samples if len(x.boxes)):
        rgb = degrade(s.rgb, corruptions[i % len(corruptions)], severity, seed=i) if corruptions else s.rgb
        m.zero_grad(set_to_none=True)
        crit(m(to_tensor([rgb], imgsz, dev)), targets([s], imgsz, dev))[0].sum().backward()
        for n, p in m.named_parameters():
            if p.grad is not None:
                out[n] += p.grad.detach() ** 2
    return out


def with_state(model: torch.nn.Module, state: State) -> torch.nn.Module:
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out


def check_lam(lam: float) -> None:
    if not 0 <= lam <= 1:
        raise VqpError(f"--fisher must be between 0 and 1, got {lam}")


def check_share(share: float) -> None:
    if not 0 < share <= 1:
        raise VqpError(f"--trim must be above 0 and at most 1, got {share}")


def fisher_merge(original: torch.nn.Module, repaired: torch.nn.Module, f_orig: State, f_rep: State,
                 lam: float) -> torch.nn.Module:
    """Each parameter at (lam F_o w_o + (1 - lam) F_r w_r) / (lam F_o + (1 - lam) F_r), halfway where both
    Fishers are 0; everything else (BatchNorm statistics, which ``vqp repair`` freezes) is the repaired's."""
    check_lam(lam)
    same_architecture(original, repaired)
    a, b = original.state_dict(), repaired.state_dict()
    state = dict(b)
    for n in f_orig:
        fo, fr = lam * f_orig[n], (1 - lam) * f_rep[n]
        total = fo + fr
        w = torch.where(total > 0, fr / total.clamp_min(1e-30), torch.full_like(total, 0.5))
        state[n] = a[n] + w * (b[n] - a[n])
    return with_state(repaired, state)


def trim(original: torch.nn.Module, repaired: torch.nn.Module, share: float) -> torch.nn.Module:
    """The original plus, per float tensor, only the ceil(share x size) largest changes (by magnitude)."""
    check_share(share)
    same_architecture(original, repaired)
    a, b = original.state_dict(), repaired.state_dict()
    state = dict(b)
    for n, v in b.items():
        if v.is_floating_point() and v.numel():
            d = (v - a[n]).flatten()
            keep = torch.zeros_like(d, dtype=torch.bool)
            keep[d.abs().topk(math.ceil(share * d.numel())).indices] = True
            state[n] = a[n] + torch.where(keep, d, torch.zeros_like(d)).view_as(v)
    return with_state(repaired, state)


def task_sum(original: torch.nn.Module, tuned: list[torch.nn.Module], weights: list[float]) -> torch.nn.Module:
    """original + sum of w x (tuned - original) over every float weight and statistic."""
    for t in tuned:
        same_architecture(original, t)
    a, states = original.state_dict(), [t.state_dict() for t in tuned]
    return with_state(original, {k: v + sum(w * (s[k] - v) for w, s in zip(weights, states)) if v.is_floating_point() else v
                                 for k, v in a.items()})


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--fisher", type=floats, default=[], help="Fisher merges at these L (0: the repaired, 1: the original)")
    ap.add_argument("--fisher-images", type=int, default=None, help="repair-half images for the Fishers (default: all)")
    ap.add_argument("--trim", type=floats, default=[], help="trims keeping these shares of each tensor's change")
    ap.add_argument("--other", help="a second repaired checkpoint of the same original, for --sums")
    ap.add_argument("--sums", type=lambda s: [[float(w) for w in x.split("/")] for x in s.split(",") if x], default=[],
                    help="W/V,...: original + W x (repaired - original) + V x (other - original)")
    ap.add_argument("--corruptions", type=lambda s: [x for x in s.split(",") if x],
                    help="repair corruptions (default: from the run's report.json)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        if a.sums and (not a.other or any(len(w) != 2 for w in a.sums)):
            raise VqpError("--sums takes W/V pairs and needs --other")
        for x in a.fisher:  # before the Fishers are computed, not after
            check_lam(x)
        for x in a.trim:
            check_share(x)
        (original, _), repaired = load_model(a.original), load_model(a.repaired)[0]
        same_architecture(original, repaired)
        common = a.corruptions or repair_corruptions(a.repaired)
        models = {"original": original, "repaired": repaired}
        if a.fisher:
            train = pseudo_labels(original, split(load_yolo(DEFAULT_DATA, a.imgsz), "repair")[:a.fisher_images], a.imgsz)
            f_orig, f_rep = fisher(original, train, a.imgsz), fisher(repaired, train, a.imgsz, common, a.severity)
            models |= {f"fisher {x:g}": fisher_merge(original, repaired, f_orig, f_rep, x) for x in a.fisher}
        models |= {f"trim {x:g}": trim(original, repaired, x) for x in a.trim}
        if a.sums:
            other = load_model(a.other)[0]
            models |= {f"sum {w:g}/{v:g}": task_sum(original, [repaired, other], [w, v]) for w, v in a.sums}
        report(models, common, a)
    except VqpError as e:
        print(f"merge: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
