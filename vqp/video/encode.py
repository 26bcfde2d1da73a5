"""``encode_video``: one call from an input file (or stdin) to a finished output file (or stdout)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Callable

import av
import numpy as np

from ..errors import VqpError
from ..imageio import publish, reserve_temp
from ..roi import ROI_CONF
from ..types import Box, Detections
from .io import STDIO, Reader, Writer, counter, message, output_format, stdin, stdout, tags
from .options import DETECT_SIZE, EncodeStats, VideoOptions, validate
from .pipeline import Pipeline
from .ratecontrol import encoder_frame, first_pass, match_crf, match_range
from .roi_side_data import SideData

log = logging.getLogger("vqp")


def encode_video(src: str | os.PathLike, dst: str | os.PathLike | BinaryIO, options: VideoOptions = VideoOptions(), *,
                 detector=None, progress: bool | Callable[[float | None], None] = False,
                 preview: str | os.PathLike | None = None) -> EncodeStats:
    """Encode ``src`` to ``dst`` with object-aware rate allocation; the output appears only when complete.

    ``src`` / ``dst`` may be ``"-"`` for stdin / stdout, and ``dst`` a binary stream (then
    ``options.container`` names the output format). ``preview`` writes a PNG strip of frames
    with the regions and boxes drawn over them.
    """
    o = options
    validate(o)
    to_pipe, from_pipe = hasattr(dst, "write") or str(dst) == STDIO, str(src) == STDIO
    if str(dst) == STDIO:
        dst = stdout()
    output_format(dst, o.container)
    if not from_pipe and not to_pipe and Path(dst).exists() and Path(src).exists() \
            and Path(dst).resolve() == Path(src).resolve():
        raise VqpError("output is the input file; choose another name so the original is kept")
    if o.preprocess and detector is None:
        from ..detect import load_detector

        detector = load_detector(imgsz=DETECT_SIZE, fast=True, device=o.device, conf=ROI_CONF)
    spool = None
    if from_pipe and (o.two_pass or o.match_crf is not None):  # several passes need the input twice
        spool = tempfile.NamedTemporaryFile(prefix="vqp-stdin-", suffix=".bin", delete=False)
        with spool:
            shutil.copyfileobj(stdin(), spool)
        src = spool.name
    try:
        return _encode_video(src if not from_pipe or spool else stdin(), dst, o, detector, progress, preview, to_pipe)
    finally:
        if spool:
            os.unlink(spool.name)


def _encode_video(src, dst, o: VideoOptions, detector, progress, preview, to_pipe: bool) -> EncodeStats:
    crf = o.crf if o.crf is not None else o.spec.default_crf
    t0 = time.perf_counter()
    cache = plain_crf = None
    if o.match_crf is not None:
        crf, plain_crf = match_crf(src, o, detector), o.match_crf
    stats_file = None
    try:
        if o.two_pass:
            if to_pipe:
                fd, stats_file = tempfile.mkstemp(prefix="vqp-2pass-", suffix=".log")
                os.close(fd)
            else:
                stats_file = reserve_temp(dst, f".part{Path(dst).suffix}")
            cache = first_pass(src, o, detector, stats_file)
        first = True
        while True:
            st, cache = _pass(src, dst, o, detector, cache, crf, progress, stats_file,
                              plain_crf if plain_crf is not None else (crf if o.measure_plain else None),
                              preview, to_pipe, first)
            first = False
            if o.match_crf is None or st.bytes <= st.plain_bytes or not o.preprocess:
                break
            if crf + 1 <= match_range(o)[1]:  # the sample under-estimated the clip: one step up
                crf += 1
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
    st.crf = crf if o.codec != "mjpeg" and not o.bitrate else None
    st.plain_crf = plain_crf
    st.method = o.resolved_method if o.preprocess else "plain"
    return st


def _pass(src, dst, o: VideoOptions, detector, cache, crf, progress, stats_file, plain_crf, preview,
          to_pipe: bool, notes: bool = True) -> tuple[EncodeStats, list[tuple[list[Box], list[Box]]]]:
    """One full pass writing ``dst``; also returns every frame's boxes for reuse. ``notes``: warn
    about what the output cannot keep of the source (once per encode, not per pass)."""
    from tqdm import tqdm

    reader = Reader(src)
    tmp = None if to_pipe else reserve_temp(dst, f".part{Path(dst).suffix}")
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
        if notes:
            for n in pipe.notes:
                log.warning("vqp: %s", n)
        writer = Writer(dst if to_pipe else tmp, o, fmt, w, h, reader, crf, pipe.rotation, flags, stats_file,
                        pipe.colour)
        for p in early:
            writer.add_other(p)
        side = SideData(w, h, fmt, reader.time_base, o.spec.roi_every_frame, pipe.colour) if o.uses_roi else None
        plain = None
        if plain_crf is not None:
            po = replace(o, match_crf=None, two_pass=False)
            plain = counter(po, fmt, w, h, reader.time_base, reader.rate, plain_crf, colour=pipe.colour)
        shots = None
        total = min(filter(None, (reader.total, o.max_frames)), default=None)  # frames this pass will see
        if preview:
            from .preview import Preview

            shots = Preview(total)
        st = EncodeStats(width=w, height=h, codec=o.codec, copied_streams=len(writer.copied))
        first = last = None
        bar = tqdm(total=total, unit="f", disable=not progress or callable(progress), desc="-" if to_pipe else Path(dst).name,
                   leave=False)
        for fr in pipe:
            writer.add(encoder_frame(fr, fmt, side))
            if plain:
                plain(encoder_frame(fr, fmt, None, plain=True))
            if shots:
                shots.offer(st.frames, fr)
            first = fr.pts if first is None else first
            last = fr.pts
            st.frames += 1
            bar.update()
            if callable(progress):  # e.g. the service's job runner: fraction done, None if the length is unknown
                progress(st.frames / total if total else None)
        bar.close()
        writer.close()
        if shots:
            shots.save(preview)
        if tmp:
            lost = pipe.colour.lost(tags(tmp))
            if lost and notes:
                log.warning("vqp: %s: %s in %s cannot carry the source's %s; a .mkv output keeps them", dst, o.codec,
                            Path(dst).suffix or o.container, ", ".join(lost))
            publish(tmp, dst)
    except BaseException as e:
        if writer is not None:
            try:
                writer.container.close()
            except Exception:
                pass
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, av.FFmpegError):
            raise VqpError(f"encoding {src} failed ({message(e)})") from None
        if isinstance(e, OSError):
            raise VqpError(f"cannot write {dst}: {e.strerror or e}") from None
        raise
    finally:
        reader.close()
    st.bytes = writer.bytes
    st.frames_with_detections = pipe.with_detections
    st.detections_run = pipe.runs
    st.frames_moving = pipe.moving
    st.corrupt_packets = reader.corrupt + writer.skipped
    st.size = None if to_pipe else os.path.getsize(dst)
    st.duration = float((last - first) * reader.time_base + 1 / reader.rate)
    st.bitrate = st.bytes * 8 / st.duration
    if plain:
        st.plain_bytes = plain(None)
        st.plain_bitrate = st.plain_bytes * 8 / st.duration
    if st.corrupt_packets:
        log.warning("vqp: %s: skipped %d corrupt packets", src, st.corrupt_packets)
    return st, pipe.boxes


def detect_clip(src: str | os.PathLike, detector=None, every: int = 1, batch: int = 8,
                limit: int | None = None) -> list[Detections]:
    """Raw detector boxes on the original frames (every ``every``-th frame, others empty): the
    honest object region for measuring a clip's encodes."""
    if detector is None:
        from ..detect import load_detector

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
