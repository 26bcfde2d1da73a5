"""Benchmark runs: every (dataset item, codec, grid value) point is encoded, decoded and measured once.

Finished points are appended to ``cache.jsonl`` in the run's folder, so an interrupted run resumes
where it stopped; a point's key holds everything that changes its result (dataset settings, codec
settings, grid value), so editing a config re-runs only what it changed. Aggregation, BD-rates,
mAP and the report are recomputed from the points on every run.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from vqp.errors import VqpError
from vqp.metrics import detection_map, region_scores
from vqp.roi import ROI_CONF
from vqp.types import Box, Detections

from . import datasets
from .codecs import Codec, decode_image, encode_clip, encode_image, read_frames

ROOT = Path(__file__).resolve().parent
# The pipeline's source, recorded with every point: cached points from another version are flagged in the report.
VQP_SRC = hashlib.sha1(b"".join(p.read_bytes() for p in sorted((ROOT.parent / "vqp").rglob("*.py")))).hexdigest()[:10]
METRICS = ("psnr_full", "msssim_full", "psnr_obj", "msssim_obj", "psnr_bg", "msssim_bg")


@dataclass
class Config:
    name: str
    out: Path
    datasets: list[dict]
    codecs: list[Codec]
    model: str | None = None
    roi_conf: float = ROI_CONF  # detector boxes that drive vqp (vqp's own default)
    region_conf: float = 0.25   # detector boxes that define the measured object region (_det)
    map_conf: float = 0.001     # detections kept for mAP (as in Ultralytics' val)
    threads: int = 2


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config's mapping, with its ``base`` (a config file, relative to this one) folded in: this
    file's keys replace the base's, except ``codecs``, merged by name (a codec the base has is
    updated key by key, a new one is appended); ``name`` and ``out`` are never inherited, so a
    variant runs into a folder of its own. A variant then states only what differs."""
    if not path.is_file():
        raise VqpError(f"{path}: no such config file")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise VqpError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or "base" not in d:
        return d
    base = (path.parent / str(d.pop("base"))).resolve()
    if base in seen:
        raise VqpError(f"{path}: base {base.name} includes itself")
    b = read_yaml(base, (*seen, path.resolve()))
    if not isinstance(b, dict):
        raise VqpError(f"{base}: a base config must be a mapping")
    codecs = list(b.get("codecs") or [])  # as the base has them: load_config checks them as it would there
    for c in d.pop("codecs", None) or []:
        if not isinstance(c, dict) or "name" not in c:
            raise VqpError(f"{path}: each codec needs a name")
        i = next((i for i, x in enumerate(codecs) if isinstance(x, dict) and x.get("name") == c["name"]), None)
        if i is None:
            codecs.append(c)
        else:
            codecs[i] = {**codecs[i], **c}
    b = {k: v for k, v in b.items() if k not in ("name", "out")}
    return {**b, **d, "codecs": codecs}


def load_config(path: str | Path, out: str | Path | None = None) -> Config:
    """Read a YAML run declaration (see benchmarks/configs/quick.yaml) with clear errors."""
    path = Path(path)
    d = read_yaml(path)
    if not isinstance(d, dict) or not d.get("datasets") or not d.get("codecs"):
        raise VqpError(f"{path}: needs 'datasets' and 'codecs' lists")
    unknown = set(d) - {"name", "out", "datasets", "codecs", "grid", "model", "roi_conf", "region_conf", "map_conf",
                        "threads"}
    if unknown:
        raise VqpError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    grid = d.get("grid", {})
    codecs = [Codec.from_config(c, grid) for c in d["codecs"]]
    names = {c.name for c in codecs}
    if len(names) != len(codecs):
        raise VqpError(f"{path}: codec names must be unique")
    by = {c.name: c for c in codecs}
    for c in codecs:
        for ref in (*c.anchors, *([c.equal_bytes] if c.equal_bytes else [])):
            if ref not in names:
                raise VqpError(f"codec {c.name}: refers to unknown codec {ref!r}")
        base = by.get(c.equal_bytes)
        if base and (not c.vqp or base.vqp or base.encoder != c.encoder or base.grid != c.grid
                     or (c.kind == "video" and base.options != c.options)):
            raise VqpError(f"codec {c.name}: equal_bytes needs a vqp codec and a plain codec {c.equal_bytes!r} "
                           "with the same encoder, grid (and options for clips)")
    for ds in d["datasets"]:
        if ds.get("kind") not in LOADERS:
            raise VqpError(f"dataset {ds}: kind must be one of {', '.join(LOADERS)}")
        if "corrupt" in ds:
            check_corrupt(ds)
    name = d.get("name", path.stem)
    return Config(name, Path(out or d.get("out") or ROOT.parent / "out" / "bench" / name), d["datasets"], codecs,
                  d.get("model"), d.get("roi_conf", ROI_CONF), d.get("region_conf", 0.25), d.get("map_conf", 0.001),
                  d.get("threads", 2))


LOADERS = {
    "kodak": lambda s: datasets.kodak(s.get("limit")),
    "coco": lambda s: datasets.coco(s.get("limit"), s.get("scale", 2)),
    "yolo": lambda s: datasets.yolo(Path(s["images"]), Path(s["labels"]), s.get("limit"), s.get("scale", 1)),
    "folder": lambda s: datasets.folder(Path(s["path"]), s.get("limit"), s.get("scale", 1)),
    "clips": lambda s: [p for p in datasets.clips() if not s.get("only") or p.stem in s["only"]][:s.get("limit")],
}


def check_corrupt(spec: dict) -> None:
    """A clips dataset's ``corrupt: {name, severity, seed, vary}``: the frames every codec is given are
    degraded by vqp.repair.corruptions, while the reference and the object regions stay the clean clip.
    Each point also gets every metric against the degraded input (``psnr_obj_det_input``, ...): how well the
    codec kept what it was given, where a detector that misses objects lets them go as background."""
    from vqp.repair.corruptions import check

    c = spec["corrupt"]
    if spec["kind"] != "clips":
        raise VqpError(f"dataset {spec.get('name', spec['kind'])}: 'corrupt' applies to clips only")
    if not isinstance(c, dict) or "name" not in c:
        raise VqpError(f"dataset {spec.get('name', 'clips')}: corrupt needs a mapping with a 'name'")
    unknown = set(c) - {"name", "severity", "seed", "vary"}
    if unknown:
        raise VqpError(f"dataset {spec.get('name', 'clips')}: corrupt has unknown keys {', '.join(sorted(unknown))}")
    check([c["name"]], [c.get("severity", 3)])


def _digest(spec: dict) -> str:
    """Dataset settings that change an item's pixels (not which items are chosen: limit, only)."""
    spec = {k: v for k, v in spec.items() if k not in ("limit", "only")}
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Cache:
    """Finished points, one JSON object per line, keyed by ``key``."""

    def __init__(self, path: Path):
        self.path = path
        self.points: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                    r = json.loads(line)
                    self.points[r["key"]] = r

    def __contains__(self, key):
        return key in self.points

    def get(self, key):
        return self.points.get(key)

    def add(self, rec: dict) -> None:
        self.points[rec["key"]] = rec
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def _codec_order(codecs: list[Codec]) -> list[Codec]:
    """Plain codecs before the vqp codecs that take their byte budget from them."""
    return sorted(codecs, key=lambda c: c.equal_bytes is not None)


def _boxes(d: Detections, conf: float) -> Detections:
    return Detections([b for b in d.boxes if b.conf >= conf], d.height, d.width)


def _scores(ref: np.ndarray, out: np.ndarray, gt: list, det: Detections) -> dict:
    """Full-frame, object and background scores; objects from ground truth (_gt) and the detector (_det)."""
    res = {}
    for tag, boxes in (("gt", gt), ("det", [(b.x1, b.y1, b.x2, b.y2) for b in det.boxes])):
        if tag == "gt" and not gt:
            continue
        s = region_scores(ref, out, boxes)
        res.update(psnr_full=s["psnr_full"], msssim_full=s["msssim_full"])
        res.update({f"{k}_{tag}": s[k] for k in ("psnr_obj", "msssim_obj", "psnr_bg", "msssim_bg")})
    return res


def _dets(d: Detections) -> list:
    return [[round(b.x1, 2), round(b.y1, 2), round(b.x2, 2), round(b.y2, 2), round(b.conf, 4), b.cls] for b in d.boxes]


class Runner:
    def __init__(self, cfg: Config, progress: bool = True):
        from tqdm import tqdm

        from vqp.detect import load_detector

        self.cfg = cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(max(1, min(2, cfg.threads)))
        self.cache = Cache(cfg.out / "cache.jsonl")
        self.detector = load_detector(cfg.model, conf=cfg.map_conf)
        self._roi_detector = None
        self._video_detectors: dict = {}  # model -> loaded detector
        self._steer_detectors: dict = {}  # an image codec's detector settings -> loaded detector
        self.tag = f"roi{cfg.roi_conf:g}/region{cfg.region_conf:g}"  # in every key: these change the results
        self.gt: dict[str, dict] = {}     # group -> item -> (boxes, classes, h, w)
        self.records: list[dict] = []
        self.tqdm = tqdm
        self.progress = progress

    @property
    def roi_detector(self):
        """The detector on the original frames (``roi_conf``, full size): the measured object regions."""
        if self._roi_detector is None:
            from vqp.detect import load_detector

            self._roi_detector = load_detector(self.cfg.model, conf=self.cfg.roi_conf)
        return self._roi_detector

    def video_detector(self, model: str | None = None):
        """A detector (the codec's ``model``, else the config's) as `vqp encode` runs it by default (its input
        size, OpenVINO on the CPU), loaded and run once before any clip, as in a service or a batch: encode
        times then hold no start-up cost."""
        model = model or self.cfg.model
        if model not in self._video_detectors:
            from vqp.detect import load_detector
            from vqp.video import DETECT_SIZE

            d = load_detector(model, conf=self.cfg.roi_conf, imgsz=DETECT_SIZE, fast=True)
            d([np.zeros((DETECT_SIZE, DETECT_SIZE, 3), np.uint8)])  # warm: wall times are per clip
            self._video_detectors[model] = d
        return self._video_detectors[model]

    def steer(self, c: Codec, s: datasets.Sample, default: Detections) -> tuple[Detections, float | None]:
        """(boxes that steer image codec ``c``, seconds its own detector took): the shared detection
        unless the codec sets ``detector`` (input size, test-time augmentation, threshold, or the
        ground truth as an oracle)."""
        if not c.detector:
            return default, None
        if c.detector.get("oracle"):
            names = self.detector.names
            return Detections([Box(*b, 1.0, k, names.get(k, str(k))) for b, k in zip(s.boxes, s.classes)],
                              default.height, default.width), None
        rgb = s.rgb
        key = tuple(sorted(c.detector.items()))
        if key not in self._steer_detectors:
            from vqp.detect import load_detector

            opts = {"conf": self.cfg.roi_conf, **c.detector}
            d = load_detector(self.cfg.model, **opts)
            d([rgb])  # warm-up: times are per image
            self._steer_detectors[key] = d
        t = time.perf_counter()
        dets = self._steer_detectors[key]([rgb])[0]
        return dets, time.perf_counter() - t

    def run(self) -> list[dict]:
        cfg = self.cfg
        loaded = [(spec, LOADERS[spec["kind"]](spec)) for spec in cfg.datasets]
        total = 0
        for spec, items in loaded:
            kind = "video" if spec["kind"] == "clips" else "image"
            total += len(items) * sum(len(c.grid) for c in cfg.codecs if c.kind == kind)
            total += len(items) if kind == "image" else 0
        with self.tqdm(total=total, unit="pt", disable=not self.progress, dynamic_ncols=True) as bar:
            for spec, items in loaded:
                if not items:
                    raise VqpError(f"dataset {spec.get('name', spec['kind'])}: no inputs found")
                if spec["kind"] == "clips":
                    for clip in items:
                        self._clip(spec, clip, bar)
                else:
                    for s in items:
                        self._image(spec, s, bar)
        return self.records

    # -- images ---------------------------------------------------------------------------------
    def _image(self, spec: dict, s: datasets.Sample, bar) -> None:
        cfg, group = self.cfg, spec.get("name", spec["kind"])
        dkey = _digest(spec)
        h, w = s.rgb.shape[:2]
        labelled = bool(s.boxes) or spec["kind"] in ("coco", "yolo")
        if labelled:
            self.gt.setdefault(group, {})[s.name] = (s.boxes, s.classes, h, w)
        det_all = None

        def detect(rgb):
            return self.detector([rgb])[0]

        key = f"{group}|{dkey}|{s.name}|original"
        if key not in self.cache:
            det_all = detect(s.rgb)
            self.cache.add({"key": key, "group": group, "item": s.name, "codec": "original", "value": 0,
                            "pixels": h * w, "dets": _dets(det_all)})
        self.records.append(self.cache.get(key))
        bar.update()
        roi = None
        for c in _codec_order([c for c in cfg.codecs if c.kind == "image"]):
            for v in c.grid:
                key = f"{group}|{dkey}|{s.name}|{c.name}|{c.key()}|{v}|{self.tag}"
                if key not in self.cache:
                    if roi is None:
                        det_all = det_all or detect(s.rgb)
                        roi, region = _boxes(det_all, cfg.roi_conf), _boxes(det_all, cfg.region_conf)
                    budget = None
                    if c.equal_bytes:
                        base = next(x for x in cfg.codecs if x.name == c.equal_bytes)
                        budget = self.cache.get(f"{group}|{dkey}|{s.name}|{base.name}|{base.key()}|{v}|{self.tag}")["bytes"]
                    steer, took = self.steer(c, s, roi)
                    data, q = encode_image(c, s.rgb, v, steer, budget)
                    out = decode_image(data)
                    rec = {"key": key, "group": group, "item": s.name, "codec": c.name, "value": v, "quality": q,
                           "bytes": len(data), "pixels": h * w, "bpp": len(data) * 8 / (h * w),
                           "vqp_src": VQP_SRC, **_scores(s.rgb, out, s.boxes, region)}
                    if took is not None:
                        rec["detect_seconds"] = took
                    if labelled:
                        rec["dets"] = _dets(detect(out))
                    self.cache.add(rec)
                self.records.append(self.cache.get(key))
                bar.update()

    # -- clips ----------------------------------------------------------------------------------
    def _clip(self, spec: dict, clip: Path, bar) -> None:
        cfg = self.cfg
        group = f"{spec.get('name', 'clips')}/{clip.stem}"
        dkey = _digest(spec)
        every = int(spec.get("every", 5))
        todo = [(c, v, f"{group}|{dkey}|{clip.stem}|{c.name}|{c.key()}|{v}|{self.tag}")
                for c in cfg.codecs if c.kind == "video" for v in c.grid]
        missing = [t for t in todo if t[2] not in self.cache]
        if missing:
            work = cfg.out / "work"
            work.mkdir(exist_ok=True)
            start = int(spec.get("start", {}).get(clip.stem, 0))
            clean = {k: v for k, v in spec.items() if k not in ("corrupt", "name")}  # degraded sets share it
            src = datasets.excerpt(clip, work / f"{clip.stem}-{_digest(clean)}.mkv", spec.get("frames"), start)
            ref, fps = read_frames(src, every)
            regions = [_boxes(d, cfg.region_conf) for d in self.roi_detector(ref)]  # detector on the originals
            given = None  # what the encoder is given, where that is not the reference
            if "corrupt" in spec:  # the codecs get degraded frames; ref and regions stay the clean ones
                bad = spec["corrupt"]
                src = datasets.degrade_clip(src, work / f"{clip.stem}-{dkey}-degraded.mkv", bad["name"],
                                            int(bad.get("severity", 3)), int(bad.get("seed", 0)), bool(bad.get("vary")))
                given, _ = read_frames(src, every)
            for c, v, key in missing:
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    dst = Path(tmp) / ("out.avi" if c.encoder == "mjpeg" else "out.mp4")
                    st = encode_clip(c, v, src, dst, self.video_detector(c.model))
                    n, size = st.frames, st.bytes  # video stream bytes: the container's overhead is not the codec's
                    seconds = st.seconds
                    out, _ = read_frames(dst, every)
                if len(out) != len(ref):
                    raise VqpError(f"{c.name} on {clip.name}: {len(out)} sampled frames decoded, expected {len(ref)}")
                h, w = ref[0].shape[:2]
                per = [_scores(r, o, [], d) for r, o, d in zip(ref, out, regions)]
                if given:  # also against the degraded input: on noise or low light the corruption, not the
                    # codec, sets most of the distance to the clean clip, and that curve can fall with the rate
                    per = [{**p, **{f"{k}_input": v for k, v in _scores(g, o, [], d).items()}}
                           for p, g, o, d in zip(per, given, out, regions)]
                rec = {"key": key, "group": group, "item": clip.stem, "codec": c.name, "value": v,
                       "bytes": size, "frames": n, "pixels": h * w, "bpp": size * 8 / (n * h * w),
                       "kbps": size * 8 / (n / fps) / 1000, "seconds": seconds, "fps": n / seconds,
                       "vqp_src": VQP_SRC,
                       **{k: float(np.nanmean([p[k] for p in per])) for k in per[0]}}
                self.cache.add(rec)
                bar.update()
        for _, _, key in todo:
            self.records.append(self.cache.get(key))
        bar.update(len(todo) - len(missing))


# -- aggregation ------------------------------------------------------------------------------
def _nanmean(xs) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else None


def coco_map(gt: dict, dets: dict) -> tuple[float, float]:
    """(mAP50, mAP50-95): vqp.metrics.detection_map on ``gt`` item -> (boxes, classes, h, w) and
    ``dets`` item -> [[x1, y1, x2, y2, conf, cls], ...]."""
    r = detection_map(gt, dets)
    return r["map50"], r["map"]


def summarize(records: list[dict], gt: dict) -> list[dict]:
    """One row per (group, codec, grid value): means over items, plus mAP on labelled groups."""
    rows, groups = [], {}
    for r in records:
        groups.setdefault((r["group"], r["codec"], r["value"]), []).append(r)
    for (group, codec, value), rs in groups.items():
        row = {"group": group, "codec": codec, "value": value, "n": len(rs)}
        for k in ("bytes", "bpp", "kbps", "quality", "seconds", "fps", "detect_seconds"):
            if k in rs[0]:
                row[k] = _nanmean([r.get(k) for r in rs])
        for m in METRICS:
            for k in (f"{m}{region}{ref}" for ref in ("", "_input") for region in ("", "_gt", "_det")):
                if any(k in r for r in rs):
                    row[k] = _nanmean([r.get(k) for r in rs])
        if group in gt and "dets" in rs[0]:
            row["map50"], row["map"] = coco_map(gt[group], {r["item"]: r["dets"] for r in rs})
        rows.append(row)
    return rows


def bd_rates(rows: list[dict], codecs: list[Codec]) -> list[dict]:
    """BD-rate (%) of every metric of each codec against each of its anchors, per group (bjontegaard, pchip)."""
    out = []
    curves: dict = {}
    for r in rows:
        curves.setdefault((r["group"], r["codec"]), []).append(r)
    metrics = sorted({k for r in rows for k in r if k.split("_")[0] in ("psnr", "msssim")} | {"map50", "map"})
    for c in codecs:
        for anchor in c.anchors:
            for (group, name), test in curves.items():
                base = curves.get((group, anchor))
                if name != c.name or not base:
                    continue
                rate = "kbps" if "kbps" in test[0] else "bpp"
                row = {"group": group, "codec": c.name, "anchor": anchor}
                times = {p["value"]: p["seconds"] for p in base if p.get("seconds")}
                pairs = [(p["seconds"], times[p["value"]]) for p in test if p.get("seconds") and p["value"] in times]
                if pairs:  # wall time against the anchor's at the same grid points (encode + detection)
                    row["time_ratio"] = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
                for m in metrics:
                    t = sorted((p[rate], p[m]) for p in test if p.get(m) is not None)
                    a = sorted((p[rate], p[m]) for p in base if p.get(m) is not None)
                    row[m] = bd_rate_safe(a, t)
                out.append(row)
    # clips: one group per clip, plus per metric the mean over the clips of a dataset that have a value
    per_set: dict = {}
    for r in out:
        if "/" in r["group"]:
            per_set.setdefault((r["group"].split("/")[0], r["codec"], r["anchor"]), []).append(r)
    for (ds, codec, anchor), rs in per_set.items():
        out.append({"group": f"{ds} (mean)", "codec": codec, "anchor": anchor,
                    **{m: _nanmean([r.get(m) for r in rs]) for m in [*metrics, "time_ratio"]}})
    return out


def envelope(points: list[tuple]) -> list[tuple]:
    """The Pareto front of (rate, metric) points: a point beaten by a cheaper one is dropped, so the
    metric rises with the rate, as BD-rate's metric-to-rate interpolation needs."""
    out = []
    for r, m in sorted(p for p in points if math.isfinite(p[1])):
        if not out or m > out[-1][1]:
            out.append((r, m))
    return out


def bd_rate_safe(anchor: list[tuple], test: list[tuple]) -> float | None:
    """BD-rate in % of ``test`` against ``anchor`` (bjontegaard, pchip) on each curve's Pareto front;
    None where the curves cannot be compared (fewer than 3 points on a front, no overlap)."""
    import warnings

    import bjontegaard as bd

    anchor, test = envelope(anchor), envelope(test)
    if len(anchor) < 3 or len(test) < 3:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = bd.bd_rate([p[0] for p in anchor], [p[1] for p in anchor], [p[0] for p in test],
                           [p[1] for p in test], method="pchip", require_matching_points=False)
    except (ValueError, ZeroDivisionError):
        return None
    return float(v) if math.isfinite(v) else None
