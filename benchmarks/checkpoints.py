"""What the scripts that compare a repaired checkpoint with its original share (block_swap, blend):
their options for the two checkpoints and the evaluation, and the held-out images they score on."""
from __future__ import annotations

import argparse

from vqp.cli.repair import DEFAULT_DATA
from vqp.repair.robustness import Sample, load_yolo, split


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """``repaired``, ``--original``, ``--severity``, ``--imgsz``, ``--limit``, ``--threads``."""
    ap.add_argument("repaired", help="repaired checkpoint")
    ap.add_argument("--original", help="the checkpoint it was repaired from (default: vqp's default model)")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--limit", type=int, default=64, help="held-out images (default 64: the whole half)")
    ap.add_argument("--threads", type=int, default=2)


def held_out(imgsz: int, limit: int) -> list[Sample]:
    """The first ``limit`` images of coco128's evaluation half (the repair benchmark's split)."""
    return split(load_yolo(DEFAULT_DATA, imgsz), "eval")[:limit]
