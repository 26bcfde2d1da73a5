"""``--preview``: a strip of frames with the ROI map and the boxes drawn over them, so a user sees
where the bits went (green: finer than plain, red: coarser; the pixel method shows the frame as
requantized, blocky where the background gave its bits up)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw

from ..errors import VqpError
from ..imageio import write_atomic
from .io import Colour, to_frame
from .pipeline import Frame

WIDTH = 320  # each frame's width in the strip


class Preview:
    """Keeps ``count`` frames spread over the clip (every ``every``-th when its length is unknown)."""

    def __init__(self, total: int | None, count: int = 6, every: int = 50):
        self.count = count
        self.picks = set(np.linspace(0, total - 1, count).round().astype(int).tolist()) if total else None
        self.every = every
        self.tiles: list[Image.Image] = []

    def offer(self, index: int, fr: Frame) -> None:
        if self.picks is not None and index not in self.picks:
            return
        if self.picks is None and (index % self.every or len(self.tiles) >= self.count):
            return
        self.tiles.append(self.tile(fr))

    @staticmethod
    def tile(fr: Frame) -> Image.Image:
        """The frame as encoded (the pixel method's requantized planes), tinted by its regions, with boxes."""
        v = fr.video
        if fr.planes is not None:
            v = to_frame(fr.planes, v.format.name, v.width, v.height, fr.pts, v.time_base, Colour.of(v))
        rgb = v.to_ndarray(format="rgb24").astype(np.float32)
        h, w = rgb.shape[:2]
        tint = np.zeros((h, w), np.float32)  # -1 finer ... +1 coarser
        for r in reversed(fr.regions):  # the first region wins: paint it last
            tint[r.y:r.y + r.h, r.x:r.x + r.w] = r.qoffset
        if fr.regions:
            scale = max(1e-6, float(np.abs(tint).max()))
            t = (tint / scale)[..., None]
            colour = np.where(t < 0, np.array([40, 220, 60], np.float32), np.array([230, 40, 40], np.float32))
            rgb = rgb * (1 - 0.35 * np.abs(t)) + colour * 0.35 * np.abs(t)
        im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for b in fr.boxes:
            d.rectangle([b.x1, b.y1, b.x2, b.y2], outline=(255, 255, 0), width=max(1, w // 240))
            d.text((b.x1 + 2, b.y1 + 1), f"{b.name} {b.conf:.2f}", fill=(255, 255, 0))
        return im.resize((WIDTH, max(1, round(h * WIDTH / w))))

    def save(self, path: str | os.PathLike) -> None:
        if not self.tiles:
            raise VqpError("no frames to preview")
        cols = min(3, len(self.tiles))
        rows = -(-len(self.tiles) // cols)
        th = self.tiles[0].height
        strip = Image.new("RGB", (cols * WIDTH, rows * th), (0, 0, 0))
        for i, t in enumerate(self.tiles):
            strip.paste(t, ((i % cols) * WIDTH, (i // cols) * th))
        buf = io.BytesIO()
        fmt = "JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG"
        strip.save(buf, fmt)
        write_atomic(path, buf.getvalue())
