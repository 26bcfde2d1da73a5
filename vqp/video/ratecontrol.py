"""Rate control around the pipeline: x264's first pass, the --match-crf search, MJPEG's tables.

Every mode runs through the encoder's own rate control; with the ROI method the offsets move
bits from the background to the objects inside whatever budget that rate control keeps.
"""
from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import torch

from ..types import Box
from .io import Colour, Reader, configure, counter, to_frame
from .options import VideoOptions
from .pipeline import Frame, Pipeline
from .roi_side_data import SideData


def encoder_frame(fr: Frame, fmt: str, side: SideData | None, plain: bool = False) -> av.VideoFrame:
    """What the encoder gets for one pipeline frame: its planes (pixel method) or the decoded frame,
    with the ROI regions attached; ``plain`` gives the untouched source."""
    if plain:
        return fr.video
    f = fr.video if fr.planes is None else to_frame(fr.planes, fmt, fr.video.width, fr.video.height, fr.pts,
                                                     fr.video.time_base, Colour.of(fr.video))
    return side.attach(f, fr.regions) if side is not None else f


def first_pass(src, o: VideoOptions, detector, stats_file: str) -> list[tuple[list[Box], list[Box]]]:
    """x264's first pass over the preprocessed stream; returns the boxes for the second pass."""
    reader = Reader(src)
    try:
        pipe = Pipeline(reader.frames(), str(src), o, detector)
        side = SideData(pipe.width, pipe.height, pipe.fmt, reader.time_base, o.spec.roi_every_frame,
                        pipe.colour) if o.uses_roi else None
        enc = counter(o, pipe.fmt, pipe.width, pipe.height, reader.time_base, reader.rate, None,
                      flags=av.codec.context.Flags.pass1, stats=stats_file, colour=pipe.colour)
        for fr in pipe:
            enc(encoder_frame(fr, pipe.fmt, side))
        enc(None)
    finally:
        reader.close()
    return pipe.boxes


def match_crf(src, o: VideoOptions, detector) -> float:
    """Lowest CRF (in 0.5 steps) whose preprocessed sample is no larger than plain at ``match_crf``.

    The sample is the clip's first ``match_sample`` frames, preprocessed once and kept in memory."""
    reader = Reader(src)
    try:
        pipe = Pipeline(reader.frames(), str(src), o, detector)
        side = SideData(pipe.width, pipe.height, pipe.fmt, reader.time_base, o.spec.roi_every_frame,
                        pipe.colour) if o.uses_roi else None
        sample = []
        for fr in pipe:
            sample.append(fr)
            if len(sample) >= o.match_sample:
                break
    finally:
        reader.close()
    args = (pipe.fmt, pipe.width, pipe.height, reader.time_base, reader.rate)

    def size(crf: float, plain: bool) -> int:
        enc = counter(o, *args, crf, colour=pipe.colour)
        for fr in sample:
            enc(encoder_frame(fr, pipe.fmt, side, plain))
        return enc(None)

    target = size(o.match_crf, True)
    lo, hi = match_range(o)
    if size(lo, False) <= target:
        return lo
    if size(hi, False) > target:  # even the top does not fit; encode_video falls back to plain if the clip agrees
        return hi
    while hi - lo > 0.5:
        mid = math.floor(lo + hi) / 2
        if size(mid, False) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def match_range(o: VideoOptions) -> tuple[float, float]:
    """CRFs the --match-crf search may pick: below C for the pixel method (its stream is cheaper),
    up to 12 either side for ROI (finer objects cost bits that a slightly higher CRF pays back)."""
    lo, hi = o.spec.crf_range
    return max(lo, o.match_crf - 12), min(hi, o.match_crf + (12 if o.uses_roi else 0))


def mjpeg_tables(o: VideoOptions, fmt: str) -> torch.Tensor:
    """The (2, 8, 8) tables FFmpeg's MJPEG encoder really writes (read back from its DQT marker)."""
    from ..jpegsize import ZIGZAG

    cc = av.CodecContext.create("mjpeg", "w")
    configure(cc, o, fmt, 16, 16, Fraction(1, 25), Fraction(25), None)
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
