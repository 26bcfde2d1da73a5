"""yuv4mpegpipe (y4m) streaming: one header line, then ``FRAME`` lines each followed by raw planes.

Only one frame is held at a time, so memory stays bounded however long the stream is; the header's
frame size is checked against a limit before any frame is read, so a damaged or hostile header can
only give a one-line error. 4:2:0 (every siting: C420, C420jpeg, C420mpeg2, C420paldv) and 4:4:4, 8-bit.

Hand-written rather than PyAV's yuv4mpegpipe demuxer and muxer: it passes every header parameter
on byte for byte, where FFmpeg's muxer writes its own aspect ratio, chroma siting and colour range,
and it checks the frame size before it allocates. Speed decides nothing either way: both read and
write hundreds of 1080p frames a second in a few frames of memory (benchmarks/RESULTS.md, "y4m reader
(issue 11)"), far more than the filter's pipeline handles.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterator

import numpy as np

from .errors import VqpError

MAGIC = b"YUV4MPEG2"
FORMATS = {"420": "yuv420p", "420jpeg": "yuv420p", "420mpeg2": "yuv420p", "420paldv": "yuv420p", "444": "yuv444p"}
MAX_PIXELS = 1 << 26  # per frame (8K UHD is 2^25); VQP_MAX_FRAME_PIXELS overrides it
INT32 = (1 << 31) - 1  # FFmpeg keeps rates and time bases as 32-bit fractions
NUMBER = re.compile(r"[0-9]{1,10}")


@dataclass
class Y4mHeader:
    width: int
    height: int
    fmt: str                    # yuv420p | yuv444p
    rate: Fraction
    tokens: list[str]           # every other parameter, passed on byte for byte (interlacing, aspect, colour range...)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        h, w = self.height, self.width
        c = (h, w) if self.fmt == "yuv444p" else (-(-h // 2), -(-w // 2))
        return [(h, w), c, c]

    def encode(self) -> bytes:
        return " ".join([MAGIC.decode(), f"W{self.width}", f"H{self.height}",
                         f"F{self.rate.numerator}:{self.rate.denominator}", *self.tokens]).encode("latin-1") + b"\n"


def frame_limit() -> int:
    """The largest frame (in pixels) a header may declare: VQP_MAX_FRAME_PIXELS, else MAX_PIXELS."""
    raw = os.environ.get("VQP_MAX_FRAME_PIXELS", "")
    if not raw:
        return MAX_PIXELS
    if not NUMBER.fullmatch(raw) or int(raw) < 1:
        raise VqpError(f"VQP_MAX_FRAME_PIXELS={raw!r} is not a positive whole number")
    return int(raw)


def _side(t: str) -> int:
    """A W or H parameter: a positive whole number in plain digits."""
    if not NUMBER.fullmatch(t[1:]) or int(t[1:]) < 1:
        raise VqpError(f"bad y4m frame size parameter {t[:24]!r}")
    return int(t[1:])


def read_header(stream: BinaryIO, max_pixels: int | None = None) -> Y4mHeader:
    """Parse and check the header line: a frame size within ``max_pixels`` (default: frame_limit())."""
    line = stream.readline(4096)
    if not line:
        raise VqpError("no input: the y4m stream is empty")
    if not line.startswith(MAGIC + b" ") or not line.endswith(b"\n"):
        raise VqpError("input is not a yuv4mpegpipe stream (use ffmpeg ... -f yuv4mpegpipe -)")
    w = h = None
    rate, fmt, tokens = Fraction(25), "yuv420p", []
    for t in line[len(MAGIC):].decode("latin-1").split():  # any byte: unknown parameters pass through as they came
        if t[0] == "W":
            w = _side(t)
        elif t[0] == "H":
            h = _side(t)
        elif t[0] == "F":
            n, _, d = t[1:].partition(":")
            if not NUMBER.fullmatch(n) or not NUMBER.fullmatch(d) or int(n) > INT32 or int(d) > INT32:
                raise VqpError(f"bad y4m frame rate {t[:24]!r} (want F<num>:<den>)")
            if int(n) and int(d):  # F0:0 is "unknown": 25, as FFmpeg reads it
                rate = Fraction(int(n), int(d))
        elif t[0] == "C":
            if t[1:] not in FORMATS:
                raise VqpError(f"y4m colorspace {t[:24]} not supported (use -pix_fmt yuv420p or yuv444p)")
            fmt = FORMATS[t[1:]]
            tokens.append(t)
        else:
            tokens.append(t)
    if w is None or h is None:
        raise VqpError("y4m header has no frame size (W and H)")
    limit = frame_limit() if max_pixels is None else max_pixels
    if w * h > limit:
        raise VqpError(f"y4m frame size {w}x{h} is over the limit of {limit:,} pixels (VQP_MAX_FRAME_PIXELS)")
    return Y4mHeader(w, h, fmt, rate, tokens)


def read_frames(stream: BinaryIO, header: Y4mHeader) -> Iterator[list[np.ndarray]]:
    """Planes of each frame until EOF; a frame cut short by the end of the stream is an error."""
    shapes = header.shapes
    size = sum(a * b for a, b in shapes)
    n = 0
    while True:
        line = stream.readline(4096)
        if not line:
            return
        if not (line == b"FRAME\n" or line.startswith(b"FRAME ") and line.endswith(b"\n")):
            raise VqpError(f"y4m stream out of sync after frame {n}: expected a FRAME line")
        buf = stream.read(size)
        if len(buf) < size:
            raise VqpError(f"y4m stream ended inside a frame (frame {n + 1}: {len(buf)} of {size} bytes)")
        data = np.frombuffer(buf, np.uint8)
        planes, o = [], 0
        for a, b in shapes:
            planes.append(data[o:o + a * b].reshape(a, b))
            o += a * b
        n += 1
        yield planes


def write_frame(stream: BinaryIO, planes: list[np.ndarray]) -> None:
    stream.write(b"FRAME\n")
    for p in planes:
        stream.write(np.ascontiguousarray(p).data)
