"""Which repaired block moves a corruption's score: the original with one repaired block swapped in.

    python -m benchmarks.block_swap out/repair-640-64-distill2/repaired.pt --blocks 0,1,4,6 \\
        --corruptions saturate,spatter --imgsz 640

Scores, on the held-out half of coco128 (the repair benchmark's split), the original, the repaired
checkpoint, and for each block the original with that block taken from the repaired checkpoint;
prints Markdown with clean mAP50-95, each corruption's mAP50-95 and its difference from clean. The
issue 14 saturate diagnosis in RESULTS.md ("Colour jitter against the saturate loss") comes from it.
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch

from vqp.errors import VqpError
from vqp.repair.robustness import benchmark, load_model

from .checkpoints import add_arguments, coco_half


def swapped(original: torch.nn.Module, repaired: torch.nn.Module, blocks: list[int]) -> dict[str, torch.nn.Module]:
    """{"original", "repaired", "block N": the original with block N of ``repaired``} (copies)."""
    if len(original.model) != len(repaired.model):
        raise VqpError("the two models have different architectures")
    out = {"original": original, "repaired": repaired}
    for b in blocks:
        if not 0 <= b < len(original.model):
            raise VqpError(f"block {b} is out of range (0-{len(original.model) - 1})")
        m = copy.deepcopy(original)
        m.model[b] = copy.deepcopy(repaired.model[b])
        out[f"block {b}"] = m
    return out


def table(scores: dict, corruptions: list[str], severity: int) -> str:
    """Markdown: clean mAP, then per corruption its mAP and (its mAP - clean), in points."""
    head = "| model | clean | " + " | ".join(f"{c} (- clean)" for c in corruptions) + " |"
    rows = [head, "|" + "---|" * (2 + len(corruptions))]
    for name, s in scores.items():
        clean = s["clean_map"] * 100
        cells = [s["held_out"][c][severity] * 100 for c in corruptions]
        rows.append(f"| {name} | {clean:.1f} | " + " | ".join(f"{v:.1f} ({v - clean:+.1f})" for v in cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.block_swap", description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--blocks", required=True, type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--corruptions", default="saturate,spatter", type=lambda s: [x for x in s.split(",") if x])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        models = swapped(load_model(a.original)[0], load_model(a.repaired)[0], a.blocks)
        scores, _ = benchmark(models, coco_half(a.imgsz, a.limit, a.half), {"held_out": a.corruptions}, [a.severity], a.imgsz)
    except VqpError as e:
        print(f"block_swap: error: {e}", file=sys.stderr)
        return 2
    print(table(scores, a.corruptions, a.severity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
