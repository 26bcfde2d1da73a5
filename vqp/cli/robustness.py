"""``vqp robustness [DATA]``: clean mAP50-95, mPC and rPC of the detector under corruptions."""
from __future__ import annotations

import json

from .repair import DEFAULT_DATA, add_run_args, progress_bar, settings_from_args


def register(sub) -> None:
    p = sub.add_parser("robustness", help="corruption benchmark of the detector (mAP, mPC, rPC)")
    p.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="YOLO-format set (default: ../shared/data/coco)")
    p.add_argument("--part", choices=["all", "repair", "eval"], default="all",
                   help="which half of the split by image id to score (default all)")
    p.add_argument("-o", "--out", help="folder for robustness.json and robustness.png")
    p.add_argument("--model", help="trainable .pt detector (default: the vqp default model)")
    add_run_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..repair.pipeline import robustness

    with progress_bar("robustness") as bar:
        rep = robustness(args.data, settings_from_args(args), args.out, args.model, args.part,
                         lambda *a: bar("benchmark", *a))
    tables = rep.pop("tables")
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(f"{rep['model']} on {rep['images']} images of {rep['data']} ({rep['part']}), imgsz {rep['imgsz']}")
    for g, t in tables.items():
        print(f"\n{g}: mPC {100 * rep['mpc_' + g]:.1f}, rPC {100 * rep['rpc_' + g]:.1f}%\n{t}")
    print(f"\nclean mAP50-95 {100 * rep['clean_map']:.1f}")
    return 0
