"""The two end-to-end runs behind ``vqp robustness`` and ``vqp repair``.

Protocol: the labelled set is split by image id (first half repairs, second half evaluates),
repair only ever sees the 15 common corruptions, and evaluation adds the 4 held-out corruptions
and the codec degradations on images the repair never saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import VqpError
from .archsearch import search
from .augment import Policy
from .cluster import describe, embed, kmeans
from .corruptions import CODECS, COMMON, HELD_OUT, QUICK, SEVERITIES, check, degrade
from .finetune import blend, finetune, low_rank_size, pseudo_labels, save_checkpoint
from .localize import rank_blocks, top_k
from .report import block_plot, contact_sheet, heatmap, table, write_json
from .robustness import Sample, benchmark, load_model, load_yolo, resize_long, split

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".y4m"}


@dataclass
class Settings:
    """What to run; ``quick()`` is the few-minutes-on-2-cores subset."""

    imgsz: int = 320
    corruptions: Sequence[str] = COMMON
    held_out: Sequence[str] = HELD_OUT
    codecs: Sequence[str] = CODECS
    severities: Sequence[int] = SEVERITIES
    limit: int | None = None          # images per half of the split
    top_k: int = 4
    steps: int = 200
    batch: int = 8
    lr: float = 1e-4
    compare: bool = True              # also fine-tune the whole network at the same budget
    search: bool = True               # ArchRepair relaxed block search on the top-k (the saved checkpoint)
    freeze_bn: bool = True            # keep BatchNorm running statistics (see finetune.finetune)
    distill: float = 2.0              # weight of the original's clean-image neck features as a target (finetune.fit)
    labels: float = 1.0               # weight of the original's pseudo-labels (finetune.fit; 0: features alone)
    colour: float = 0.0               # colour jitter of clean training images, x Ultralytics' gains (augment.jitter)
    augmix: float = 0.0               # share of training images put through AugMix first (augment.augmix)
    scale: float = 0.0                # downscale training images by a random factor in [1 - scale, 1] (augment.rescale)
    blend: float = 1.0                # share of the tuning's weight change kept (finetune.blend; 1: all of it)
    rank: int = 0                     # train a change of this rank per convolution (finetune.low_rank; 0: the weights)
    blocks: Sequence[int] | None = None  # tune these blocks instead of the top-k (for ablations)
    seed: int = 0
    device: str | None = None         # cpu, cuda, cuda:N; default the first GPU where one exists
    extra: Sequence[str] = field(default_factory=tuple)  # unlabelled images, folders or videos
    frame_step: int = 10              # every n-th frame of an extra video
    max_unlabelled: int | None = None  # keep this many unlabelled images, evenly spaced
    analysis_limit: int = 64          # repair images the failure analysis runs on (seeded sample)
    failures: int = 128               # failure samples kept (the worst) for clustering and style
    clusters: int = 4                 # failure clusters (k-means on style statistics)

    @classmethod
    def quick(cls, **kw) -> "Settings":
        base = dict(imgsz=256, corruptions=QUICK, held_out=("speckle_noise", "gaussian_blur"),
                    codecs=("jpeg_low",), severities=(3,), limit=16, steps=12, batch=8)
        return cls(**{**base, **kw})

    def check(self) -> None:
        check(list(self.corruptions) + list(self.held_out) + list(self.codecs), self.severities)
        leaked = set(self.corruptions) & set(HELD_OUT)
        if leaked:
            raise VqpError(f"held-out corruption {sorted(leaked)[0]} cannot be used for repair")
        if not self.distill >= 0:
            raise VqpError(f"distill must be 0 or more, got {self.distill}")
        if not self.labels >= 0:
            raise VqpError(f"labels must be 0 or more, got {self.labels}")
        if not self.labels and not self.distill:
            raise VqpError("labels and distill cannot both be 0: nothing would be trained")
        if not 0 <= self.colour <= 1.4:
            raise VqpError(f"colour must be between 0 and 1.4 (saturation gain below 1), got {self.colour}")
        if not 0 <= self.augmix <= 1:
            raise VqpError(f"augmix must be between 0 and 1, got {self.augmix}")
        if not 0 <= self.scale < 1:
            raise VqpError(f"scale must be at least 0 and below 1, got {self.scale}")
        if not 0 < self.blend <= 1:
            raise VqpError(f"blend must be above 0 and at most 1, got {self.blend}")
        if self.blend < 1 and self.search:
            raise VqpError("blend needs --no-search: a searched block's variant has no counterpart in the original")
        if self.rank < 0:
            raise VqpError(f"rank must be 0 or more, got {self.rank}")
        if self.rank and self.search:
            raise VqpError("rank needs --no-search: the block search trains its variants' own weights")
        if self.imgsz % 32 or not 64 <= self.imgsz <= 1280:
            raise VqpError(f"imgsz must be a multiple of 32 between 64 and 1280, got {self.imgsz}")
        for name, v in (("top-k", self.top_k), ("steps", self.steps), ("batch", self.batch),
                        ("frame-step", self.frame_step), ("max-unlabelled", self.max_unlabelled or 1),
                        ("analysis-limit", self.analysis_limit),
                        ("clusters", self.clusters), ("failures", self.failures)):
            if v < 1:
                raise VqpError(f"{name} must be at least 1, got {v}")


def groups(st: Settings) -> dict[str, Sequence[str]]:
    return {g: cs for g, cs in (("common", st.corruptions), ("held_out", st.held_out), ("codecs", st.codecs)) if cs}


def panel(res: dict, st: Settings) -> dict[str, dict[int, float]]:
    """One model's heat-map rows: clean first, then every degradation."""
    return {"clean": {s: res["clean_map"] for s in st.severities}, **{c: v for g in groups(st) for c, v in res[g].items()}}


def summary(res: dict) -> dict:
    """The headline numbers of one model's benchmark entry."""
    return {k: round(v, 4) for k, v in res.items() if k == "clean_map" or k.startswith(("mpc_", "rpc_"))}


def robustness(data: str | Path, st: Settings, out: str | Path | None = None, model_path: str | None = None,
               part: str = "all", progress: Callable | None = None) -> dict:
    """Benchmark one detector; with ``out``, write robustness.json and robustness.png there."""
    st.check()
    model, source = load_model(model_path, st.device)
    samples = split(load_yolo(data, st.imgsz), part)[: st.limit]
    res, _ = benchmark({"model": model}, samples, groups(st), st.severities, st.imgsz, progress=progress)
    r = res["model"]
    report = {"model": source, "data": str(data), "part": part, "images": len(samples), "imgsz": st.imgsz,
              "severities": list(st.severities), **summary(r), "cells": {g: r[g] for g in groups(st)},
              "per_class": r["per_class"], "clean": r["clean"]}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(report, out / "robustness.json")
        heatmap({Path(source).name: panel(r, st)}, out / "robustness.png")
    report["tables"] = {g: table(r[g], r["clean_map"]) for g in groups(st)}
    return report


def load_unlabelled(paths: Sequence[str], imgsz: int, frame_step: int, limit: int | None = None,
                    exclude: Sequence[str] = ()) -> list[Sample]:
    """Images (files or folders) and video frames (every ``frame_step``-th, via PyAV) without labels.

    Images whose name is in ``exclude`` (the evaluation half) are left out, so passing the
    labelled set's own folder cannot leak evaluation images into the repair. With ``limit``,
    that many samples are kept, evenly spaced over everything found.
    """
    from ..imageio import load_image
    from .robustness import IMAGE_EXTS

    out, skip = [], set(exclude)
    for p in map(Path, paths):
        if not p.exists():
            raise VqpError(f"{p}: no such file or folder")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.suffix.lower() in IMAGE_EXTS and f.stem not in skip:
                out.append(Sample(f.stem, resize_long(load_image(f).rgb, imgsz)[0]))
            elif f.suffix.lower() in VIDEO_EXTS:
                import av

                try:
                    with av.open(str(f)) as c:
                        for i, fr in enumerate(c.decode(video=0)):
                            if i % frame_step == 0:
                                out.append(Sample(f"{f.stem}#{i}", resize_long(fr.to_ndarray(format="rgb24"), imgsz)[0]))
                except av.error.FFmpegError as e:
                    raise VqpError(f"{f}: cannot decode video ({e})") from None
    if limit is not None and len(out) > limit:
        out = [out[i] for i in np.linspace(0, len(out) - 1, limit).round().astype(int)]
    return out


def unlabelled_set(model, paths: Sequence[str], st: Settings, exclude: Sequence[str] = ()) -> list[Sample]:
    """Repair data without labels: clean images and frames labelled by the original model's own boxes."""
    return pseudo_labels(model, load_unlabelled(paths, st.imgsz, st.frame_step, st.max_unlabelled, exclude), st.imgsz)


def save_failures(failures: Sequence, folder: Path) -> None:
    """The failure samples as PNGs named image_corruption_severity_missed.png, for a human to look at."""
    import io

    from PIL import Image

    from ..imageio import write_atomic

    folder.mkdir(exist_ok=True)
    for f in failures:
        buf = io.BytesIO()
        Image.fromarray(f.rgb).save(buf, "PNG")
        write_atomic(folder / f"{f.name}_{f.corruption}_s{f.severity}_missed{f.missed}.png", buf.getvalue())


def class_failures(res: dict, names: dict[int, str], group: str = "common") -> list[dict]:
    """Classes ordered by how much AP50-95 they lose under corruption (failure analysis)."""
    clean, bad = res["clean"]["per_class"], res["per_class"].get(group, {})
    rows = [{"class": names.get(c, str(c)), "clean_ap": round(a, 4), "corrupted_ap": round(bad.get(c, 0.0), 4),
             "drop": round(a - bad.get(c, 0.0), 4)} for c, a in clean.items()]
    return sorted(rows, key=lambda r: -r["drop"])


def trained(model: torch.nn.Module, kind: str, chosen: Sequence[int], rank: int) -> int:
    """How many numbers the ``kind`` ("block", "search", "whole") of repair trained: the tuned
    blocks' parameters, or with ``rank`` their low-rank factors."""
    blocks = set(range(len(model.model))) if kind == "whole" else set(chosen)
    if rank:
        return low_rank_size(model, blocks, rank)
    return int(sum(p.numel() for i in blocks for p in model.model[i].parameters()))


def repair(data: str | Path, out: str | Path, st: Settings, model_path: str | None = None,
           progress: Callable | None = None) -> dict:
    """Failure analysis, block localization, top-k repair (and whole-network baseline), evaluation.

    Writes out/repaired.pt (the block-level repair), out/report.json, out/heatmap.png,
    out/blocks.png and the failure samples in out/failures/; returns the report.
    """
    st.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    step = progress or (lambda *a: None)
    model, source = load_model(model_path, st.device)
    samples = load_yolo(data, st.imgsz)
    repair_set, eval_set = split(samples, "repair")[: st.limit], split(samples, "eval")[: st.limit]
    labelled = {s.name for s in samples}  # the evaluation half must not leak in, the repair half is in already
    train = pseudo_labels(model, repair_set, st.imgsz) + unlabelled_set(model, st.extra, st, labelled)
    rng = np.random.default_rng(st.seed)
    probe = [train[i] for i in sorted(rng.choice(len(train), min(len(train), st.analysis_limit), replace=False))]

    # 1. failure analysis on (a sample of) the repair images, against the model's own clean detections
    fa, failures = benchmark({"original": model}, probe, {"common": st.corruptions}, st.severities, st.imgsz,
                             keep_failures=st.failures, progress=lambda *a: step("failure analysis", *a))
    labels = kmeans(embed(model, [f.rgb for f in failures], st.imgsz), st.clusters, st.seed)
    policy = Policy.from_failures(fa["original"]["clean_map"], fa["original"]["common"], failures, labels,
                                   colour=st.colour, mix=st.augmix, scale=st.scale)
    found = describe(failures, labels)
    (out / "clusters").mkdir(exist_ok=True)
    for g in found:
        g["thumbnails"] = f"clusters/cluster_{g['cluster']}.png"
        top = sorted(g.pop("members"), key=lambda i: -failures[i].missed)[:6]
        contact_sheet([failures[i].rgb for i in top], out / g["thumbnails"])

    # 2. localization on clean/corrupted pairs drawn like the repair data
    pairs = probe[:16]
    corrupted = [degrade(s.rgb, *policy.choices[rng.choice(len(policy.choices), p=policy.weights)], seed=i)
                 for i, s in enumerate(pairs)]
    step("localization", 0, 1, "")
    blocks = rank_blocks(model, [s.rgb for s in pairs], corrupted, pairs, st.imgsz)
    chosen = top_k(blocks, st.top_k)
    if st.blocks is not None:
        trainable = {r["index"] for r in blocks if r["params"]}
        bad = [b for b in st.blocks if b not in trainable]
        if bad:
            raise VqpError(f"block {bad[0]} has no parameters; choose from {sorted(trainable)}")
        chosen = list(st.blocks)
    step("localization", 1, 1, f"tuning blocks {chosen}")

    # 3. repair at equal budget
    kw = dict(steps=st.steps, imgsz=st.imgsz, batch=st.batch, lr=st.lr, seed=st.seed, freeze_bn=st.freeze_bn,
              distill=st.distill, labels=st.labels)
    tuned, losses = {}, {}
    tuned["block"], losses["block"] = finetune(model, train, policy, blocks=chosen, rank=st.rank,
                                               progress=lambda *a: step("repair top-k", *a), **kw)
    if st.search:
        tuned["search"], losses["search"], arch = search(model, train, policy, blocks=chosen,
                                                         progress=lambda *a: step("block search", *a), **kw)
    if st.compare:
        tuned["whole"], losses["whole"] = finetune(model, train, policy, blocks=None, rank=st.rank,
                                                   progress=lambda *a: step("whole network", *a), **kw)
    if st.blend < 1:  # both fine-tunings, so the comparison stays at equal budget
        tuned = {k: blend(model, m, st.blend) for k, m in tuned.items()}

    # 4. evaluation on held-out images only
    ev, _ = benchmark({"original": model, **tuned}, eval_set, groups(st), st.severities, st.imgsz,
                      progress=lambda *a: step("evaluation", *a))
    best = "search" if st.search else "block"
    note = {"method": f"vqp repair: top-k block {'search' if st.search else 'fine-tuning'}", "blocks": chosen,
            "source": source, "architecture": arch if st.search else [], "blend": st.blend}
    save_checkpoint(tuned[best], source, out / "repaired.pt", note)
    names = dict(model.names)
    report = {
        "model": source, "checkpoint": str(out / "repaired.pt"), "data": str(data), "imgsz": st.imgsz,
        "severities": list(st.severities), "corruptions": list(st.corruptions), "held_out": list(st.held_out),
        "codecs": list(st.codecs),
        "split": {"repair": [s.name for s in repair_set], "eval": [s.name for s in eval_set],
                  "unlabelled": len(train) - len(repair_set), "unlabelled_sources": list(st.extra),
                  "failure_analysis_images": len(probe)},
        "budget": {**kw, "colour": st.colour, "augmix": st.augmix, "scale": st.scale, "blend": st.blend,
                   "rank": st.rank, "trainable_params": {k: trained(m, k, chosen, st.rank) for k, m in tuned.items()}},
        "failure_analysis": {"clean_map": fa["original"]["clean_map"], "cells": fa["original"]["common"],
                             "classes": class_failures(fa["original"], names)[:10], "sampling": policy.describe(),
                             "clusters": found,
                             "samples": [{"image": f.name, "corruption": f.corruption, "severity": f.severity,
                                          "missed": f.missed} for f in failures]},
        "blocks": blocks, "top_k": top_k(blocks, st.top_k), "tuned_blocks": chosen, "losses": losses,
        "saved": best, "architecture": note["architecture"],
        "results": {m: {**summary(r), "cells": {g: r[g] for g in groups(st)}} for m, r in ev.items()},
    }
    report["delta"] = {m: {k: round(v - report["results"]["original"][k], 4) for k, v in summary(ev[m]).items()}
                       for m in tuned}
    save_failures(failures, out / "failures")
    write_json(report, out / "report.json")
    heatmap({m: panel(r, st) for m, r in ev.items()}, out / "heatmap.png")
    block_plot(blocks, out / "blocks.png", st.top_k)
    return report
