"""yuv4mpegpipe (y4m) streaming: one header line, then ``FRAME`` lines each followed by raw planes.

Only one frame is held at a time, so memory stays bounded however long the stream is.
4:2:0 (every siting: C420, C420jpeg, C420mpeg2, C420paldv) and 4:4:4, 8-bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterator

import numpy as np

from .errors import VqpError

MAGIC = b"YUV4MPEG2"
FORMATS = {"420": "yuv420p", "420jpeg": "yuv420p", "420mpeg2": "yuv420p", "420paldv": "yuv420p", "444": "yuv444p"}


@dataclass
class Y4mHeader:
    width: int
    height: int
    fmt: str                    # yuv420p | yuv444p
    rate: Fraction
    tokens: list[str]           # every other parameter, passed on unchanged (interlacing, aspect, colour range...)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        h, w = self.height, self.width
        c = (h, w) if self.fmt == "yuv444p" else (-(-h // 2), -(-w // 2))
        return [(h, w), c, c]

    def encode(self) -> bytes:
        return " ".join([MAGIC.decode(), f"W{self.width}", f"H{self.height}",
                         f"F{self.rate.numerator}:{self.rate.denominator}", *self.tokens]).encode() + b"\n"


def read_header(stream: BinaryIO) -> Y4mHeader:
    line = stream.readline(4096)
    if not line:
        raise VqpError("no input: the y4m stream is empty")
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise VqpError("input is not a yuv4mpegpipe stream (use ffmpeg ... -f yuv4mpegpipe -)")
    w = h = None
    rate, fmt, tokens = Fraction(25), "yuv420p", []
    for t in line[len(MAGIC):].decode("ascii", "replace").split():
        key, val = t[0], t[1:]
        try:
            if key == "W":
                w = int(val)
            elif key == "H":
                h = int(val)
            elif key == "F":
                n, d = val.split(":")
                rate = Fraction(int(n), int(d)) if int(n) and int(d) else rate
            elif key == "C":
                if val not in FORMATS:
                    raise VqpError(f"y4m colorspace C{val} not supported (use -pix_fmt yuv420p or yuv444p)")
                fmt = FORMATS[val]
                tokens.append(t)
            else:
                tokens.append(t)
        except ValueError:
            raise VqpError(f"bad y4m header parameter {t!r}") from None
    if not w or not h or w <= 0 or h <= 0:
        raise VqpError("y4m header has no frame size")
    return Y4mHeader(w, h, fmt, rate, tokens)


def read_frames(stream: BinaryIO, header: Y4mHeader) -> Iterator[list[np.ndarray]]:
    """Planes of each frame until EOF; a frame cut short by the end of the stream is an error."""
    shapes = header.shapes
    size = sum(a * b for a, b in shapes)
    while True:
        line = stream.readline(4096)
        if not line:
            return
        if not line.startswith(b"FRAME"):
            raise VqpError("y4m stream out of sync: expected FRAME")
        buf = stream.read(size)
        if len(buf) < size:
            raise VqpError(f"y4m stream ended inside a frame ({len(buf)} of {size} bytes)")
        data = np.frombuffer(buf, np.uint8)
        planes, o = [], 0
        for a, b in shapes:
            planes.append(data[o:o + a * b].reshape(a, b))
            o += a * b
        yield planes


def write_frame(stream: BinaryIO, planes: list[np.ndarray]) -> None:
    stream.write(b"FRAME\n")
    for p in planes:
        stream.write(np.ascontiguousarray(p).data)
