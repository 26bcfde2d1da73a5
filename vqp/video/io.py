"""Reading and writing video with PyAV: frames in display order, planes, and the muxer."""
from __future__ import annotations

import heapq
import logging
import os
import sys
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import av
import numpy as np

from ..errors import VqpError
from .options import VideoOptions

log = logging.getLogger("vqp")
STDIO = "-"


def message(e: Exception) -> str:
    """An FFmpeg or OS error as a short phrase for a one-line message."""
    return getattr(e, "strerror", None) or str(e).splitlines()[0] if str(e) else type(e).__name__


class Reader:
    """Video frames of one file (or stdin, ``-``) in display order with clean timestamps; corrupt
    packets are counted, not fatal."""

    def __init__(self, path: str | os.PathLike | BinaryIO):
        if hasattr(path, "read"):
            self.path, source = Path("<stdin>"), path
        else:
            p = Path(path)
            if not p.is_file():
                raise VqpError(f"{p}: no such file")
            if p.stat().st_size == 0:
                raise VqpError(f"{p}: empty file")
            self.path, source = p, str(p)
        try:
            self.container = av.open(source)
        except (av.FFmpegError, OSError) as e:
            raise VqpError(f"{self.path}: not a media file FFmpeg can read ({message(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VqpError(f"{self.path}: no video stream")
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
                log.warning("vqp: %s: stopped reading at a damaged part of the file (%s)", self.path, message(e))
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


def planes(frame: av.VideoFrame, fmt: str, w: int, h: int) -> list[np.ndarray]:
    """The frame's planes in ``fmt`` (converted when needed), cropped to w x h (views, no copy)."""
    if frame.format.name != fmt:
        frame = frame.reformat(format=fmt)
    out = []
    for i, p in enumerate(frame.planes):
        a = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: p.height, : p.width]
        sy, sx = (1, 1) if i == 0 else (-(-frame.height // p.height), -(-frame.width // p.width))
        out.append(a[: h // sy, : w // sx])
    return out


def to_frame(data: list[np.ndarray], fmt: str, w: int, h: int, pts: int, time_base) -> av.VideoFrame:
    """A new VideoFrame from planes, with explicit timestamps (rate control needs them)."""
    f = av.VideoFrame(w, h, fmt)
    for p, a in zip(f.planes, data):
        np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: a.shape[0], : a.shape[1]] = a
    f.pts, f.time_base = pts, time_base
    return f


def conform(frame: av.VideoFrame, fmt: str, w: int, h: int) -> av.VideoFrame:
    """The decoded frame as the encoder takes it: in ``fmt``, w x h, same timestamps, no picture type.

    A decoded frame keeps the picture type the source coded it with, and FFmpeg's encoders obey
    it (libx264 codes a frame typed I as an I-frame): cleared, the encoder picks its own types.
    Only odd-sized frames (cropped for 4:2:0) go through numpy; a format change is one swscale call."""
    pts, tb = frame.pts, frame.time_base
    if (frame.width, frame.height) != (w, h):
        return to_frame(planes(frame, fmt, w, h), fmt, w, h, pts, tb)
    if frame.format.name != fmt:
        frame = frame.reformat(format=fmt)
        frame.pts, frame.time_base = pts, tb
    frame.pict_type = 0  # AV_PICTURE_TYPE_NONE
    return frame


def configure(cc, o: VideoOptions, fmt: str, w: int, h: int, time_base, rate, crf: float | None,
              flags: int = 0, stats: str | None = None) -> None:
    """Size, format and timing of an encoder context; rate control and options come from the codec registry."""
    cc.width, cc.height, cc.pix_fmt = w, h, fmt
    cc.time_base, cc.framerate = time_base, rate
    if flags:
        cc.flags |= flags
    extra = dict(o.codec_options)
    if stats:
        extra["stats"] = stats
    o.spec.configure(cc, crf=crf, bitrate=o.bitrate, preset=o.preset, quality=o.mjpeg_quality, gop=o.gop, extra=extra)


def counter(o: VideoOptions, fmt, w, h, time_base, rate, crf, **kw) -> Callable:
    """An encoder whose packets are only counted: returns feed(frame | None) -> bytes so far."""
    cc = av.CodecContext.create(o.codec, "w")
    configure(cc, o, fmt, w, h, time_base, rate, crf, **kw)
    total = 0

    def feed(frame):
        nonlocal total
        total += sum(p.size for p in cc.encode(frame))
        return total

    return feed


class Writer:
    """Muxes encoded video and copied audio/subtitle packets into ``target`` (a path the caller makes
    atomic, or a binary stream such as stdout, which then needs ``o.container``)."""

    def __init__(self, target: str | BinaryIO, o: VideoOptions, fmt: str, w: int, h: int, reader: Reader, crf,
                 rotation: int, flags: int = 0, stats: str | None = None):
        name = "stdout" if hasattr(target, "write") else Path(target).suffix or "this"
        try:
            self.container = av.open(target, "w", format=o.container)
        except (av.FFmpegError, ValueError) as e:
            raise VqpError(f"cannot write a {o.container or name} container ({message(e)})") from None
        try:
            self.video = self.container.add_stream(o.codec, rate=reader.rate)
            self.video.time_base = reader.time_base
            configure(self.video.codec_context, o, fmt, w, h, reader.time_base, reader.rate, crf, flags, stats)
            if rotation:
                self.video.set_display_rotation(rotation)
        except (av.FFmpegError, ValueError) as e:
            self.container.close()
            raise VqpError(f"cannot encode {o.codec} into {o.container or name} container ({message(e)})") from None
        self.copied = {}
        for a in reader.others:
            try:
                self.copied[a.index] = self.container.add_stream_from_template(a)
            except (av.FFmpegError, ValueError) as e:
                log.warning("vqp: %s stream %d not copied: %s", a.type, a.index, message(e))
        self.bytes = 0

    def add_other(self, packet: av.Packet) -> None:
        index = packet.stream.index
        out = self.copied.get(index)
        if out is not None:
            packet.stream = out
            try:
                self.container.mux(packet)
            except av.FFmpegError as e:  # the container refuses this stream's packets: drop the stream
                log.warning("vqp: stream %d no longer copied: %s", index, message(e))
                self.copied.pop(index)

    def add(self, frame: av.VideoFrame | None) -> None:
        for p in self.video.encode(frame):
            self.bytes += p.size
            self.container.mux(p)

    def close(self) -> None:
        self.add(None)
        self.container.close()


def stdin() -> BinaryIO:
    return sys.stdin.buffer


def stdout() -> BinaryIO:
    return sys.stdout.buffer
