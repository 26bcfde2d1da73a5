"""``vqp filter``: the pipeline as a y4m-in, y4m-out stage between two ffmpeg processes.

    ffmpeg -i in.mp4 -f yuv4mpegpipe - | vqp filter | ffmpeg -i - -c:v libx264 out.mp4

Frames stream through in chunks of one detection interval (at most ``detect_max`` frames), so memory stays
bounded; the frame size, rate and pixel format are kept (odd 4:2:0 sizes lose their last
row or column, since 4:2:0 encoders need even sizes).

y4m carries no side data, so the filter always uses the pixel method (the DCT requantizer and the
still-background hold); for the encoder-ROI method pipe a container into ``vqp encode - -`` instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import BinaryIO

from .errors import VqpError
from .roi import ROI_CONF
from .video import DETECT_SIZE, Pipeline, VideoOptions, validate
from .video.io import planes, to_frame
from .y4m import Y4mHeader, read_frames, read_header, write_frame


@dataclass
class FilterStats:
    frames: int = 0
    frames_with_detections: int = 0
    seconds: float = 0.0
    fps: float = 0.0

    def summary(self) -> str:
        return (f"{self.frames} frames ({self.frames_with_detections} with detections), "
                f"{self.fps:.1f} fps")


def filter_y4m(inp: BinaryIO, out: BinaryIO, options: VideoOptions = VideoOptions(), *, detector=None) -> FilterStats:
    """Read y4m from ``inp``, write the preprocessed y4m to ``out`` until EOF."""
    o = replace(options, method="pixel")
    validate(o)
    t0 = time.perf_counter()
    head = read_header(inp)
    tb = 1 / head.rate
    frames = (to_frame(p, head.fmt, head.width, head.height, i, tb) for i, p in enumerate(read_frames(inp, head)))
    if o.preprocess and detector is None:
        from .detect import load_detector

        detector = load_detector(imgsz=DETECT_SIZE, fast=True, conf=ROI_CONF)
    st = FilterStats()
    try:
        pipe = Pipeline(frames, "<stdin>", o, detector, fmt=head.fmt)
    except VqpError as e:
        if "no video frames" not in str(e):
            raise
        out.write(head.encode())  # a stream with no frames gives one with no frames
        out.flush()
        return st
    out.write(Y4mHeader(pipe.width, pipe.height, head.fmt, head.rate, head.tokens).encode())
    for fr in pipe:
        write_frame(out, fr.planes if fr.planes is not None else planes(fr.video, head.fmt, pipe.width, pipe.height))
        st.frames += 1
    out.flush()
    st.frames_with_detections = pipe.with_detections
    st.seconds = time.perf_counter() - t0
    st.fps = st.frames / st.seconds if st.seconds else 0.0
    return st
