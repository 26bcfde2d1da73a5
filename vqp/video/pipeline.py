"""The video pipeline: decode -> detect (adaptive interval) -> track -> ROI regions and/or
requantized planes -> encode.

Two ways to spend the bits where the objects are, chosen per codec (vqp.codecs) or by ``method``:

- ``roi``: the tracked boxes become per-frame quantizer offsets that the encoder's own rate
  control applies (vqp.video.roi_side_data). The frames themselves are not touched.
- ``pixel``: the background's 8x8 DCT blocks are requantized in front of the encoder on its own
  grid, and still background macroblocks are held bit-identical (vqp.video.hold). The only way for
  encoders without a per-block quantizer (Motion-JPEG, MPEG-4 part 2).
- ``both``: the two together.

The detector runs on one frame in every ``interval``; frames in between get the boxes tracked
between the two runs around them (interpolated, so nothing lags). The interval halves while the
tracks change course or new objects appear, and doubles while the motion stays predictable.
"""
from __future__ import annotations

import logging
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import av
import numpy as np
import torch

from .. import codecs
from ..errors import VqpError
from ..quant import QuantParams, annex_k_tables, quantize_planes
from ..roi import roi_map
from ..track import Tracker, between
from ..types import Box, Detections
from .hold import Holder
from .io import Colour, conform, depth, planes
from .options import VideoOptions
from .roi_side_data import Region, plan

log = logging.getLogger("vqp")


@dataclass
class Frame:
    """One frame on its way through the pipeline."""

    pts: int
    video: av.VideoFrame                      # decoded, in the encoder's format and size
    boxes: list[Box] = field(default_factory=list)        # this frame's tracked boxes
    cover: list[Box] = field(default_factory=list)        # each track's extent over the frame's interval
    regions: list[Region] = field(default_factory=list)  # ROI side data for the encoder (planned from cover)
    planes: list[np.ndarray] | None = None    # pixel method: planes to encode instead of ``video``


class Interval:
    """The detector's frame interval, adapted to how well the boxes between runs can be predicted.

    Frames between two runs get boxes interpolated linearly between them, which is exact for
    objects moving at constant velocity, however fast. What it misses is a change of course or
    speed, so after each run the interval is judged by how far each track's centre lies from where
    its velocity over the two previous runs would have put it: more than ``tol`` pixels (about a
    macroblock and a half) halves the interval, under half of it doubles it. Detector jitter alone
    stays under that; an object that newly appears is shown from the previous run on where it was
    first seen.
    """

    def __init__(self, start: int, lo: int, hi: int, tol: float = 24.0):
        self.lo, self.hi = min(lo, start), max(hi, start)
        self.n, self.tol = start, tol
        self.velocity: dict[int, tuple[float, float]] = {}

    def update(self, a: dict[int, Box], b: dict[int, Box], gap: int) -> int:
        """Runs ``a`` and ``b`` (track id -> box) ``gap`` frames apart; returns the next interval."""
        if self.lo == self.hi:
            return self.n
        error, velocity = 0.0, {}
        for k in a.keys() & b.keys():
            (ax, ay), (bx, by) = _centre(a[k]), _centre(b[k])
            v = ((bx - ax) / gap, (by - ay) / gap)
            if k in self.velocity:
                u = self.velocity[k]
                error = max(error, math.hypot(bx - ax - u[0] * gap, by - ay - u[1] * gap))
            velocity[k] = v
        self.velocity = velocity
        if error > self.tol:
            self.n = max(self.lo, self.n // 2)
        elif error < self.tol / 2 and b:
            self.n = min(self.hi, self.n * 2)
        return self.n


def _union(a: Box, b: Box) -> Box:
    """The extent of one track between two runs: both boxes and everything in between."""
    return Box(min(a.x1, b.x1), min(a.y1, b.y1), max(a.x2, b.x2), max(a.y2, b.y2), max(a.conf, b.conf), b.cls, b.name)


def _centre(b: Box) -> tuple[float, float]:
    return (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2


class Pipeline:
    """Decoded frames in, Frames (boxes, regions, planes) out, in display order.

    ``cache`` gives every frame's (boxes, cover) from an earlier pass (two-pass, match-crf, whose
    ``boxes`` attribute it is): no detector then, and the very same regions.

    ROI regions are planned once per group of ``plan_every`` frames, from each track's extent over
    the group (``cover``: the union of its first and last box, exact under the linear motion the
    boxes are interpolated with), so the addroi graph is rebuilt at most once per group.
    """

    def __init__(self, frames: Iterator[av.VideoFrame], name: str, o: VideoOptions, detector,
                 cache: list[tuple[list[Box], list[Box]]] | None = None, fmt: str | None = None):
        self.o, self.detector, self.cache = o, detector, cache
        self.codec = o.spec
        self.boxes: list[tuple[list[Box], list[Box]]] = []  # every frame's (boxes, cover), for later passes
        self.with_detections = 0
        self.runs = 0
        self.moving = 0  # pixel method: frames passed through because the camera moved
        self._frames = frames
        self.first = next(self._frames, None)
        if self.first is None:
            raise VqpError(f"{name}: no video frames could be decoded")
        f = self.first
        src = f.format.name
        is444 = bool(re.fullmatch(r"(yuvj?444p|gbrp)(\d+le)?|rgb24|bgr24", src)) and self.codec.fmt444 is not None
        self.fmt = fmt or self.codec.pix_fmt(is444, depth(src))
        self.depth = depth(self.fmt)  # the quantizer and the ROI offsets work at the encoder's depth
        self.colour = Colour.of(f) if fmt else Colour.of(f).encoded(src, self.codec)  # fmt given: kept as it is
        self.notes: list[str] = []  # what the encoder cannot keep of the source, for one warning
        if depth(src) > self.depth:
            keep = codecs.deep_codecs()
            self.notes.append(f"{o.codec} codes {self.depth} bits per sample here: the {depth(src)}-bit source is "
                              f"reduced ({', '.join(keep) or 'no encoder in this build'} would keep it)")
        even = 1 if is444 else 2
        self.width, self.height = f.width - f.width % even, f.height - f.height % even
        if (self.width, self.height) != (f.width, f.height):
            log.warning("vqp: %dx%d cropped to %dx%d for 4:2:0 chroma", f.width, f.height, self.width, self.height)
        if self.width < 16 or self.height < 16:
            raise VqpError(f"{name}: frame size {f.width}x{f.height} is too small (at least 16x16)")
        self.rotation = int(round(f.rotation or 0))
        self.tracker = Tracker(o.track)
        self.interval = Interval(o.detect_every, o.detect_min, o.detect_max)
        self.device = torch.device(o.device or getattr(detector, "device", None) or "cpu")
        if o.uses_pixels:
            self.tables = self._tables()
            self.params = QuantParams(o.strength, o.keep, min(o.strength, o.dc_strength))
            levels = 1 << (self.depth - 8)  # --hold is in 8-bit levels
            self.holder = Holder(o.hold * levels if self.codec.inter else 0.0, self.codec.grid)

    def _tables(self) -> torch.Tensor:
        if self.o.codec == "mjpeg":
            from .ratecontrol import mjpeg_tables

            return mjpeg_tables(self.o, self.fmt)
        return annex_k_tables(self.o.quality)

    # -- frames and boxes -----------------------------------------------------------------------
    def _decoded(self) -> Iterator[av.VideoFrame]:
        n = 0
        f = self.first
        while f is not None and n != self.o.max_frames:
            yield conform(f, self.fmt, self.width, self.height, self.colour)
            n += 1
            f = next(self._frames, None)

    def __iter__(self) -> Iterator[Frame]:
        if not self.o.preprocess or self.cache is not None:
            chunk: list[Frame] = []
            for f in self._decoded():
                boxes, cover = self.cache[len(self.boxes) + len(chunk)] if self.cache else ([], [])
                chunk.append(Frame(f.pts, f, list(boxes), list(cover)))
                if len(chunk) == 32:
                    yield from self._finish(chunk)
                    chunk = []
            yield from self._finish(chunk)
            return
        from concurrent.futures import ThreadPoolExecutor

        # The detector runs in a worker thread, one interval ahead: while the encoder codes the
        # frames up to run k-1, run k is computed (both release the GIL), so on a CPU detection
        # mostly fills the cores the encoder leaves idle. Tracking stays in order on this thread.
        waiting: deque = deque()    # (frames since the previous run, the run's frame, its detections)
        mids: list[Frame] = []
        last: dict[int, Box] | None = None
        next_key = 0
        with ThreadPoolExecutor(1, thread_name_prefix="vqp-detect") as pool:
            for i, f in enumerate(self._decoded()):
                fr = Frame(f.pts, f)
                if i < next_key:
                    mids.append(fr)
                    continue
                waiting.append((mids, fr, pool.submit(self.detector, [f.to_ndarray(format="rgb24")])))
                self.runs += 1
                mids = []
                while len(waiting) > 1:
                    last = yield from self._resolve(waiting.popleft(), last)
                next_key = i + self.interval.n
            while waiting:
                last = yield from self._resolve(waiting.popleft(), last)
        for p in mids:  # the stream ended between runs: hold the last run's boxes
            p.boxes = p.cover = list((last or {}).values())
        yield from self._finish(mids)

    def _resolve(self, entry, last: dict[int, Box] | None):
        """Track one finished run and emit the frames up to it; returns its tracks."""
        mids, key, future = entry
        shown = self.tracker.update(future.result()[0])
        key.boxes = list(shown.values())
        layout = [key.boxes]  # every frame's boxes, one track at the same position in each list
        if last is not None:
            layout = between(last, shown, len(mids))
            for p, b in zip(mids, layout):
                p.boxes = b
            layout.append([shown[k] for k in last if k in shown] + [last[k] for k in last if k not in shown]
                          + [shown[k] for k in shown if k not in last])
            self.interval.update(last, shown, len(mids) + 1)
        frames = [*mids, key]
        step = max(1, self.o.plan_every)
        for i in range(0, len(frames), step):  # one region plan per group: each track's extent over it
            a, b = layout[i], layout[min(i + step, len(frames)) - 1]
            cover = [_union(x, y) for x, y in zip(a, b)]
            for p in frames[i:i + step]:
                p.cover = cover
        yield from self._finish(frames)
        return shown

    def _finish(self, frames: list[Frame]) -> Iterator[Frame]:
        if not frames:
            return
        o = self.o
        self.boxes += [(fr.boxes, fr.cover) for fr in frames]
        self.with_detections += sum(any(b.conf >= o.report_conf for b in fr.boxes) for fr in frames)
        if o.uses_roi:
            planned: dict[tuple, list[Region]] = {}
            scale = self.codec.roi_scale(self.depth)
            for fr in frames:
                key = tuple(fr.cover)
                if key not in planned:
                    planned[key] = plan(fr.cover, self.width, self.height, grid=self.codec.grid,
                                        obj=o.roi_object * scale, bg=o.roi_background * scale, config=o.roi)
                fr.regions = planned[key]
        if o.uses_pixels:
            if any(fr.boxes for fr in frames):
                self._quantize(frames)
            else:
                self.holder.reset()
        yield from frames

    def _quantize(self, frames: list[Frame]) -> None:
        o, grid = self.o, self.codec.grid
        dets = [Detections(fr.boxes, self.height, self.width) for fr in frames]
        imp = roi_map(dets, block=grid, config=o.importance, device=self.device).importance
        src = [planes(fr.video, self.fmt, self.width, self.height) for fr in frames]
        # 10-bit samples as int16 (exact: they fit), a type torch computes with on every device
        data = [torch.from_numpy(np.stack([s[k] for s in src]).view(np.int16 if self.depth > 8 else np.uint8))
                .to(self.device) for k in range(len(src[0]))]
        active = imp.flatten(1).amax(1) > 0
        hold, moving = self.holder.masks(data[0], imp)
        todo = (imp < 1) & (active & ~moving)[:, None, None] & ~hold
        q = quantize_planes(data, imp, self.tables, self.params, grid, todo, depth=self.depth)
        use = (active & ~moving).tolist()  # the one host sync per chunk
        self.moving += int(moving.sum())
        for fr, out, a in zip(frames, self.holder.apply(q, hold), use):
            if a:
                fr.planes = [p.cpu().numpy() for p in out]
