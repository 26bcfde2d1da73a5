"""Issue 5 measurement: robustness of yolo11n_coco_dq before and after repair on held-out coco128 images.

    .venv/bin/python benchmarks/repair.py [--quick] [--steps N] [--severities 1,3,5] [--out out/repair-bench]

Runs ``vqp.repair.pipeline.repair`` (failure analysis, block ranking, top-k and whole-network
fine-tuning at equal budget, evaluation on the held-out half), keeps the checkpoint under --out,
copies the plots and the JSON report next to RESULTS.md and prints the Markdown for it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from vqp.cli.repair import DEFAULT_DATA, progress_bar  # noqa: E402
from vqp.repair.pipeline import Settings, repair  # noqa: E402
from vqp.repair.report import table  # noqa: E402

HERE = Path(__file__).resolve().parent


def markdown(rep: dict, seconds: float, cmd: str) -> str:
    r = rep["results"]
    lines = [f"Command: `{cmd}` ({seconds / 60:.0f} min). imgsz {rep['imgsz']}, "
             f"{len(rep['split']['repair'])} repair / {len(rep['split']['eval'])} held-out images, "
             f"severities {rep['severities']}, {rep['budget']['steps']} steps x batch {rep['budget']['batch']}, "
             f"AdamW lr {rep['budget']['lr']}, blend {rep['budget'].get('blend', 1.0)}, BatchNorm statistics {'frozen' if rep['budget']['freeze_bn'] else 'updated'}, "
             f"tuned blocks {rep['tuned_blocks']} (ranked top-k {rep['top_k']}), "
             f"{rep['split']['unlabelled']} unlabelled images, searched variants "
             f"{[(a['block'], a['chosen']) for a in rep['architecture']]}.", "",
             "| model | clean mAP50-95 | mPC common | rPC common | mPC held-out | rPC held-out | mPC codecs | trainable params |",
             "|---|---|---|---|---|---|---|---|"]
    params = {"original": 0, **rep["budget"]["trainable_params"]}
    clusters = ["", "Failure clusters (heaviest first):", ""]
    for c in rep["failure_analysis"]["clusters"]:
        clusters.append(f"- failure cluster {c['cluster']}: {c['size']} samples, {c['missed']} objects lost "
                        f"({100 * c['share']:.0f}%), {', '.join(list(c['degradations'])[:3])}")
    for m, v in r.items():
        lines.append(f"| {m} | {100 * v['clean_map']:.1f} | {100 * v['mpc_common']:.1f} | {100 * v['rpc_common']:.1f}% | "
                     f"{100 * v.get('mpc_held_out', float('nan')):.1f} | {100 * v.get('rpc_held_out', float('nan')):.1f}% | "
                     f"{100 * v.get('mpc_codecs', float('nan')):.1f} | {params[m]:,} |")
    for m in r:
        for g, cells in r[m]["cells"].items():
            lines += ["", f"{m}, {g} (mAP50-95 %):", "", table(cells, r[m]["clean_map"])]
    return "\n".join(lines + clusters)


def check_map(sizes=(256, 640)) -> None:
    """Our mAP path against Ultralytics' own model.val on all of coco128 (copied to a temp folder,
    so Ultralytics' label cache is not written into ../shared)."""
    import tempfile

    from ultralytics import YOLO

    from vqp.repair.robustness import Predictor, load_model, load_yolo, score

    model, src = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("images", "labels"):
            shutil.copytree(DEFAULT_DATA / sub, Path(tmp) / sub)
        yaml = Path(tmp) / "data.yaml"
        yaml.write_text((DEFAULT_DATA / "data.yaml").read_text().replace("path: .", f"path: {tmp}"))
        for sz in sizes:
            s = load_yolo(tmp, sz)
            ours = score(Predictor(model, sz)([x.rgb for x in s]), s, 80)
            v = YOLO(src).val(data=str(yaml), imgsz=sz, batch=8, device="cpu", plots=False, verbose=False,
                              workers=0, project=str(Path(tmp) / "runs"))
            print(f"imgsz {sz}: vqp.repair mAP50-95 {100 * ours['map']:.1f} / mAP50 {100 * ours['map50']:.1f}; "
                  f"Ultralytics model.val {100 * v.box.map:.1f} / {100 * v.box.map50:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--severities", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int,
                    help="seed of the augmentation stream and batches (default 0); the split stays")
    ap.add_argument("--blocks", type=lambda s: [int(x) for x in s.split(",")], help="tune these blocks (ablation)")
    ap.add_argument("--no-compare", action="store_true", help="skip the whole-network baseline")
    ap.add_argument("--no-search", action="store_true", help="skip the relaxed block search")
    ap.add_argument("--corruptions", type=lambda s: [x for x in s.split(",") if x], help="repair corruptions")
    ap.add_argument("--codecs", type=lambda s: [x for x in s.split(",") if x], help="codec degradations")
    ap.add_argument("--unlabelled", nargs="+", default=(), help="unlabelled images, folders or videos")
    ap.add_argument("--frame-step", type=int)
    ap.add_argument("--max-unlabelled", type=int)
    ap.add_argument("--clusters", type=int)
    ap.add_argument("--device")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (1 when two runs share 2 cores)")
    ap.add_argument("--tag", default="", help="suffix for the files copied next to RESULTS.md")
    ap.add_argument("--bn-stats", action="store_true", help="let BatchNorm update its statistics (first run)")
    ap.add_argument("--distill", type=float,
                    help="weight of the original's clean-image features as a target (default 2; runs recorded before it: 0)")
    ap.add_argument("--labels", type=float, help="weight of the pseudo-label loss (default 1; 0: features alone)")
    ap.add_argument("--colour", type=float, help="colour jitter of the clean training images (default 0)")
    ap.add_argument("--augmix", type=float, help="share of training images put through AugMix first (default 0)")
    ap.add_argument("--scale", type=float, help="random downscale range of the training images (default 0)")
    ap.add_argument("--blend", type=float, help="share of the tuning's weight change kept (default 1)")
    ap.add_argument("--rank", type=int, help="rank of the change trained per convolution (default 0: the weights)")
    ap.add_argument("--out", default="out/repair-bench")
    ap.add_argument("--check-map", action="store_true", help="only compare our mAP with Ultralytics' model.val")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.check_map:
        check_map()
        return 0
    kw = {k: v for k, v in (("steps", a.steps), ("severities", a.severities), ("limit", a.limit),
                            ("imgsz", a.imgsz), ("top_k", a.top_k), ("lr", a.lr), ("seed", a.seed),
                            ("corruptions", a.corruptions), ("codecs", a.codecs), ("frame_step", a.frame_step),
                            ("max_unlabelled", a.max_unlabelled), ("clusters", a.clusters), ("device", a.device),
                            ("distill", a.distill), ("labels", a.labels), ("colour", a.colour), ("augmix", a.augmix), ("scale", a.scale), ("blend", a.blend),
                            ("rank", a.rank)) if v is not None}
    kw["extra"] = a.unlabelled
    kw["search"] = not a.no_search
    kw["freeze_bn"] = not a.bn_stats
    kw["compare"] = not a.no_compare
    if a.blocks:
        kw["blocks"] = a.blocks
    st = Settings.quick(**kw) if a.quick else Settings(**kw)
    t = time.time()
    with progress_bar("bench") as bar:
        rep = repair(DEFAULT_DATA, a.out, st, progress=bar)
    secs = time.time() - t
    tag = ("_quick" if a.quick else "") + (f"_{a.tag}" if a.tag else "")
    for src, dst in (("heatmap.png", f"repair_heatmap{tag}.png"), ("blocks.png", f"repair_blocks{tag}.png"),
                     ("report.json", f"repair_report{tag}.json")):
        shutil.copyfile(Path(a.out) / src, HERE / dst)
    print(markdown(rep, secs, "python benchmarks/repair.py " + " ".join(sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
