"""Codec registry: everything vqp knows about each video encoder, in one place.

The CLI's ``--codec`` choices, option validation, the encoder setup, the service and the benchmark
all read this table, so adding an encoder means adding one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

# Rate-control modes an encoder can run in.
CRF, BITRATE, TWO_PASS, QSCALE = "crf", "bitrate", "two_pass", "qscale"


@dataclass(frozen=True)
class Codec:
    """One FFmpeg video encoder as vqp drives it.

    ``grid`` is the block the encoder quantizes by (macroblock, JPEG block or ROI map cell);
    ``roi`` says whether it reads per-frame region-of-interest side data, and ``method`` is the
    preprocessing the benchmark found best for it ("roi": drive the encoder's own quantizer,
    "pixel": requantize the frame's DCT blocks in front of it).
    """

    name: str
    grid: int
    inter: bool                        # motion-compensated: a held (unchanged) block costs ~nothing
    fmt420: str
    fmt444: str | None                 # kept for 4:4:4 sources (None: always 4:2:0)
    roi: bool
    method: str                        # default preprocessing
    rate: frozenset                    # rate-control modes it accepts
    crf_range: tuple[float, float] = (0, 51)
    default_crf: float | None = 23.0
    options: dict = field(default_factory=dict)      # always set (user options override; -params add to them)
    roi_every_frame: bool = False      # needs ROI data on every frame once it had some (see libx265 below)
    containers: str = ".mp4 .mkv .mov"
    deep: bool = False                 # codes 10-bit sources at 10 bits where this build's encoder takes them
    jfif: bool = False                 # samples are always JFIF: full range, BT.601 matrix

    def pix_fmt(self, is444: bool, depth: int) -> str:
        """The encoder's format for a source of this chroma layout and bit depth: 10-bit (x264
        High 10, x265 Main 10, VP9 profile 2) when the codec is ``deep`` and this FFmpeg build's
        encoder lists it, else 8-bit."""
        base = self.fmt444 if is444 and self.fmt444 else self.fmt420
        if depth > 8 and self.deep and base + "10le" in formats(self.name):
            return base + "10le"
        return base

    def roi_scale(self, depth: int) -> float:
        """Factor on ROI offsets at this bit depth. FFmpeg's x264/x265 wrappers multiply a region's
        qoffset by the QP range, 51 + 6 per bit above 8, while one QP step is the same quantizer
        ratio at every depth: scaled, an offset moves the quantizer as far at 10 bits as at 8."""
        return 51 / (51 + 6 * (depth - 8)) if self.name in ("libx264", "libx265") else 1.0

    def configure(self, cc, *, crf: float | None, bitrate: int | None, preset: str, quality: int | None,
                  gop: int | None, extra: dict[str, str]) -> None:
        """Set rate control and options on a PyAV CodecContext (size, format and timing are set by the caller)."""
        opts: dict[str, str] = dict(self.options)
        if self.name in ("libx264", "libx265"):
            opts["preset"] = preset
        if bitrate:
            cc.bit_rate = int(bitrate)
            if self.name == "libvpx-vp9":
                opts["b"] = str(int(bitrate))
        elif self.name == "mjpeg":
            opts["qmin"] = opts["qmax"] = str(mjpeg_qscale(quality or 75))
        elif self.name == "mpeg4":
            opts["qmin"] = opts["qmax"] = str(int(round(crf)))
        else:
            opts["crf"] = f"{crf:g}"
            if self.name == "libvpx-vp9":
                opts["b"] = "0"  # constant quality
        if gop:
            cc.gop_size = int(gop)
        for k, v in extra.items():  # x265-params and the like add to the registry's, which stay
            opts[k] = f"{opts[k]}:{v}" if k.endswith("-params") and opts.get(k) else v
        cc.options = opts


@lru_cache(maxsize=None)
def formats(name: str) -> frozenset[str]:
    """Pixel formats this FFmpeg build's encoder takes."""
    import av

    return frozenset(f.name for f in av.Codec(name, "w").video_formats or ())


def deep_codecs() -> list[str]:
    """The registry's encoders that keep 10-bit sources in this build."""
    return [n for n, c in CODECS.items() if c.pix_fmt(False, 10) != c.fmt420]


def mjpeg_qscale(quality: int) -> int:
    """JPEG-style quality (1..100) to FFmpeg's MJPEG qscale: its step is qscale/8 times its matrix,
    libjpeg's is (scale %) times its table, so qscale = scale / 12.5."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return int(min(max(round(scale / 12.5), 1), 31))


CODECS: dict[str, Codec] = {c.name: c for c in (
    # x264 reads ROI only with adaptive quantization on; its default aq-mode 1 measured best with
    # ROI (benchmarks/RESULTS.md, "ROI strength and aq-mode"), so vqp keeps it.
    Codec("libx264", 16, True, "yuv420p", "yuv444p", roi=True, method="roi",
          rate=frozenset({CRF, BITRATE, TWO_PASS}), deep=True),
    # libx265 (FFmpeg 8.1 wrapper) crashes when frames with ROI data and frames without are mixed:
    # frames without detections get one neutral region (offset 0), which encodes bit-identically.
    Codec("libx265", 16, True, "yuv420p", "yuv444p", roi=True, method="roi",
          rate=frozenset({CRF, BITRATE}), default_crf=28.0, options={"x265-params": "log-level=error"},
          roi_every_frame=True, deep=True),
    # libvpx honours ROI maps only in realtime mode, so vqp runs VP9 there, plain or not.
    Codec("libvpx-vp9", 8, True, "yuv420p", "yuv444p", roi=True, method="roi",
          rate=frozenset({CRF, BITRATE}), crf_range=(0, 63), default_crf=36.0,
          options={"deadline": "realtime", "cpu-used": "7", "row-mt": "1"}, containers=".webm .mkv .mp4", deep=True),
    Codec("mpeg4", 16, True, "yuv420p", None, roi=False, method="pixel",
          rate=frozenset({QSCALE, BITRATE}), crf_range=(1, 31), default_crf=4.0),
    Codec("mjpeg", 8, False, "yuvj420p", "yuvj444p", roi=False, method="pixel",
          rate=frozenset({QSCALE}), default_crf=None, containers=".avi .mkv .mov", jfif=True),
)}

METHODS = ("roi", "pixel", "both")


def get(name: str) -> Codec:
    from .errors import VqpError

    try:
        return CODECS[name]
    except KeyError:
        raise VqpError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None
