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
between the two runs around them (interpolated, so nothing lags). The interval halves while
tracked objects move by a large part of their size within it and doubles while they stay put.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator

import av
import numpy as np
import torch

from ..errors import VqpError
from ..quant import QuantParams, annex_k_tables, quantize_planes
from ..roi import roi_map
from ..track import Tracker, between
from ..types import Box, Detections
from .hold import Holder
from .io import planes
from .options import VideoOptions
from .roi_side_data import Region, plan

log = logging.getLogger("vqp")


@dataclass
class Frame:
    """One frame on its way through the pipeline."""

    pts: int
    video: av.VideoFrame                      # decoded, in the encoder's format and size
    boxes: list[Box] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)  # ROI side data for the encoder
    planes: list[np.ndarray] | None = None    # pixel method: planes to encode instead of ``video``


class Interval:
    """The detector's frame interval, adapted to how fast the tracked objects move.

    Motion is measured per run as the largest centre shift of a track that both runs saw, in
    units of the object's size per frame. A move of more than ``fast`` of its size within one
    interval halves the interval; less than ``slow`` doubles it."""

    def __init__(self, start: int, lo: int, hi: int, fast: float = 0.5, slow: float = 0.1):
        self.lo, self.hi = min(lo, start), max(hi, start)
        self.n, self.fast, self.slow = start, fast, slow

    def update(self, a: dict[int, Box], b: dict[int, Box], gap: int) -> int:
        if self.lo == self.hi:
            return self.n
        motion = 0.0
        for k in a.keys() & b.keys():
            p, q = a[k], b[k]
            size = math.sqrt(max(1.0, (q.x2 - q.x1) * (q.y2 - q.y1)))
            shift = math.hypot((q.x1 + q.x2 - p.x1 - p.x2) / 2, (q.y1 + q.y2 - p.y1 - p.y2) / 2)
            motion = max(motion, shift / size / max(gap, 1))
        if motion * self.n > self.fast:
            self.n = max(self.lo, self.n // 2)
        elif motion * self.n < self.slow and b:
            self.n = min(self.hi, self.n * 2)
        return self.n


class Pipeline:
    """Decoded frames in, Frames (boxes, regions, planes) out, in display order.

    ``cache`` gives every frame's boxes from an earlier pass (two-pass, match-crf): no detector then.
    """

    def __init__(self, frames: Iterator[av.VideoFrame], name: str, o: VideoOptions, detector,
                 cache: list[list[Box]] | None = None, fmt: str | None = None):
        self.o, self.detector, self.cache = o, detector, cache
        self.codec = o.spec
        self.boxes: list[list[Box]] = []  # every frame's boxes, for reuse by later passes
        self.with_detections = 0
        self.runs = 0
        self.moving = 0  # pixel method: frames passed through because the camera moved
        self._frames = frames
        self.first = next(self._frames, None)
        if self.first is None:
            raise VqpError(f"{name}: no video frames could be decoded")
        f = self.first
        is444 = f.format.name in ("yuv444p", "yuvj444p", "gbrp", "rgb24", "bgr24") and self.codec.fmt444
        self.fmt = fmt or (self.codec.fmt444 if is444 else self.codec.fmt420)
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
            self.params = QuantParams(o.strength, o.keep, o.dc_strength)
            self.holder = Holder(o.hold if self.codec.inter else 0.0, self.codec.grid)

    def _tables(self) -> torch.Tensor:
        if self.o.codec == "mjpeg":
            from .ratecontrol import mjpeg_tables

            return mjpeg_tables(self.o, self.fmt)
        return annex_k_tables(self.o.quality)

    # -- frames and boxes -----------------------------------------------------------------------
    def _decoded(self) -> Iterator[av.VideoFrame]:
        from .io import conform

        n = 0
        f = self.first
        while f is not None and n != self.o.max_frames:
            yield conform(f, self.fmt, self.width, self.height)
            n += 1
            f = next(self._frames, None)

    def __iter__(self) -> Iterator[Frame]:
        if not self.o.preprocess or self.cache is not None:
            chunk: list[Frame] = []
            for f in self._decoded():
                chunk.append(Frame(f.pts, f, list(self.cache[len(self.boxes) + len(chunk)]) if self.cache else []))
                if len(chunk) == 32:
                    yield from self._finish(chunk)
                    chunk = []
            yield from self._finish(chunk)
            return
        pending: list[Frame] = []   # frames since the last detector run
        last: dict[int, Box] | None = None
        next_key = 0
        for i, f in enumerate(self._decoded()):
            fr = Frame(f.pts, f)
            if i < next_key:
                pending.append(fr)
                continue
            shown = self.tracker.update(self.detector([f.to_ndarray(format="rgb24")])[0])
            self.runs += 1
            if last is not None:  # pending: the last run's frame, then the frames up to this one
                mids = pending[1:]
                for p, b in zip(mids, between(last, shown, len(mids))):
                    p.boxes = b
                step = self.interval.update(last, shown, len(pending))
            else:
                step = self.interval.n
            fr.boxes = list(shown.values())
            yield from self._finish(pending)
            pending, last, next_key = [fr], shown, i + step
        for p in pending[1:]:  # the stream ended between runs: hold the last run's boxes
            p.boxes = list((last or {}).values())
        yield from self._finish(pending)

    def _finish(self, frames: list[Frame]) -> Iterator[Frame]:
        if not frames:
            return
        o = self.o
        self.boxes += [fr.boxes for fr in frames]
        self.with_detections += sum(1 for fr in frames if fr.boxes)
        if o.uses_roi:
            for fr in frames:
                fr.regions = plan(fr.boxes, self.width, self.height, grid=self.codec.grid, obj=o.roi_object,
                                  bg=o.roi_background, config=o.roi)
        if o.uses_pixels:
            if any(fr.boxes for fr in frames):
                self._quantize(frames)
            else:
                self.holder.reset()
        yield from frames

    def _quantize(self, frames: list[Frame]) -> None:
        o, grid = self.o, self.codec.grid
        dets = [Detections(fr.boxes, self.height, self.width) for fr in frames]
        imp = roi_map(dets, block=grid, config=o.roi, device=self.device).importance
        src = [planes(fr.video, self.fmt, self.width, self.height) for fr in frames]
        data = [torch.from_numpy(np.stack([s[k] for s in src])).to(self.device) for k in range(len(src[0]))]
        active = imp.flatten(1).amax(1) > 0
        hold, moving = self.holder.masks(data[0], imp)
        todo = (imp < 1) & (active & ~moving)[:, None, None] & ~hold
        q = quantize_planes(data, imp, self.tables, self.params, grid, todo)
        use = (active & ~moving).tolist()  # the one host sync per chunk
        self.moving += int(moving.sum())
        for fr, out, a in zip(frames, self.holder.apply(q, hold), use):
            if a:
                fr.planes = [p.cpu().numpy() for p in out]
