"""Reading and writing video with PyAV: frames in display order, planes, and the muxer."""
from __future__ import annotations

import heapq
import logging
import os
import re
import sys
import tempfile
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import av
import numpy as np

from .. import codecs
from ..errors import VqpError, one_line
from .options import VideoOptions

log = logging.getLogger("vqp")
STDIO = "-"


def message(e: Exception) -> str:
    """An FFmpeg or OS error as a short phrase for a one-line message."""
    return getattr(e, "strerror", None) or one_line(e)


STDERR = threading.Lock()
UNPARSED = re.compile(r"(?i)error parsing option|unknown option|invalid value|bad (option|value)")


@contextmanager
def encoder_errors(name: str) -> Iterator[None]:
    """The encoder's own reason, not just 'Invalid argument', when it refuses its settings.

    Meanwhile FFmpeg's log is captured, not printed, and so is what the C libraries write straight
    to stderr (x264 reports a bad preset there, before FFmpeg hooks its log): the library's line,
    else FFmpeg's last error, becomes the one-line message. FFmpeg's wrappers only warn about
    x264-params / x265-params they cannot parse and go on; such a warning is an error here too.
    On success whatever the libraries printed goes to stderr after all."""
    with STDERR, tempfile.TemporaryFile() as printed:  # one at a time: stderr and the log level are process-wide
        prev = av.logging.get_level()
        av.logging.set_level(av.logging.WARNING if prev is None else prev)
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(printed.fileno(), 2)
        failed = None
        try:
            with av.logging.Capture() as logs:
                try:
                    yield
                except av.FFmpegError as e:
                    failed = message(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            av.logging.set_level(prev)
        printed.seek(0)
        own = printed.read().decode(errors="replace")
    lines = [m.strip() for level, _, m in logs if level <= av.logging.ERROR or UNPARSED.search(m)]
    if failed is None and not any(UNPARSED.search(m) for m in lines):
        sys.stderr.write(own)
        if prev is not None:  # vqp -v: the log goes on as if it had not been captured
            for level, name, m in logs:
                logging.getLogger(f"libav.{name}").log(av.logging.adapt_level(level), m.strip())
        return
    own_errors = [x.split("]:", 1)[-1].strip() for x in own.splitlines() if "[error]" in x]
    reason = ([m for m in lines if UNPARSED.search(m)] or own_errors or lines or [failed])[-1]
    raise VqpError(f"{name} refused its settings: {reason}")


def ffmpeg_logging(verbose: bool) -> None:
    """FFmpeg's own log lines (a decoder's complaints about a damaged packet, an encoder's notes):
    none by default, since vqp counts what it skips and says so in one line; with ``verbose``
    its warnings and errors, as '[libav.h264] ...' lines on stderr."""
    logger = logging.getLogger("libav")
    if verbose and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # once, not again through the root logger's handler
    av.logging.set_level(av.logging.WARNING if verbose else None)


def output_format(dst: str | os.PathLike | BinaryIO, container: str | None) -> None:
    """A one-line error, before any work, when FFmpeg cannot tell which container to write."""
    if container:
        try:
            av.ContainerFormat(container, "w")
        except ValueError:
            raise VqpError(f"unknown output format {container!r} (e.g. matroska, mp4, webm, avi)") from None
        return
    if str(dst) == STDIO or hasattr(dst, "write"):
        raise VqpError("writing to stdout needs a container format (e.g. --format matroska)")
    if Path(dst).is_dir():
        raise VqpError(f"{dst}: is a directory")
    ext = Path(dst).suffix.lower().lstrip(".")
    if not ext or ext not in output_extensions():
        raise VqpError(f"{dst}: cannot tell the output format from {'.' + ext if ext else 'a name without extension'}; "
                       "name it .mp4, .mkv, .webm, .mov or .avi, or give --format (e.g. --format matroska)")


@lru_cache(maxsize=1)
def output_extensions() -> frozenset[str]:
    """File extensions some FFmpeg muxer of this build claims."""
    out = set()
    for name in av.formats_available:
        try:
            out |= set(av.ContainerFormat(name, "w").extensions)
        except ValueError:  # an input-only format
            pass
    return frozenset(out)


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
                if packet.dts is not None and self._intact(packet):
                    on_other(packet)
                continue
            if packet.is_corrupt:
                self.corrupt += 1
                continue
            try:
                yield from packet.decode()
            except av.FFmpegError:
                self.corrupt += 1

    def _intact(self, packet: av.Packet) -> bool:
        """Whether a packet to copy is sound: audio is decoded (cheap next to the video) and a
        packet its decoder refuses is counted and left out, so it never reaches the muxer, some
        of which take it and fail later on another stream's packet (mp4: a PCM packet of no samples)."""
        if packet.is_corrupt:
            self.corrupt += 1
            return False
        if packet.stream.type == "audio":
            try:
                packet.decode()
            except av.FFmpegError:
                self.corrupt += 1
                return False
        return True

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


# FFmpeg's AVCOL_* codes, and the swscale matrix (SWS_CS_*) for each YCbCr matrix it can convert
UNSPECIFIED, LIMITED, FULL, RGB, BT601 = 2, 1, 2, 0, 5
SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
NAMES = {"range": {1: "tv", 2: "pc"}, "primaries": {1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020"},
         "trc": {1: "bt709", 6: "smpte170m", 14: "bt2020-10", 16: "smpte2084", 18: "arib-std-b67"},
         "space": {0: "rgb", 1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc"}}


def depth(fmt: str) -> int:
    """Bits per sample of a pixel format."""
    return av.VideoFormat(fmt).components[0].bits


def is_rgb(fmt: str) -> bool:
    return fmt.startswith(("rgb", "bgr", "gbr", "argb", "abgr"))


@dataclass(frozen=True)
class Colour:
    """What a stream's samples mean: range (1 limited, 2 full, 0 unknown), colour primaries,
    transfer (trc) and YCbCr matrix (space), as FFmpeg's AVCOL_* codes (2 = unspecified).

    Carried from the source to the encoder, so that players show the picture the source showed:
    full-range samples tagged limited look washed out, PQ samples tagged BT.709 look grey."""

    range: int = 0
    primaries: int = UNSPECIFIED
    trc: int = UNSPECIFIED
    space: int = UNSPECIFIED

    @classmethod
    def of(cls, frame: av.VideoFrame) -> Colour:
        rng = frame.color_range or (FULL if frame.format.name.startswith("yuvj") else 0)
        return cls(int(rng), int(frame.color_primaries), int(frame.color_trc), int(frame.colorspace))

    def encoded(self, src_fmt: str, spec: codecs.Codec) -> Colour:
        """What the encoder's samples will mean: the source's, except where a conversion has to
        change them (JFIF's full-range BT.601 for Motion-JPEG; swscale's BT.601 limited range for
        RGB sources). Primaries and transfer are never converted, so they stay as they are."""
        if spec.jfif:
            return replace(self, range=FULL, space=BT601)
        if is_rgb(src_fmt) or self.space == RGB:
            return replace(self, range=LIMITED, space=BT601)
        return self

    def apply(self, x) -> None:
        """Tag a codec context or a frame."""
        x.color_range, x.color_primaries, x.color_trc, x.colorspace = self.range, self.primaries, self.trc, self.space

    def lost(self, got: Colour) -> list[str]:
        """The tags of this one that ``got`` (what a file says) does not carry, as 'range tv' etc."""
        return [f"{k} {NAMES[k].get(v, v)}" for k, v in self.__dict__.items()
                if v != (0 if k == "range" else UNSPECIFIED) and getattr(got, k) != v]


def convert(frame: av.VideoFrame, fmt: str, colour: Colour) -> av.VideoFrame:
    """``frame`` in ``fmt`` with the samples meaning ``colour`` (range and matrix): one swscale call
    where bit depth, chroma, range or matrix change, none otherwise (e.g. yuvj420p -> yuv420p
    full range is the same samples). The frame is tagged with ``colour``."""
    matrix = SWS_MATRIX.get(colour.space)
    frame = frame.reformat(format=fmt, dst_colorspace=matrix if matrix != SWS_MATRIX.get(int(frame.colorspace)) else None,
                           dst_color_range=colour.range or None)
    colour.apply(frame)
    return frame


def sample_type(fmt: str) -> np.dtype:
    return np.dtype(np.uint16 if depth(fmt) > 8 else np.uint8)


def planes(frame: av.VideoFrame, fmt: str, w: int, h: int) -> list[np.ndarray]:
    """The frame's planes in ``fmt`` (converted when needed), cropped to w x h (views, no copy);
    uint16 for formats deeper than 8 bits."""
    if frame.format.name != fmt:
        frame = frame.reformat(format=fmt)
    dt = sample_type(fmt)
    out = []
    for i, p in enumerate(frame.planes):
        a = np.frombuffer(p, dt).reshape(-1, p.line_size // dt.itemsize)[: p.height, : p.width]
        sy, sx = (1, 1) if i == 0 else (-(-frame.height // p.height), -(-frame.width // p.width))
        out.append(a[: h // sy, : w // sx])
    return out


def to_frame(data: list[np.ndarray], fmt: str, w: int, h: int, pts: int, time_base,
             colour: Colour | None = None) -> av.VideoFrame:
    """A new VideoFrame from planes, with explicit timestamps (rate control needs them) and colour tags."""
    f = av.VideoFrame(w, h, fmt)
    dt = sample_type(fmt)
    for p, a in zip(f.planes, data):
        np.frombuffer(p, dt).reshape(-1, p.line_size // dt.itemsize)[: a.shape[0], : a.shape[1]] = a
    f.pts, f.time_base = pts, time_base
    if colour is not None:
        colour.apply(f)
    return f


def conform(frame: av.VideoFrame, fmt: str, w: int, h: int, colour: Colour) -> av.VideoFrame:
    """The decoded frame as the encoder takes it: in ``fmt`` and ``colour``, w x h, same timestamps,
    no picture type.

    A decoded frame keeps the picture type the source coded it with, and FFmpeg's encoders obey
    it (libx264 codes a frame typed I as an I-frame): cleared, the encoder picks its own types.
    Only odd-sized frames (cropped for 4:2:0) go through numpy; a conversion is one swscale call."""
    pts, tb = frame.pts, frame.time_base
    frame = convert(frame, fmt, colour)
    if (frame.width, frame.height) != (w, h):
        return to_frame(planes(frame, fmt, w, h), fmt, w, h, pts, tb, colour)
    frame.pts, frame.time_base = pts, tb
    frame.pict_type = 0  # AV_PICTURE_TYPE_NONE
    return frame


def tags(path: str | os.PathLike) -> Colour:
    """The colour tags a written file's video stream reports (what players will read)."""
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return Colour(int(cc.color_range), int(cc.color_primaries), int(cc.color_trc), int(cc.colorspace))


def configure(cc, o: VideoOptions, fmt: str, w: int, h: int, time_base, rate, crf: float | None,
              flags: int = 0, stats: str | None = None, colour: Colour | None = None) -> None:
    """Size, format, colour and timing of an encoder context, which is then opened: a setting the
    encoder refuses, or one nothing took, is a one-line error here. Rate control and options come
    from the codec registry."""
    cc.width, cc.height, cc.pix_fmt = w, h, fmt
    cc.time_base, cc.framerate = time_base, rate
    if colour is not None:
        colour.apply(cc)
    if flags:
        cc.flags |= flags
    extra = dict(o.codec_options)
    if stats:
        extra["stats"] = stats
    o.spec.configure(cc, crf=crf, bitrate=o.bitrate, preset=o.preset, quality=o.mjpeg_quality, gop=o.gop, extra=extra)
    with encoder_errors(o.codec):
        cc.open()
    if cc.options:  # left over: no part of FFmpeg took them
        raise VqpError(f"{o.codec} has no option {', '.join(cc.options)} (given as "
                       f"{', '.join(f'{k}={v}' for k, v in cc.options.items())}); see ffmpeg -h encoder={o.codec}")


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

    GIVE_UP = 16  # a copied stream none of whose first packets the muxer takes is dropped

    def __init__(self, target: str | BinaryIO, o: VideoOptions, fmt: str, w: int, h: int, reader: Reader, crf,
                 rotation: int, flags: int = 0, stats: str | None = None, colour: Colour | None = None):
        name = "stdout" if hasattr(target, "write") else Path(target).suffix or "this"
        try:
            self.container = av.open(target, "w", format=o.container)
        except (av.FFmpegError, ValueError) as e:
            raise VqpError(f"cannot write a {o.container or name} container ({message(e)})") from None
        try:
            self.video = self.container.add_stream(o.codec, rate=reader.rate)
            self.video.time_base = reader.time_base
            configure(self.video.codec_context, o, fmt, w, h, reader.time_base, reader.rate, crf, flags, stats,
                      colour)
            if rotation:
                self.video.set_display_rotation(rotation)
        except VqpError:
            self.container.close()
            raise
        except (av.FFmpegError, ValueError) as e:
            self.container.close()
            raise VqpError(f"cannot encode {o.codec} into {o.container or name} container ({message(e)})") from None
        self.copied = {}
        for a in reader.others:
            try:
                self.copied[a.index] = self.container.add_stream_from_template(a)
            except (av.FFmpegError, ValueError) as e:
                log.warning("vqp: %s stream %d not copied: %s", a.type, a.index, message(e))
        self.muxed: dict[int, int] = {}   # per copied stream: packets the muxer took
        self.refused: dict[int, int] = {}  # ... and packets it refused (corrupt size, timestamps)
        self.bytes = 0

    @property
    def skipped(self) -> int:
        """Copied packets left out because the muxer refused them."""
        return sum(self.refused.values())

    def add_other(self, packet: av.Packet) -> None:
        """Copy one audio/subtitle packet. One the muxer refuses (a corrupt packet's size or
        timestamps) is skipped and counted and the stream goes on; a stream whose first packets
        are all refused is one the container cannot hold, and is dropped."""
        index = packet.stream.index
        out = self.copied.get(index)
        if out is None:
            return
        packet.stream = out
        try:
            self.container.mux(packet)
            self.muxed[index] = self.muxed.get(index, 0) + 1
        except av.FFmpegError as e:
            self.refused[index] = self.refused.get(index, 0) + 1
            if not self.muxed.get(index) and self.refused[index] >= self.GIVE_UP:
                log.warning("vqp: stream %d not copied: the container refuses its packets (%s)", index, message(e))
                self.copied.pop(index)
                self.refused.pop(index)

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
