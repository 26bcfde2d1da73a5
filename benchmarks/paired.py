"""How sure a repaired checkpoint's change in mAP is: a paired bootstrap over the held-out images.

    python -m benchmarks.paired out/repair-640-64-lr3e4/repaired.pt --blend 0.6 --imgsz 640

The repair benchmark scores 64 held-out images, on which one image can move mAP50-95 by more
than a point. This scores the original and the repaired checkpoint (or its blend, ``--blend A``)
once per image on the clean images and on each degradation at one severity, then draws the image
set with replacement ``--draws`` times, scoring both models on each draw: the change and its 90 %
interval are what a different set of images like these would likely show. Prints Markdown, in
points: the change on all images, the 5th and 95th percentiles of the drawn changes, and the share
of draws in which the checkpoint loses.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from vqp.errors import VqpError
from vqp.repair.corruptions import HELD_OUT, check, degrade
from vqp.repair.finetune import blend
from vqp.repair.robustness import Predictor, Sample, load_model, score

from .checkpoints import add_arguments, coco_half


def paired(preds: dict[str, list[np.ndarray]], samples: list[Sample], nc: int, draws: int,
           seed: int = 0) -> dict[str, float]:
    """The mAP50-95 of ``preds["original"]`` on ``samples`` and its change to ``preds["repaired"]``,
    and over ``draws`` resamplings of the images (the same draw for both) the change's 5th and 95th
    percentiles and the share of draws below zero."""
    def maps(idx: np.ndarray) -> tuple[float, float]:
        picked = [samples[i] for i in idx]
        return tuple(score([preds[m][i] for i in idx], picked, nc)["map"] for m in ("original", "repaired"))

    rng = np.random.default_rng(seed)
    d = np.array([b - a for a, b in (maps(rng.integers(len(samples), size=len(samples))) for _ in range(draws))])
    base, new = maps(np.arange(len(samples)))
    return {"original": base, "delta": new - base, "p5": float(np.percentile(d, 5)),
            "p95": float(np.percentile(d, 95)), "loses": float((d < 0).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--blend", type=float, help="score this blend with the original instead of the checkpoint")
    ap.add_argument("--corruptions", type=lambda s: [x for x in s.split(",") if x], default=list(HELD_OUT),
                    help="degradations besides the clean images (default: the four held-out corruptions)")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        check(a.corruptions, [a.severity])
        if a.draws < 1:
            raise VqpError(f"draws must be at least 1, got {a.draws}")
        original, repaired = load_model(a.original)[0], load_model(a.repaired)[0]
        if a.blend is not None:
            repaired = blend(original, repaired, a.blend)
        samples = coco_half(a.imgsz, a.limit, a.half)
        models = {"original": Predictor(original, a.imgsz), "repaired": Predictor(repaired, a.imgsz)}
        rows = ["| images | original | repaired | change | 90 % interval | draws with a loss |", "|---|---|---|---|---|---|"]
        for c in ["clean", *a.corruptions]:
            images = [s.rgb if c == "clean" else degrade(s.rgb, c, a.severity, seed=i) for i, s in enumerate(samples)]
            preds = {m: p(images) for m, p in models.items()}
            r = paired(preds, samples, len(original.names), a.draws, a.seed)
            rows.append(f"| {c} | {100 * r['original']:.1f} | {100 * (r['original'] + r['delta']):.1f} | {100 * r['delta']:+.1f} | "
                        f"{100 * r['p5']:+.1f} to {100 * r['p95']:+.1f} | {100 * r['loses']:.0f} % |")
    except VqpError as e:
        print(f"paired: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
