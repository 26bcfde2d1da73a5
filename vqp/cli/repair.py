"""``vqp repair [DATA] -o DIR``: find what corruption breaks in the detector and fine-tune it back."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from ..errors import VqpError

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco"


@contextlib.contextmanager
def progress_bar(name: str):
    """A callback (stage, done, total, note) that shows one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    bars: dict = {}

    def update(stage, done, total, note=""):
        if stage not in bars:
            for b in bars.values():
                b.close()
            bars[stage] = tqdm(total=total, desc=f"{name}: {stage}", file=sys.stderr, leave=False)
        bar = bars[stage]
        bar.n = done
        bar.set_postfix_str(note, refresh=True)

    try:
        yield update
    finally:
        for b in bars.values():
            b.close()


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x]
    except ValueError:
        raise VqpError(f"expected comma-separated integers, got {s!r}") from None


def _names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_run_args(p) -> None:
    """Options shared by robustness and repair: what to degrade and at which size."""
    g = p.add_argument_group("benchmark")
    g.add_argument("--quick", action="store_true", help="few images, corruptions and severities (minutes on 2 cores)")
    g.add_argument("--imgsz", type=int, help="detector input size (default 320; quick 256)")
    g.add_argument("--corruptions", type=_names, help="comma-separated common corruptions (default all 15)")
    g.add_argument("--held-out", type=_names, help="comma-separated held-out corruptions (default all 4; '' for none)")
    g.add_argument("--codecs", type=_names, help="comma-separated codec degradations: jpeg_low,h264,vqp_background")
    g.add_argument("--severities", type=_ints, help="comma-separated severities 1-5 (default all)")
    g.add_argument("--limit", type=int, help="at most this many images (per half for repair)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU where one exists, else the CPU)")


def settings_from_args(args):
    from ..repair.pipeline import Settings

    kw = {k: v for k, v in (("imgsz", args.imgsz), ("corruptions", args.corruptions), ("held_out", args.held_out),
                            ("codecs", args.codecs), ("severities", args.severities), ("limit", args.limit),
                            ("device", args.device))
          if v is not None}
    for k in ("top_k", "steps", "batch", "lr", "seed", "blocks", "frame_step", "max_unlabelled", "analysis_limit",
              "clusters", "distill", "labels", "colour", "augmix", "scale", "blend", "rank"):
        if getattr(args, k, None) is not None:
            kw[k] = getattr(args, k)
    if getattr(args, "no_compare", False):
        kw["compare"] = False
    if getattr(args, "no_search", False):
        kw["search"] = False
    if getattr(args, "extra", None):
        kw["extra"] = args.extra
    if kw.get("limit") is not None and kw["limit"] < 1:
        raise VqpError(f"--limit must be at least 1, got {kw['limit']}")
    return Settings.quick(**kw) if args.quick else Settings(**kw)


def register(sub) -> None:
    p = sub.add_parser("repair", help="harden the detector against corruptions (writes a repaired checkpoint)")
    p.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="YOLO-format set (default: ../shared/data/coco)")
    p.add_argument("-o", "--out", required=True, help="output folder: repaired.pt, report.json, heatmap.png, blocks.png, "
                                                "failures/, clusters/")
    p.add_argument("--model", help="trainable .pt detector to repair (default: the vqp default model)")
    add_run_args(p)
    g = p.add_argument_group("repair")
    g.add_argument("--top-k", type=int, help="number of most vulnerable blocks to fine-tune (default 4)")
    g.add_argument("--blocks", type=_ints, help="comma-separated block indices to tune instead of the top-k (ablation)")
    g.add_argument("--steps", type=int, help="optimizer steps (default 200; quick 12)")
    g.add_argument("--batch", type=int, help="images per step (default 8)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4)")
    g.add_argument("--distill", type=float,
                   help="weight of the original model's features on the clean image as a target (default 2; 0: off)")
    g.add_argument("--labels", type=float,
                   help="weight of the original model's boxes on the clean image as a target (default 1; "
                        "0: its features alone, which needs --distill)")
    g.add_argument("--colour", type=float,
                   help="colour-jitter the clean training images, x Ultralytics' hsv gains (default 0: off)")
    g.add_argument("--augmix", type=float,
                   help="put this share of the training images through AugMix's tonal operations first, "
                        "the teacher seeing them without (default 0: off)")
    g.add_argument("--scale", type=float,
                   help="downscale each training image (boxes too) by a random factor in [1 - S, 1], "
                        "new views of a small set at every draw (default 0: off)")
    g.add_argument("--blend", type=float,
                   help="keep this share of the tuning's weight change, a weight-space blend with the original "
                        "(WiSE-FT; default 1: all; needs --no-search)")
    g.add_argument("--rank", type=int,
                   help="train a change of at most this rank per convolution of the tuned blocks (LoRA), "
                        "folded into the weights when done (default 0: the weights themselves; needs --no-search)")
    g.add_argument("--seed", type=int, help="seed for the augmentation stream (default 0)")
    g.add_argument("--unlabelled", "--extra", dest="extra", nargs="+", metavar="PATH",
                   help="images, folders or videos without labels to repair on (labelled by the original model; "
                        "images of the evaluation half are left out)")
    g.add_argument("--frame-step", type=int, help="every n-th frame of an unlabelled video (default 10; 1 = every frame)")
    g.add_argument("--max-unlabelled", type=int, help="keep at most this many unlabelled images, evenly spaced")
    g.add_argument("--analysis-limit", type=int, help="repair images the failure analysis runs on (default 64)")
    g.add_argument("--clusters", type=int, help="failure clusters to draw augmentations from (default 4)")
    g.add_argument("--no-compare", action="store_true", help="skip the whole-network fine-tuning baseline")
    g.add_argument("--no-search", action="store_true",
                   help="skip the relaxed block search (then repaired.pt is the top-k fine-tuning)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..repair.pipeline import repair

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VqpError(f"{out}: exists and is not a folder")
    with progress_bar("repair") as bar:
        rep = repair(args.data, out, settings_from_args(args), args.model, bar)
    print(json.dumps({"checkpoint": rep["checkpoint"], "saved": rep["saved"], "architecture": rep["architecture"],
                      "top_k": rep["top_k"], "tuned_blocks": rep["tuned_blocks"],
                      "results": {m: {k: v for k, v in r.items() if k != "cells"} for m, r in rep["results"].items()},
                      "delta": rep["delta"]}, indent=1))
    return 0
