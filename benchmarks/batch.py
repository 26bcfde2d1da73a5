"""Throughput of ``vqp batch``: images/s and video frames/s in-process and on a local Ray.

    python -m benchmarks benchmarks/configs/batch.yaml

A config with ``kind: batch`` lists the runs (in-process, or Ray with N actors), the image folder,
the clips and how many frames of each, and extra ``vqp batch`` flags. Each run starts its runner
and loads the detectors first (timed as ``startup_s``), then times the images and the clips as two
batches into fresh folders; outputs are compared byte for byte with the first run's. Ray's cost
per call is measured apart, as the round trip of an empty unit. Writes ``batch.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import yaml

from vqp.errors import VqpError

from .datasets import DATA

ROOT = Path(__file__).resolve().parent.parent


def is_batch_config(path: Path) -> bool:
    try:
        d = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and d.get("kind") == "batch"


def settings(flags: list[str]):
    """The settings `vqp batch` builds from these flags."""
    from vqp.cli import build_parser
    from vqp.cli.batch import settings_from_args

    return settings_from_args(build_parser().parse_args(["batch", "-", "-o", "-", *flags]))


def runner(run: dict):
    from vqp.batch import LocalRunner

    if not run.get("ray"):
        return LocalRunner()
    from vqp.distributed import RayRunner

    return RayRunner(run.get("address"), actors=run.get("actors"))


def call_ms(r, s, n: int = 50) -> float | None:
    """Mean round trip of an empty unit through Ray: the scheduling and transfer cost of one call."""
    if not hasattr(r, "actors"):
        return None
    import ray

    from vqp.batch import Unit

    a = r.actors[0]
    ray.get(a.run.remote(Unit((), s)))
    t = time.perf_counter()
    for _ in range(n):
        ray.get(a.run.remote(Unit((), s)))
    return round((time.perf_counter() - t) / n * 1000, 2)


def timed(inputs: list[str], out: Path, s, r, per_unit: int) -> tuple[float, list[dict]]:
    from vqp.batch import Batch

    shutil.rmtree(out, ignore_errors=True)
    b = Batch(inputs, out, s, per_unit)
    t = time.perf_counter()
    records = b.run(r)
    wall = time.perf_counter() - t
    bad = [rec["error"] for rec in records if rec["status"] != "ok"]
    if bad:
        raise VqpError(f"the benchmark inputs failed: {bad[0]}")
    return wall, records


def same(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    return bool(files) and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def run_config(path: Path, out: str | Path | None = None) -> int:
    d = yaml.safe_load(Path(path).read_text())
    name = d.get("name", Path(path).stem)
    out = Path(out or d.get("out") or ROOT / "out" / "bench" / name)
    out.mkdir(parents=True, exist_ok=True)
    images = [str(DATA / d.get("images", "kodak"))]
    clips = [str(p) for c in d.get("clips", []) for p in sorted((DATA / "video").glob(f"{c}.*"))]
    if not clips or len(clips) != len(d.get("clips", [])):
        raise VqpError(f"{path}: clips must name files in {DATA / 'video'} (without extension)")
    flags = [str(f) for f in d.get("flags", [])]
    s = settings(flags + ["--frames", str(d.get("frames", 150))])
    rows = []
    for run in d["runs"]:
        load = os.getloadavg()[0]
        t = time.perf_counter()
        r = runner(run)
        try:
            r.warm(s)
            startup = time.perf_counter() - t
            img_s, img = timed(images, out / run["name"] / "images", s, r, run.get("images_per_task", 8))
            vid_s, vid = timed(clips, out / run["name"] / "videos", s, r, 1)
            call = call_ms(r, s)
        finally:
            r.close()
        frames = sum(rec["frames"] for rec in vid)
        first = out / d["runs"][0]["name"]
        row = dict(run=run["name"], startup_s=round(startup, 1), images=len(img), images_s=round(img_s, 1),
                   images_per_s=round(len(img) / img_s, 3), per_image_s=round(img_s / len(img), 3),
                   clips=len(vid), frames=frames, videos_s=round(vid_s, 1), frames_per_s=round(frames / vid_s, 2),
                   call_ms=call, identical_to_first=same(out / run["name"], first), load_before=round(load, 2),
                   load_after=round(os.getloadavg()[0], 2), cpus=os.cpu_count())
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "batch.json").write_text(json.dumps({"config": str(path), "rows": rows}, indent=1))
    print(f"wrote {out / 'batch.json'}")
    return 0
