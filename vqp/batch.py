"""Batches: many images and videos in one run, in this process or on Ray (``vqp.distributed``).

Planning turns files, folders and globs into work units: one per video (a stream's frames stay in
order on one worker) and a few images per unit (one remote call then carries more than a tiny
file). Outputs mirror the input tree under the output folder. ``manifest.jsonl`` there gets one
line per input as it finishes; a re-run skips every input whose last line says it was done with
the same options (a hash), from the same input file (size and mtime), and whose output is still
there. A failing input is recorded with its one-line reason and never stops the batch. When the
run ends, the temp files a killed worker (or an earlier, killed run) left beside the outputs are
removed.

Images are detected one at a time, exactly as ``vqp image`` does (Ultralytics pads a batch of
mixed sizes differently from a single image), so an output's bytes do not depend on which other
images shared its unit, on resuming, or on which runner made it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import VqpError, one_line
from .imageio import IMAGE_EXTS, discard_temps, unclash
from .jpeg import BACKGROUND_WEIGHT
from .roi import ROI_CONF, RoiConfig
from .video.options import DETECT_SIZE, VideoOptions

IMAGE, VIDEO = "image", "video"
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
MANIFEST = "manifest.jsonl"
JPEG_SUFFIXES = (".jpg", ".jpeg")
# picked up from folders and globs; a file named on the command line is tried as a video whatever its name
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".flv",
              ".wmv", ".ogv", ".3gp", ".mxf", ".y4m"}


@dataclass(frozen=True)
class DetectorSpec:
    """Which detectors a worker loads (once each, on first use): images as ``vqp image`` runs them
    and videos as ``vqp encode`` (``conf`` is the reported threshold, boxes down to ROI_CONF steer)."""

    model: str | None = None          # resolved by the driver, so every worker loads the same file
    classes: tuple[str, ...] | None = None
    conf: float = 0.25
    imgsz: int = 640
    video_imgsz: int = DETECT_SIZE
    device: str | None = None

    def load(self, kind: str):
        from .detect import load_detector

        video = kind != IMAGE
        return load_detector(self.model, classes=self.classes, conf=min(self.conf, ROI_CONF),
                             imgsz=self.video_imgsz if video else self.imgsz, device=self.device, fast=video)


@dataclass(frozen=True)
class ImageOptions:
    """``save_jpeg``'s encoding options (the defaults are ``vqp image``'s)."""

    quality: int | None = None
    match_quality: int | None = None
    target_size: int | None = None
    encoder: str = "pillow"
    background_weight: float = BACKGROUND_WEIGHT
    roi: RoiConfig = field(default_factory=RoiConfig)


@dataclass(frozen=True)
class Settings:
    image: ImageOptions = field(default_factory=ImageOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    detector: DetectorSpec = field(default_factory=DetectorSpec)

    def digest(self, kind: str) -> str:
        """Hash of what changes an output of this kind (not the device, which only changes the speed)."""
        d = self.detector
        det = dict(model=d.model, classes=d.classes, conf=d.conf,
                   imgsz=d.imgsz if kind == IMAGE else d.video_imgsz)
        opts = asdict(self.image) if kind == IMAGE else {k: v for k, v in asdict(self.video).items() if k != "device"}
        text = json.dumps({"kind": kind, "detector": det, "options": opts}, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def suffixes(self, kind: str) -> Sequence[str]:
        """Output name endings kept as they are; the first is added to any other input name."""
        return JPEG_SUFFIXES if kind == IMAGE else self.video.spec.containers.split()


@dataclass(frozen=True)
class Item:
    """One input and its output (absolute paths: Ray workers do not share the driver's folder)."""

    src: str
    dst: str
    kind: str
    size: int
    mtime: int  # ns


@dataclass(frozen=True)
class Unit:
    """What one worker call does: one video, or a few images, with the batch's settings."""

    items: tuple[Item, ...]
    settings: Settings


def record(item: Item, settings: Settings, status: str, error: str | None = None, **fields) -> dict:
    """A manifest line; ``bytes`` against ``plain_bytes`` is the saving (plain is known for images
    in the match and quality modes, and for videos with --compare)."""
    rec = dict(input=item.src, output=item.dst, kind=item.kind, status=status, bytes=None, plain_bytes=None,
               ratio=None, seconds=None, error=error, options=settings.digest(item.kind), input_size=item.size,
               input_mtime=item.mtime)
    rec.update(fields)
    if rec["bytes"] and rec["plain_bytes"]:
        rec["ratio"] = round(rec["bytes"] / rec["plain_bytes"], 4)
    return rec


class Worker:
    """Runs units: loads each detector once, on first use. A Ray actor is one of these."""

    def __init__(self):
        self.detectors: dict = {}

    def detector(self, spec: DetectorSpec, kind: str):
        if (spec, kind) not in self.detectors:
            self.detectors[spec, kind] = spec.load(kind)
        return self.detectors[spec, kind]

    def load(self, spec: DetectorSpec, kinds: Sequence[str] = (IMAGE, VIDEO)) -> None:
        """Load the detectors before the first input (a service's start, or a timed run)."""
        for kind in kinds:
            self.detector(spec, kind)

    def run(self, unit: Unit) -> list[dict]:
        return [self.one(item, unit.settings) for item in unit.items]

    def one(self, item: Item, s: Settings) -> dict:
        """Encode one input; every failure becomes a failed record, never an exception."""
        from .jpeg import save_jpeg
        from .video import encode_video

        t0 = time.perf_counter()
        where = dict(host=socket.gethostname(), pid=os.getpid())
        try:
            try:
                Path(item.dst).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise VqpError(f"cannot create folder {Path(item.dst).parent}: {e.strerror}") from None
            if item.kind == IMAGE:
                o = s.image
                r = save_jpeg(item.src, item.dst, quality=o.quality, match_quality=o.match_quality,
                              target_size=o.target_size, encoder=o.encoder, background_weight=o.background_weight,
                              roi=o.roi, conf=s.detector.conf, device=s.detector.device,
                              detector=self.detector(s.detector, IMAGE))
                out = dict(bytes=r.size, plain_bytes=r.plain_bytes, detections=len(r.detections.boxes))
            else:
                det = self.detector(s.detector, VIDEO) if s.video.preprocess else None
                st = encode_video(item.src, item.dst, s.video, detector=det)
                out = dict(bytes=st.bytes, plain_bytes=st.plain_bytes, frames=st.frames)
        except VqpError as e:
            return record(item, s, FAILED, one_line(e), seconds=round(time.perf_counter() - t0, 3), **where)
        except Exception as e:  # a bug or a library's surprise fails this input, not the batch
            return record(item, s, FAILED, f"internal error: {type(e).__name__}: {one_line(e)}",
                          seconds=round(time.perf_counter() - t0, 3), **where)
        return record(item, s, OK, seconds=round(time.perf_counter() - t0, 3), **out, **where)


class LocalRunner:
    """Runs the units one after another in this process (``vqp batch`` without ``--ray``)."""

    def __init__(self):
        self.worker = Worker()

    def run(self, units: Iterable[Unit], emit: Callable[[dict], None]) -> None:
        for unit in units:
            for item in unit.items:
                emit(self.worker.one(item, unit.settings))

    def warm(self, settings: Settings) -> None:
        self.worker.load(settings.detector)

    def close(self) -> None:
        pass


def absolute(p: str | os.PathLike) -> Path:
    """An absolute path that keeps symlinks as they are (the tree is mirrored as the user sees it)."""
    return Path(os.path.abspath(p))


def _root(arg: str) -> Path:
    """The folder an input is mirrored from: a folder itself, a file's folder, a glob's fixed part."""
    parts = Path(arg).parts
    fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), None)
    if fixed is not None:
        return absolute(Path(*parts[:fixed])) if fixed else Path.cwd()
    p = absolute(arg)
    return p if p.is_dir() else p.parent


def _walk(folder: Path, outdir: Path) -> list[Path]:
    """Images and videos under ``folder`` by extension, leaving out hidden files and the output folder."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS and outdir not in f.resolve().parents)


def _names(rels: list[Path], kinds: list[str], settings: Settings) -> list[Path]:
    """Output paths relative to the output folder, as ``vqp image`` names them: ``a.png`` -> ``a.jpg``,
    but inputs that would share an output (``a.jpg`` beside ``a.png``) keep their full name
    (``a.png.jpg``), except the one already named so (``imageio.unclash``)."""
    kept = [r.suffix.lower() in settings.suffixes(k) for r, k in zip(rels, kinds)]
    want = [r if c else r.with_suffix(settings.suffixes(k)[0]) for r, k, c in zip(rels, kinds, kept)]
    return unclash(rels, want, kept)


def gather(inputs: Sequence[str], outdir: Path, settings: Settings) -> tuple[list[Item], list[tuple[str, str]]]:
    """Inputs as items with their outputs, and (input, reason) for each that cannot be done."""
    real = outdir.resolve()  # compared with resolved files: outputs are never inputs
    found: dict[Path, None] = {}  # ordered set of resolved files
    bad: list[tuple[str, str]] = []
    for arg in inputs:
        if glob.has_magic(arg):
            hits = [Path(h) for h in sorted(glob.glob(arg, recursive=True))]
            files = [f for h in hits for f in (_walk(h, real) if h.is_dir() else [h])
                     if f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS and real not in f.resolve().parents]
            if not files:
                bad.append((arg, f"{arg}: matches no image or video"))
        elif Path(arg).is_dir():
            files = _walk(Path(arg), real)
            if not files:
                bad.append((arg, f"{arg}: no image or video files found"))
        elif Path(arg).is_file():
            files = [Path(arg)]
            if real in Path(arg).resolve().parents:
                bad.append((arg, f"{arg}: is inside the output folder {outdir}"))
                files = []
        else:
            bad.append((arg, f"{arg}: no such file or folder"))
            files = []
        found.update((absolute(f), None) for f in files)
    srcs = list(found)
    roots = [_root(a) for a in inputs if glob.has_magic(a) or Path(a).exists()]
    base = Path(os.path.commonpath(roots)) if roots else outdir
    kinds = [IMAGE if f.suffix.lower() in IMAGE_EXTS else VIDEO for f in srcs]
    names = _names([f.relative_to(base) for f in srcs], kinds, settings)
    seen: dict[str, Path] = {}
    items = []
    for src, kind, name in zip(srcs, kinds, names):
        dst = outdir / name
        if str(dst).lower() in seen:
            bad.append((str(src), f"{src}: its output {dst} is already the output of {seen[str(dst).lower()]}; "
                                  "rename one of them"))
            continue
        seen[str(dst).lower()] = src
        st = src.stat()
        items.append(Item(str(src), str(dst), kind, st.st_size, st.st_mtime_ns))
    return items, bad


def read_manifest(path: Path) -> dict[str, dict]:
    """The last line about each output (named relative to the manifest's folder); a line cut short
    by a kill is ignored."""
    last: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                last[rec["output"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return last


def is_done(item: Item, prev: dict | None, settings: Settings) -> bool:
    """Whether an earlier run already made this output from this input with these options."""
    return (prev is not None and prev.get("status") in (OK, SKIPPED) and prev.get("options") == settings.digest(item.kind)
            and prev.get("input") == item.src and prev.get("input_size") == item.size
            and prev.get("input_mtime") == item.mtime and os.path.isfile(item.dst))


class Batch:
    """A planned batch: what is done already (skipped), what cannot be done (failed), and the units to run."""

    def __init__(self, inputs: Sequence[str], outdir: str | os.PathLike, settings: Settings = Settings(),
                 images_per_unit: int = 8):
        if images_per_unit < 1:
            raise VqpError(f"images per unit must be at least 1, got {images_per_unit}")
        self.outdir = absolute(outdir)
        if self.outdir.exists() and not self.outdir.is_dir():
            raise VqpError(f"{self.outdir}: exists and is not a folder")
        self.settings = settings
        self.manifest = self.outdir / MANIFEST
        items, bad = gather(inputs, self.outdir, settings)
        self.outputs = [i.dst for i in items]
        if not items and not bad:
            raise VqpError("no inputs given")
        prev = read_manifest(self.manifest)
        done = {i for i in items if is_done(i, prev.get(self.relative(i.dst)), settings)}
        self.ready = [{**prev[self.relative(i.dst)], "status": SKIPPED, "seconds": 0.0, "error": None}
                      for i in items if i in done]
        self.ready += [dict(input=a, output=None, kind=None, status=FAILED, error=why) for a, why in bad]
        todo = [i for i in items if i not in done]
        images = [i for i in todo if i.kind == IMAGE]
        # videos first: the longest units start early, so the last worker does not finish alone
        self.units = [Unit((i,), settings) for i in todo if i.kind == VIDEO] + [
            Unit(tuple(images[k:k + images_per_unit]), settings) for k in range(0, len(images), images_per_unit)]

    def relative(self, path: str) -> str:
        """Outputs are named relative to the output folder in the manifest: the folder can be moved."""
        return os.path.relpath(path, self.outdir)

    @property
    def total(self) -> int:
        return len(self.ready) + sum(len(u.items) for u in self.units)

    def run(self, runner=None, emit: Callable[[dict], None] | None = None) -> list[dict]:
        """Run the units on ``runner`` (default: this process), appending each record to the manifest
        as it arrives; returns every record of this run."""
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
            log = self.manifest.open("a")
        except OSError as e:
            raise VqpError(f"cannot write {self.manifest}: {e.strerror}") from None
        records = []

        def add(rec: dict) -> None:
            if rec["output"] and os.path.isabs(rec["output"]):
                rec["output"] = self.relative(rec["output"])
            log.write(json.dumps(rec) + "\n")
            log.flush()
            records.append(rec)
            if emit:
                emit(rec)

        runner = runner or LocalRunner()
        with log:
            if log.tell() and self.manifest.read_bytes()[-1:] != b"\n":  # a line cut short by a kill
                log.write("\n")
            for rec in self.ready:
                add(rec)
            runner.run(self.units, add)
        discard_temps(self.outputs)  # what killed attempts (or runs) left: no one writes these outputs now
        return records
