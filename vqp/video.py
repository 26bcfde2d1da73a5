"""Video pipeline: decode (PyAV) -> detect every N frames -> track -> ROI map -> quantize YUV -> encode.

The quantizer works on the decoded YUV planes on the codec's own grid: 16x16 macroblocks for
H.264/H.265/MPEG-4 (the 8x8 DCT blocks inside a macroblock share its importance) and 8x8 JPEG
blocks for Motion-JPEG. For inter codecs a background macroblock whose source has barely changed
keeps the previous output's pixels exactly, so the encoder codes it as a skip block: temporal
noise in the background is what would otherwise eat the saving. Objects are never held.
"""
from __future__ import annotations

import heapq
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F

from .errors import VqpError
from .imageio import publish, reserve_temp
from .quant import QuantParams, requantize_blocks, annex_k_tables, dct2, idct2
from .roi import RoiConfig, roi_map
from .track import TrackConfig, Tracker, between
from .types import Box, Detections

log = logging.getLogger("vqp")
DETECT_SIZE = 320  # detector input for video: objects in motion need less detail, and it runs on the encode's time


@dataclass(frozen=True)
class Codec:
    grid: int            # ROI block: the codec's macroblock (16) or JPEG block (8)
    inter: bool          # motion-compensated: a held background block costs almost nothing
    fmt420: str
    fmt444: str | None   # pixel format kept for 4:4:4 sources (None: always 4:2:0)


CODECS = {
    "libx264": Codec(16, True, "yuv420p", "yuv444p"),
    "libx265": Codec(16, True, "yuv420p", "yuv444p"),
    "mpeg4": Codec(16, True, "yuv420p", None),
    "mjpeg": Codec(8, False, "yuvj420p", "yuvj444p"),
}


@dataclass
class VideoOptions:
    """How to encode, and how hard to quantize the background; the defaults are `vqp encode`'s."""

    codec: str = "libx264"          # libx264 | libx265 | mjpeg | mpeg4
    crf: float | None = None        # x264/x265 CRF (default 23 when no bitrate); mpeg4: fixed qscale 1..31
    bitrate: int | None = None      # bits/s; ABR, or two-pass when two_pass=True
    two_pass: bool = False
    match_crf: float | None = None  # output no larger than plain encode at this CRF, better objects
    preset: str = "medium"
    gop: int | None = None
    mjpeg_quality: int | None = None  # 1..100 JPEG-style quality for mjpeg (default 75)
    codec_options: dict[str, str] = field(default_factory=dict)  # passed to stream.options
    preprocess: bool = True         # False = plain encode through the very same path (the baseline)
    detect_every: int = 12          # run the detector on every N-th frame, track in between
    detect_batch: int = 4           # detection runs batched together
    strength: float = 3.0           # background step multiplier (see QuantParams)
    keep: int = 64                  # zigzag coefficients kept in background blocks
    dc_strength: float = 2.0
    quality: int = 50               # JPEG-table quality whose steps inter codecs' background is rounded to
    hold: float = 5.0               # RMS luma change under which a background macroblock is held (0: off)
    roi: RoiConfig = field(default_factory=lambda: RoiConfig(margin=8.0, feather=16.0))
    track: TrackConfig = field(default_factory=TrackConfig)
    measure_plain: bool = False     # also encode the plain stream (not written) to report its bitrate
    match_sample: int = 100         # frames of the clip that the --match-crf search encodes
    max_frames: int | None = None   # stop after this many frames (an excerpt)


@dataclass
class EncodeStats:
    """What one encode did; ``summary()`` is the line the CLI prints."""

    frames: int = 0
    frames_with_detections: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    bytes: int = 0
    bitrate: float = 0.0
    plain_bytes: int | None = None
    plain_bitrate: float | None = None
    corrupt_packets: int = 0
    duration: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    crf: float | None = None        # the CRF used (the one found by --match-crf)
    plain_crf: float | None = None
    copied_streams: int = 0         # audio and subtitle streams copied from the input
    frames_moving: int = 0          # frames passed through untouched because the camera moved

    def summary(self) -> str:
        s = (f"{self.frames} frames ({self.frames_with_detections} with detections), {self.width}x{self.height} "
             f"{self.codec}, {self.fps:.1f} fps, {self.bytes} B, {self.bitrate / 1000:.0f} kb/s")
        if self.crf is not None:
            s += f" at crf {self.crf:g}"
        if self.plain_bitrate:
            s += (f" vs plain {self.plain_bitrate / 1000:.0f} kb/s" + (f" at crf {self.plain_crf:g}" if self.plain_crf is not None else "")
                  + f" (x{self.bytes / self.plain_bytes:.3f})")
        if self.frames_moving:
            s += f"; {self.frames_moving} frames left untouched (moving camera)"
        if self.corrupt_packets:
            s += f"; skipped {self.corrupt_packets} corrupt packets"
        return s


# ---------------------------------------------------------------------------------------------- decode

class Reader:
    """Video frames of one file in display order with clean timestamps; corrupt packets are counted."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if not p.is_file():
            raise VqpError(f"{p}: no such file")
        if p.stat().st_size == 0:
            raise VqpError(f"{p}: empty file")
        try:
            self.container = av.open(str(p))
        except av.FFmpegError as e:
            raise VqpError(f"{p}: not a media file FFmpeg can read ({_msg(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VqpError(f"{p}: no video stream")
        self.path = p
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.others = [s for s in self.container.streams if s.type in ("audio", "subtitle")]  # copied as they are
        self.corrupt = 0
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.rate = Fraction(rate)
        self.time_base = self.stream.time_base or 1 / self.rate
        self.total = self.stream.frames or None

    def close(self) -> None:
        self.container.close()

    def _decoded(self, on_other: Callable | None) -> Iterator[av.VideoFrame]:
        streams = [self.stream] + (self.others if on_other else [])
        packets = self.container.demux(streams)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:  # the container itself is damaged from here on
                self.corrupt += 1
                log.warning("vqp: %s: stopped reading at a damaged part of the file (%s)", self.path, _msg(e))
                return
            if packet.stream is not self.stream:
                if packet.dts is not None:
                    on_other(packet)
                continue
            if packet.is_corrupt:
                self.corrupt += 1
                continue
            try:
                yield from packet.decode()
            except av.FFmpegError:
                self.corrupt += 1

    def frames(self, on_other: Callable | None = None, lag: int = 16) -> Iterator[av.VideoFrame]:
        """Frames with strictly increasing pts.

        Some containers (AVI with B-frames) give decoded frames their packets' decode-order stamps;
        the stamps of a short window are sorted back into display order, and missing or repeated
        stamps are continued at the nominal rate, so variable frame rates survive untouched.
        """
        step = max(1, round(1 / (self.rate * self.time_base)))
        pending: deque = deque()
        stamps: list[int] = []
        last = None

        def emit(f):
            nonlocal last
            pts = heapq.heappop(stamps) if stamps else None
            if pts is None or (last is not None and pts <= last):
                pts = 0 if last is None else last + step
            f.pts, f.time_base, last = pts, self.time_base, pts
            return f

        for f in self._decoded(on_other):
            if f.pts is not None:
                heapq.heappush(stamps, f.pts)
            pending.append(f)
            if len(pending) > lag:
                yield emit(pending.popleft())
        while pending:
            yield emit(pending.popleft())


def _planes(frame: av.VideoFrame, fmt: str, w: int, h: int) -> list[np.ndarray]:
    """The frame's planes in ``fmt`` (converted when needed), cropped to w x h."""
    if frame.format.name != fmt:
        frame = frame.reformat(format=fmt)
    out = []
    for i, p in enumerate(frame.planes):
        a = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: p.height, : p.width]
        sy, sx = (1, 1) if i == 0 else (-(-frame.height // p.height), -(-frame.width // p.width))
        out.append(a[: h // sy, : w // sx])
    return out


def _to_frame(planes: list[np.ndarray], fmt: str, w: int, h: int, pts: int, time_base) -> av.VideoFrame:
    f = av.VideoFrame(w, h, fmt)
    for p, a in zip(f.planes, planes):
        np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: a.shape[0], : a.shape[1]] = a
    f.pts, f.time_base = pts, time_base
    return f


# ---------------------------------------------------------------------------------------------- quantize

def _grow(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    """(N, Hg, Wg) grid -> (N, h, w) pixels, each cell repeated f times, cropped."""
    return x.repeat_interleave(f, 1).repeat_interleave(f, 2)[:, :h, :w]


def quantize_planes(planes: list[torch.Tensor], importance: torch.Tensor, tables: torch.Tensor,
                    params: QuantParams, grid: int, todo: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Requantize a batch of YUV planes, each (N, H, W) uint8, with an importance map on ``grid``.

    Luma 8x8 blocks inherit their grid cell's importance; a chroma block is as important as the
    best luma block it covers. Only the cells in ``todo`` (default: importance below 1 in frames
    with any importance) are transformed; every other block keeps its source pixels.
    """
    n, h, w = planes[0].shape
    if todo is None:
        todo = (importance < 1) & (importance.flatten(1).amax(1) > 0)[:, None, None]
    f = grid // 8
    imp8, todo8 = (x.repeat_interleave(f, 1).repeat_interleave(f, 2) for x in (importance.float(), todo.float()))
    out = []
    for k, plane in enumerate(planes):
        sub = h // plane.shape[1]
        imp, sel = (x if sub == 1 else F.max_pool2d(x[:, None], sub, ceil_mode=True)[:, 0] for x in (imp8, todo8))
        sel = sel > 0
        hb, wb = imp.shape[1:]
        ph, pw = hb * 8 - plane.shape[1], wb * 8 - plane.shape[2]
        x = torch.cat([plane, plane[:, -1:].expand(-1, ph, -1)], 1) if ph > 0 else plane[:, : hb * 8]
        x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pw)], 2) if pw > 0 else x[:, :, : wb * 8]
        blocks = x.reshape(n, hb, 8, wb, 8).transpose(2, 3).clone()  # (N, hb, wb, 8, 8)
        if sel.any():
            coef = dct2(blocks[sel].float() - 128)[None, None, :, None]  # (1, 1, M, 1, 8, 8)
            q = requantize_blocks(coef, tables[min(k, 1)], imp[sel][None, :, None], params)
            blocks[sel] = torch.clamp(torch.round(idct2(q) + 128), 0, 255).to(torch.uint8)[0, 0, :, 0]
        out.append(blocks.transpose(2, 3).reshape(n, hb * 8, wb * 8)[:, : plane.shape[1], : plane.shape[2]])
    return out


class Holder:
    """Keeps background macroblocks bit-identical to the previous output while their source is still.

    The change is measured against the source the held block was taken from, so slow drifts
    (light, shadows) still refresh the block once they add up to ``rms`` luma levels. Frames
    without any object pass through and break the chain (nothing is held across them).

    When less than ``still`` of the background could be held, the camera is moving: nothing can
    be held and a coarse background only moves under the fixed block grid, which costs the
    encoder's motion compensation more than it saves. Such frames pass through untouched until
    twice that share is still again (hysteresis, so the decision does not flicker).
    """

    def __init__(self, rms: float, grid: int = 16, still: float = 0.3):
        self.rms, self.grid, self.still = rms, grid, still
        self.ref: torch.Tensor | None = None        # luma source behind the current output
        self.prev: list[torch.Tensor] | None = None  # the previous output planes
        self.moving = False

    def masks(self, y: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells to hold (N, Hg, Wg) and frames to pass through (N,) for luma planes y (N, H, W)."""
        n, h, w = y.shape
        hold = torch.zeros(importance.shape, dtype=torch.bool)
        moving = torch.zeros(n, dtype=torch.bool)
        for i in range(n):  # each frame's decision depends on the previous ones
            yi, imp = y[i].float(), importance[i].float()
            if imp.amax() <= 0 or self.rms <= 0:
                self.ref = None
                continue
            if self.ref is not None:
                mse = F.avg_pool2d(((yi - self.ref) ** 2)[None, None], self.grid, ceil_mode=True)[0, 0]
                bg = imp < 1
                still = (mse < (self.rms * (1 - imp)) ** 2) & bg
                share = float(still.sum() / bg.sum().clamp(min=1))
                self.moving = share < self.still * (2 if self.moving else 1)
                moving[i] = self.moving
                if not self.moving:
                    hold[i] = still
                    yi = torch.where(_grow(still[None], self.grid, h, w)[0], self.ref, yi)
            self.ref = yi
        return hold, moving

    def apply(self, planes: list[torch.Tensor], hold: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per frame, the output planes with held cells taken from the previous output."""
        h = planes[0].shape[1]
        masks = [_grow(hold, self.grid * p.shape[1] // h, *p.shape[1:]) if hold.any() else None for p in planes]
        frames = []
        for i in range(planes[0].shape[0]):
            out = [p[i] for p in planes]
            if hold[i].any():
                out = [torch.where(m[i], q, p) for p, q, m in zip(out, self.prev, masks)]
            self.prev = out
            frames.append(out)
        return frames


def _msg(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0] if str(e) else type(e).__name__


# ---------------------------------------------------------------------------------------------- encode

def mjpeg_qscale(quality: int) -> int:
    """JPEG-style quality (1..100) to FFmpeg's MJPEG qscale: its step is qscale/8 times its matrix,
    libjpeg's is (scale %) times its table, so qscale = scale / 12.5."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return int(min(max(round(scale / 12.5), 1), 31))


def _configure(cc, o: VideoOptions, fmt: str, w: int, h: int, time_base, rate, crf: float | None,
               flags: int = 0, stats: str | None = None) -> None:
    cc.width, cc.height, cc.pix_fmt = w, h, fmt
    cc.time_base, cc.framerate = time_base, rate
    opts: dict[str, str] = {}
    if o.codec in ("libx264", "libx265"):
        opts["preset"] = o.preset
        if o.bitrate:
            cc.bit_rate = int(o.bitrate)
        else:
            opts["crf"] = f"{crf:g}"
        if o.codec == "libx265":
            opts["x265-params"] = "log-level=error"
    elif o.bitrate:
        cc.bit_rate = int(o.bitrate)
    else:
        q = str(int(round(crf))) if o.codec == "mpeg4" else str(mjpeg_qscale(o.mjpeg_quality or 75))
        opts["qmin"] = opts["qmax"] = q
    if o.gop:
        cc.gop_size = int(o.gop)
    if flags:
        cc.flags |= flags
    if stats:
        opts["stats"] = stats
    opts.update(o.codec_options)
    cc.options = opts


def _counter(o: VideoOptions, fmt, w, h, time_base, rate, crf, **kw) -> Callable:
    """An encoder whose packets are only counted: returns feed(frame | None) -> bytes so far."""
    cc = av.CodecContext.create(o.codec, "w")
    _configure(cc, o, fmt, w, h, time_base, rate, crf, **kw)
    total = 0

    def feed(frame):
        nonlocal total
        total += sum(p.size for p in cc.encode(frame))
        return total

    return feed


def _jpeg_tables(o: VideoOptions, fmt: str) -> torch.Tensor:
    """The (2, 8, 8) tables FFmpeg's MJPEG encoder really writes (read back from its DQT marker)."""
    from .quant import ZIGZAG

    cc = av.CodecContext.create("mjpeg", "w")
    _configure(cc, o, fmt, 16, 16, Fraction(1, 25), Fraction(25), None)
    f = av.VideoFrame(16, 16, fmt)
    f.pts = 0
    data = b"".join(bytes(p) for p in cc.encode(f))
    tables: dict[int, torch.Tensor] = {}
    i = data.find(b"\xff\xdb")
    while i >= 0:
        end, j = i + 2 + int.from_bytes(data[i + 2:i + 4], "big"), i + 4
        while j < end:
            wide, tq = data[j] >> 4, data[j] & 15
            n = 128 if wide else 64
            vals = np.frombuffer(data[j + 1:j + 1 + n], ">u2" if wide else np.uint8).astype(np.float32)
            tables[tq] = torch.from_numpy(vals)[ZIGZAG.long().flatten()].reshape(8, 8)
            j += 1 + n
        i = data.find(b"\xff\xdb", end)
    return torch.stack([tables[0], tables.get(1, tables[0])])


class Writer:
    """Muxes encoded video and copied audio/subtitle packets into ``path`` (the caller makes it atomic)."""

    def __init__(self, path: str, o: VideoOptions, fmt: str, w: int, h: int, reader: Reader, crf, rotation: int,
                 flags: int = 0, stats: str | None = None):
        self.container = av.open(path, "w")
        try:
            self.video = self.container.add_stream(o.codec, rate=reader.rate)
            self.video.time_base = reader.time_base
            _configure(self.video.codec_context, o, fmt, w, h, reader.time_base, reader.rate, crf, flags, stats)
            if rotation:
                self.video.set_display_rotation(rotation)
        except (av.FFmpegError, ValueError) as e:
            self.container.close()
            raise VqpError(f"cannot encode {o.codec} into {Path(path).suffix or 'this'} container ({_msg(e)})") from None
        self.copied = {}
        for a in reader.others:
            try:
                self.copied[a.index] = self.container.add_stream_from_template(a)
            except (av.FFmpegError, ValueError) as e:
                log.warning("vqp: %s stream %d not copied: %s", a.type, a.index, _msg(e))
        self.bytes = 0

    def add_other(self, packet: av.Packet) -> None:
        index = packet.stream.index
        out = self.copied.get(index)
        if out is not None:
            packet.stream = out
            try:
                self.container.mux(packet)
            except av.FFmpegError as e:  # the container refuses this stream's packets: drop the stream
                log.warning("vqp: stream %d no longer copied: %s", index, _msg(e))
                self.copied.pop(index)

    def add(self, frame: av.VideoFrame | None) -> None:
        for p in self.video.encode(frame):
            self.bytes += p.size
            self.container.mux(p)

    def close(self) -> None:
        self.add(None)
        self.container.close()


# ---------------------------------------------------------------------------------------------- pipeline

@dataclass
class Frame:
    """One frame on its way through the pipeline."""

    pts: int
    src: list[np.ndarray]               # planes as decoded (converted/cropped)
    boxes: list[Box] = field(default_factory=list)
    out: list[np.ndarray] | None = None  # planes to encode


class Pipeline:
    """Decode -> boxes (detector every N frames + tracker, or cached) -> quantized planes, in chunks."""

    def __init__(self, frames: Iterator[av.VideoFrame], name: str, o: VideoOptions, detector,
                 cache: list[list[Box]] | None = None, fmt: str | None = None):
        self.o, self.detector, self.cache = o, detector, cache
        self.codec = CODECS[o.codec]
        self.boxes: list[list[Box]] = []  # every frame's boxes, for reuse by later passes
        self.with_detections = 0
        self.moving = 0  # frames passed through because the camera moved
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
        self.last_run: dict | None = None
        if o.codec == "mjpeg":
            self.tables = _jpeg_tables(o, self.codec.fmt444 if self.fmt.endswith("444p") else self.codec.fmt420)
        else:
            self.tables = annex_k_tables(o.quality)
        self.params = QuantParams(o.strength, o.keep, o.dc_strength)
        self.holder = Holder(o.hold if self.codec.inter else 0.0)

    def __iter__(self) -> Iterator[Frame]:
        o, w, h = self.o, self.width, self.height
        every = max(1, int(o.detect_every))
        pending: list[Frame] = []
        rgbs: list[np.ndarray] = []
        idx = keys = 0
        frames = [self.first]
        while True:
            f = frames.pop() if frames else next(self._frames, None)
            if f is None or idx == o.max_frames:
                break
            key = idx % every == 0
            if key and o.preprocess and self.cache is None:
                rgbs.append(f.to_ndarray(format="rgb24")[:h, :w])
            pending.append(Frame(f.pts, _planes(f, self.fmt, w, h)))
            idx += 1
            keys += key
            if key and keys >= o.detect_batch:  # bounded memory: a chunk ends at a detection run
                yield from self._flush(pending, rgbs, every)
                pending, rgbs, keys = [], [], 0
        yield from self._flush(pending, rgbs, every)

    def _flush(self, pending: list[Frame], rgbs: list[np.ndarray], every: int) -> Iterator[Frame]:
        if not pending:
            return
        o = self.o
        base = len(self.boxes)
        if not o.preprocess:
            boxes = [[] for _ in pending]
        elif self.cache is not None:
            boxes = self.cache[base:base + len(pending)]
        else:
            boxes = self._track(pending, self.detector(rgbs) if rgbs else [], every, base)
        for fr, b in zip(pending, boxes):
            fr.boxes = b
        self.boxes += boxes
        self.with_detections += sum(1 for b in boxes if b)
        if o.preprocess and any(boxes):
            self._quantize(pending)
        else:
            for fr in pending:
                fr.out = fr.src
            self.holder.ref = None
        yield from pending

    def _track(self, pending, dets: list[Detections], every, base) -> list[list[Box]]:
        """Boxes for each pending frame: tracker output at detection runs, interpolated between."""
        keys = [i for i in range(len(pending)) if (base + i) % every == 0]
        out: list[list[Box] | None] = [None] * len(pending)
        prev_i = -1  # frames before the first key of this chunk follow the previous chunk's last run
        for i, d in zip(keys, dets):
            shown = self.tracker.update(d)
            if self.last_run is not None and i - prev_i > 1:
                out[prev_i + 1:i] = between(self.last_run, shown, i - prev_i - 1)
            out[i] = list(shown.values())
            self.last_run, prev_i = shown, i
        tail = len(pending) - prev_i - 1
        if tail:  # only at the end of the stream (other chunks end at a run): hold the last run's boxes
            out[prev_i + 1:] = [list((self.last_run or {}).values())] * tail
        return out

    def _quantize(self, frames: list[Frame]) -> None:
        o, grid = self.o, self.codec.grid
        dets = [Detections(fr.boxes, self.height, self.width) for fr in frames]
        imp = roi_map(dets, block=grid, config=o.roi).importance
        planes = [torch.from_numpy(np.stack([fr.src[k] for fr in frames])) for k in range(len(frames[0].src))]
        active = imp.flatten(1).amax(1) > 0
        hold, moving = self.holder.masks(planes[0], imp)
        self.moving += int(moving.sum())
        todo = (imp < 1) & (active & ~moving)[:, None, None] & ~hold
        q = quantize_planes(planes, imp, self.tables, self.params, grid, todo)
        for fr, out, a in zip(frames, self.holder.apply(q, hold), active & ~moving):
            fr.out = [p.numpy() for p in out] if a else fr.src


def detect_clip(src: str | os.PathLike, detector=None, every: int = 1, batch: int = 8,
                limit: int | None = None) -> list[Detections]:
    """Raw detector boxes on the original frames (every ``every``-th frame, others empty): the
    honest object region for measuring a clip's encodes."""
    if detector is None:
        from .detect import load_detector

        detector = load_detector()
    reader = Reader(src)
    out: list[Detections] = []
    rgbs: list[tuple[int, np.ndarray]] = []
    try:
        for i, f in enumerate(reader.frames()):
            if limit is not None and i >= limit:
                break
            out.append(Detections([], f.height, f.width))
            if i % every == 0:
                rgbs.append((i, f.to_ndarray(format="rgb24")))
            if len(rgbs) == batch:
                for (j, _), d in zip(rgbs, detector([a for _, a in rgbs])):
                    out[j] = d
                rgbs = []
        for (j, _), d in zip(rgbs, detector([a for _, a in rgbs]) if rgbs else []):
            out[j] = d
    finally:
        reader.close()
    return out


def _check(o: VideoOptions) -> None:
    if o.codec not in CODECS:
        raise VqpError(f"unknown codec {o.codec!r}; choose one of {', '.join(CODECS)}")
    if o.bitrate is not None and o.bitrate <= 0:
        raise VqpError(f"bitrate must be positive, got {o.bitrate}")
    if sum(x is not None for x in (o.crf, o.bitrate, o.match_crf)) > 1:
        raise VqpError("give at most one of crf, bitrate and match-crf")
    if o.two_pass and (o.bitrate is None or o.codec != "libx264"):
        raise VqpError("two-pass needs a bitrate and libx264")
    if o.match_crf is not None and o.codec not in ("libx264", "libx265"):
        raise VqpError("match-crf works with libx264 and libx265")
    if o.crf is not None and not (0 <= o.crf <= 51):
        raise VqpError(f"crf must be between 0 and 51, got {o.crf:g}")
    if o.codec == "mpeg4" and o.crf is not None and not (1 <= o.crf <= 31):
        raise VqpError(f"mpeg4 takes a fixed quantizer between 1 and 31 as crf, got {o.crf:g}")
    if o.mjpeg_quality is not None and not 1 <= o.mjpeg_quality <= 100:
        raise VqpError(f"mjpeg quality must be between 1 and 100, got {o.mjpeg_quality}")
    if o.detect_every < 1:
        raise VqpError(f"detect-every must be at least 1, got {o.detect_every}")


def encode_video(src: str | os.PathLike, dst: str | os.PathLike, options: VideoOptions = VideoOptions(), *,
                 detector=None, progress: bool | Callable[[float | None], None] = False) -> EncodeStats:
    """Encode ``src`` to ``dst`` with object-aware preprocessing; the output appears only when complete."""
    o = options
    _check(o)
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise VqpError("output is the input file; choose another name so the original is kept")
    if o.preprocess and detector is None:
        from .detect import load_detector

        detector = load_detector(imgsz=DETECT_SIZE)
    crf = o.crf if o.crf is not None else (23.0 if o.codec != "mpeg4" else 4.0)
    t0 = time.perf_counter()
    cache = plain_crf = None
    if o.match_crf is not None:
        crf, plain_crf = _match_crf(src, o, detector), o.match_crf
    stats_file = None
    try:
        if o.two_pass:
            stats_file = reserve_temp(dst, f".part{dst.suffix}")
            cache = _first_pass(src, o, detector, stats_file)
        while True:
            st, cache = _encode(src, dst, o, detector, cache, crf, progress, stats_file,
                                plain_crf if plain_crf is not None else (crf if o.measure_plain else None))
            if o.match_crf is None or st.bytes <= st.plain_bytes or not o.preprocess:
                break
            if crf < o.match_crf:  # the sample under-estimated the clip: step back towards C
                crf = min(o.match_crf, crf + 1)
            else:  # preprocessing costs bits here (e.g. a panning camera): the plain encode is the answer
                log.warning("vqp: %s: preprocessing does not pay on this clip; writing the plain encode", src)
                o = replace(o, preprocess=False)
    finally:
        if stats_file:
            for f in (stats_file, stats_file + ".mbtree", stats_file + ".temp", stats_file + ".mbtree.temp"):
                if os.path.exists(f):
                    os.unlink(f)
    st.seconds = time.perf_counter() - t0
    st.fps = st.frames / st.seconds if st.seconds else 0.0
    st.crf = crf if o.codec in ("libx264", "libx265") and not o.bitrate else None
    st.plain_crf = plain_crf
    return st


def _encode(src, dst: Path, o: VideoOptions, detector, cache, crf, progress, stats_file,
            plain_crf) -> tuple[EncodeStats, list[list[Box]]]:
    """One full pass writing ``dst``; also returns every frame's boxes for reuse."""
    from tqdm import tqdm

    reader = Reader(src)
    tmp = reserve_temp(dst, f".part{dst.suffix}")
    writer = None
    early: list[av.Packet] = []

    def other(packet):
        if o.max_frames and packet.pts is not None and packet.pts * packet.time_base > o.max_frames / reader.rate:
            return  # an excerpt: audio past the last frame is left out
        early.append(packet) if writer is None else writer.add_other(packet)

    try:
        pipe = Pipeline(reader.frames(other), str(src), o, detector, cache)
        w, h, fmt = pipe.width, pipe.height, pipe.fmt
        flags = av.codec.context.Flags.pass2 if stats_file else 0
        writer = Writer(tmp, o, fmt, w, h, reader, crf, pipe.rotation, flags, stats_file)
        for p in early:
            writer.add_other(p)
        plain = None
        if plain_crf is not None:
            po = VideoOptions(**{**o.__dict__, "match_crf": None, "two_pass": False})
            plain = _counter(po, fmt, w, h, reader.time_base, reader.rate, plain_crf)
        st = EncodeStats(width=w, height=h, codec=o.codec, copied_streams=len(writer.copied))
        first = last = None
        bar = tqdm(total=reader.total, unit="f", disable=not progress or callable(progress), desc=dst.name, leave=False)
        for fr in pipe:
            writer.add(_to_frame(fr.out, fmt, w, h, fr.pts, reader.time_base))
            if plain:
                plain(_to_frame(fr.src, fmt, w, h, fr.pts, reader.time_base))
            first = fr.pts if first is None else first
            last = fr.pts
            st.frames += 1
            bar.update()
            if callable(progress):  # e.g. the service's job runner: fraction done, None if the length is unknown
                progress(st.frames / reader.total if reader.total else None)
        bar.close()
        writer.close()
        publish(tmp, dst)
    except BaseException as e:
        if writer is not None:
            try:
                writer.container.close()
            except Exception:
                pass
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, av.FFmpegError):
            raise VqpError(f"encoding {src} failed ({_msg(e)})") from None
        if isinstance(e, OSError):
            raise VqpError(f"cannot write {dst}: {e.strerror or e}") from None
        raise
    finally:
        reader.close()
    st.bytes = writer.bytes
    st.frames_with_detections = pipe.with_detections
    st.frames_moving = pipe.moving
    st.corrupt_packets = reader.corrupt
    st.duration = float((last - first) * reader.time_base + 1 / reader.rate)
    st.bitrate = st.bytes * 8 / st.duration
    if plain:
        st.plain_bytes = plain(None)
        st.plain_bitrate = st.plain_bytes * 8 / st.duration
    if reader.corrupt:
        log.warning("vqp: %s: skipped %d corrupt packets", src, reader.corrupt)
    return st, pipe.boxes


def _first_pass(src, o: VideoOptions, detector, stats_file: str) -> list[list[Box]]:
    """x264's first pass over the preprocessed stream; returns the boxes for the second pass."""
    reader = Reader(src)
    try:
        pipe = Pipeline(reader.frames(), str(src), o, detector)
        enc = _counter(o, pipe.fmt, pipe.width, pipe.height, reader.time_base, reader.rate, None,
                       flags=av.codec.context.Flags.pass1, stats=stats_file)
        for fr in pipe:
            enc(_to_frame(fr.out, pipe.fmt, pipe.width, pipe.height, fr.pts, reader.time_base))
        enc(None)
    finally:
        reader.close()
    return pipe.boxes


def _match_crf(src, o: VideoOptions, detector) -> float:
    """Lowest CRF (in 0.5 steps) whose preprocessed sample is no larger than plain at ``match_crf``.

    The sample is the clip's first ``match_sample`` frames, preprocessed once and kept in memory."""
    reader = Reader(src)
    try:
        pipe = Pipeline(reader.frames(), str(src), o, detector)
        sample = []
        for fr in pipe:
            sample.append(fr)
            if len(sample) >= o.match_sample:
                break
    finally:
        reader.close()
    args = (pipe.fmt, pipe.width, pipe.height, reader.time_base, reader.rate)

    def size(crf: float, planes: str) -> int:
        enc = _counter(o, *args, crf)
        for fr in sample:
            enc(_to_frame(getattr(fr, planes), *args[:3], fr.pts, reader.time_base))
        return enc(None)

    target = size(o.match_crf, "src")
    lo, hi = max(0.0, o.match_crf - 12), float(o.match_crf)
    if size(lo, "out") <= target:
        return lo
    if size(hi, "out") > target:  # even C does not fit; encode_video falls back to plain if the clip agrees
        return hi
    while hi - lo > 0.5:
        mid = math.floor(lo + hi) / 2
        if size(mid, "out") <= target:
            hi = mid
        else:
            lo = mid
    return hi
