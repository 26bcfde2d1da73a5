"""What the scripts that compare a repaired checkpoint with its original share (block_swap, blend):
their options for the two checkpoints and the evaluation, and the coco128 half they score on."""
from __future__ import annotations

import argparse

from vqp.cli.repair import DEFAULT_DATA
from vqp.repair.robustness import Sample, load_yolo, split


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """``repaired``, ``--original``, ``--severity``, ``--imgsz``, ``--limit``, ``--half``, ``--threads``."""
    ap.add_argument("repaired", help="repaired checkpoint")
    ap.add_argument("--original", help="the checkpoint it was repaired from (default: vqp's default model)")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--limit", type=int, default=64, help="images of the half (default 64: all of it)")
    ap.add_argument("--half", choices=("eval", "repair"), default="eval",
                    help="score on coco128's evaluation half (default) or on the repair half the checkpoint "
                         "trained on, to tell a loss the training objective allows from one it does not generalize")
    ap.add_argument("--threads", type=int, default=2)


def coco_half(imgsz: int, limit: int, half: str = "eval") -> list[Sample]:
    """The first ``limit`` images of one half of coco128 (the repair benchmark's split): the
    evaluation half, or with ``half="repair"`` the half repair trains on."""
    return split(load_yolo(DEFAULT_DATA, imgsz), half)[:limit]
