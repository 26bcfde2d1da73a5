"""Weight-space blends of a repaired checkpoint with its original, scored like the repair benchmark.

    python -m benchmarks.blend out/repair-640-64-distill2/repaired.pt --alphas 0.5,0.75 --imgsz 640

Scores, on the held-out half of coco128 (the repair benchmark's split), the original, the repaired
checkpoint and ``vqp.repair.finetune.blend(original, repaired, alpha)`` for each alpha, on the clean
images, the repair corruptions (the run's ``report.json`` beside the checkpoint names them, else
vqp's common set) and the four held-out corruptions, at one severity. Prints Markdown in points:
clean mAP50-95, mPC and rPC on both groups, and each held-out corruption. ``--save PATH`` writes
the blend at the one alpha given as a checkpoint instead (what ``vqp repair --blend`` would have
saved, from a finished run), for benchmarks that take a ``model:``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vqp.errors import VqpError
from vqp.repair.corruptions import COMMON, HELD_OUT
from vqp.repair.finetune import blend, save_checkpoint
from vqp.repair.robustness import benchmark, load_model

from .checkpoints import add_arguments, coco_half


def blends(original: torch.nn.Module, repaired: torch.nn.Module, alphas: list[float]) -> dict[str, torch.nn.Module]:
    """{"original", "repaired", "blend A": the blend at alpha A}."""
    return {"original": original, "repaired": repaired, **{f"blend {a:g}": blend(original, repaired, a) for a in alphas}}


def repair_corruptions(checkpoint: str) -> list[str]:
    """The corruptions the checkpoint was repaired on, from its run's report.json, else vqp's common set."""
    rep = Path(checkpoint).with_name("report.json")
    return json.loads(rep.read_text())["corruptions"] if rep.is_file() else list(COMMON)


def table(scores: dict, held_out: list[str], severity: int) -> str:
    """Markdown, in points: clean, mPC/rPC per group, and each held-out corruption."""
    head = ("| model | clean | mPC repair set | rPC repair set | mPC held-out | rPC held-out | "
            + " | ".join(held_out) + " |")
    rows = [head, "|" + "---|" * (6 + len(held_out))]
    for name, s in scores.items():
        cells = [f"{100 * s['held_out'][c][severity]:.1f}" for c in held_out]
        rows.append(f"| {name} | {100 * s['clean_map']:.1f} | {100 * s['mpc_common']:.1f} | {100 * s['rpc_common']:.1f} | "
                    f"{100 * s['mpc_held_out']:.1f} | {100 * s['rpc_held_out']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report(models: dict[str, torch.nn.Module], common: list[str], a: argparse.Namespace) -> None:
    """Score ``models`` on a half of coco128 (``add_arguments``' options in ``a``: the held-out half
    unless ``--half repair``), clean, under the repair corruptions ``common`` and under the held-out
    ones, and print the table."""
    groups = {"common": common, "held_out": list(HELD_OUT)}
    scores, _ = benchmark(models, coco_half(a.imgsz, a.limit, a.half), groups, [a.severity], a.imgsz)
    print(table(scores, list(HELD_OUT), a.severity))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.blend", description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--alphas", required=True, type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--corruptions", type=lambda s: [x for x in s.split(",") if x],
                    help="repair corruptions (default: from the run's report.json)")
    ap.add_argument("--save", metavar="PATH", help="write the blend (one alpha) as a checkpoint and score nothing")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        (original, src), repaired = load_model(a.original), load_model(a.repaired)[0]
        if a.save:
            if len(a.alphas) != 1:
                raise VqpError("--save takes one alpha")
            save_checkpoint(blend(original, repaired, a.alphas[0]), src, a.save,
                            {"method": "benchmarks.blend", "repaired": a.repaired, "blend": a.alphas[0]})
            return 0
        report(blends(original, repaired, a.alphas), a.corruptions or repair_corruptions(a.repaired), a)
    except VqpError as e:
        print(f"blend: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
