"""ROI side data: tracked boxes become per-frame regions with quantizer offsets, attached to the
frame as FFmpeg's AV_FRAME_DATA_REGIONS_OF_INTEREST, which libx264, libx265 and libvpx turn into
per-block quantizer offsets inside their own rate control.

PyAV cannot add side data to a frame, but a frame pulled from a filter graph
``buffer -> addroi -> ... -> buffersink`` carries it into ``encode()``. ``addroi`` fixes its
rectangle when the graph is built, so the graph is rebuilt whenever the regions change; regions
are snapped to the encoder's block grid and the pipeline plans them once per few frames, so that
happens at most once per plan.

Where regions overlap the first one wins, so they are listed most negative offset first: object
cores, then (with a feather) a ring of intermediate offset around each, then the whole frame at
the background offset.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import av
import numpy as np

from ..roi import RoiConfig
from ..types import Box

LEVELS = 2  # object weights are rounded to 1/LEVELS steps: VP9 has 8 segments for all distinct offsets


@dataclass(frozen=True)
class Region:
    """A rectangle in pixels and its quantizer offset (FFmpeg's qoffset, -1..1; negative = finer)."""

    x: int
    y: int
    w: int
    h: int
    qoffset: float


def coverage(boxes: Sequence[tuple[int, int, int, int]], width: int, height: int, grid: int) -> float:
    """Share of the frame's grid cells that the (snapped) rectangles cover, overlaps counted once."""
    cells = np.zeros((-(-height // grid), -(-width // grid)), bool)
    for x1, y1, x2, y2 in boxes:  # a handful of rectangles per frame
        cells[y1 // grid:-(-y2 // grid), x1 // grid:-(-x2 // grid)] = True
    return float(cells.mean())


def plan(boxes: Sequence[Box], width: int, height: int, *, grid: int, obj: float, bg: float,
         config: RoiConfig = RoiConfig()) -> list[Region]:
    """Regions for one frame, in the order the encoder must apply them (first wins).

    Offsets follow object coverage ``c``: objects get ``obj * (1 - c)`` (boosting most of the frame
    only raises the whole frame's rate) and the background ``bg + |obj| * c * (1 - c)``: the extra
    it pays grows with what the objects take (c) and with how much background there is to take
    it from (1 - c), so a sliver of background around a frame-filling object is not wrecked. A
    box's weight (class priority times confidence up to ``conf_full``) blends its core between the
    background and the object offset. A frame without boxes gets no regions: it is encoded
    exactly as plain.
    """
    cores = []
    for b in boxes:
        w = config.priority.get(b.name, config.default_priority) * min(1.0, b.conf / config.conf_full)
        w = round(min(max(w, 0.0), 1.0) * LEVELS) / LEVELS
        if w > 0:
            cores.append((_snap(b, config.margin, grid, width, height), w))
    if not cores:
        return []
    c = coverage([r for r, _ in cores], width, height, grid)
    o_obj, o_bg = obj * (1 - c), min(1.0, bg + abs(obj) * c * (1 - c))
    regions = []
    for (x1, y1, x2, y2), w in cores:
        core = o_bg + (o_obj - o_bg) * w
        regions.append((core, 0, Region(x1, y1, x2 - x1, y2 - y1, _q(core))))
        if config.feather > 0:
            f = -(-int(config.feather) // grid) * grid
            rx1, ry1, rx2, ry2 = max(0, x1 - f), max(0, y1 - f), min(width, x2 + f), min(height, y2 + f)
            regions.append(((core + o_bg) / 2, 1, Region(rx1, ry1, rx2 - rx1, ry2 - ry1, _q((core + o_bg) / 2))))
    regions.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in regions] + [Region(0, 0, width, height, _q(o_bg))]


def _snap(b: Box, margin: float, grid: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by ``margin``, outwards to whole grid cells, inside the frame."""
    x1 = max(0, int((b.x1 - margin) // grid) * grid)
    y1 = max(0, int((b.y1 - margin) // grid) * grid)
    x2 = min(width, -(-int(b.x2 + margin) // grid) * grid)
    y2 = min(height, -(-int(b.y2 + margin) // grid) * grid)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _q(v: float) -> float:
    """Offsets on a 1/256 step: stable graph keys, finer than any encoder's quantizer step."""
    return round(min(max(v, -1.0), 1.0) * 256) / 256


class SideData:
    """Attaches regions to frames of one size and format, rebuilding the addroi graph only on change.

    ``every_frame``: frames without regions get one neutral region (offset 0, the same bitstream as
    none), for encoders that cannot take a mix of frames with and without ROI data."""

    def __init__(self, width: int, height: int, fmt: str, time_base, every_frame: bool = False, colour=None):
        self.width, self.height, self.fmt = width, height, fmt
        self.colour = colour  # the frames' range and matrix, declared to the graph (vqp.video.io.Colour)
        self.neutral = [Region(0, 0, width, height, 0.0)] if every_frame else []
        self.time_base = Fraction(time_base)
        self.key: tuple | None = None
        self.graph: av.filter.Graph | None = None
        self.builds = 0

    def attach(self, frame: av.VideoFrame, regions: Sequence[Region]) -> av.VideoFrame:
        """``frame`` with the regions as side data (the frame itself when there are none)."""
        regions = regions or self.neutral
        if not regions:
            return frame
        key = tuple(regions)
        if key != self.key:
            self.graph, self.key = self._build(regions), key
            self.builds += 1
        pts = frame.pts
        frame.time_base = self.time_base  # the buffer source needs it; the sink forgets it
        self.graph.push(frame)
        out = self.graph.pull()
        out.pts, out.time_base = pts, self.time_base
        return out

    def _build(self, regions: Sequence[Region]) -> av.filter.Graph:
        g = av.filter.Graph()
        tags = {} if self.colour is None else {"colorspace": str(self.colour.space), "range": str(self.colour.range)}
        last = g.add("buffer", video_size=f"{self.width}x{self.height}", pix_fmt=str(int(av.VideoFormat(self.fmt))),
                     time_base=str(self.time_base), pixel_aspect="1/1", **tags)
        for i, r in enumerate(regions):  # the first one clears any regions the frame came with
            f = g.add("addroi", f"x={r.x}:y={r.y}:w={r.w}:h={r.h}:qoffset={r.qoffset:.6f}:clear={int(i == 0)}")
            last.link_to(f)
            last = f
        sink = g.add("buffersink")
        last.link_to(sink)
        g.configure()
        return g
