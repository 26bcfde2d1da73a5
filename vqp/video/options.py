"""What `vqp encode` can be asked to do, and the checks that turn bad requests into one-line errors."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from .. import codecs
from ..errors import VqpError
from ..roi import RoiConfig
from ..track import TrackConfig

DETECT_SIZE = 320  # detector input for video: objects in motion need less detail, and it runs on the encode's time


def bitrate(text: str) -> int:
    """'800k', '2.5M' or plain bits per second: `vqp encode --bitrate` and the service's ``bitrate=``."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmM]?)\s*", text)
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()])


@dataclass
class VideoOptions:
    """How to encode, and how the detections steer it; the defaults are `vqp encode`'s."""

    codec: str = "libx264"          # a name in vqp.codecs.CODECS
    method: str | None = None       # roi | pixel | both; None: the codec's default (vqp.codecs)
    crf: float | None = None        # x264/x265/VP9 CRF (codec default when no bitrate); mpeg4: fixed qscale 1..31
    bitrate: int | None = None      # bits/s; ABR, or two-pass when two_pass=True
    two_pass: bool = False
    match_crf: float | None = None  # output no larger than plain encode at this CRF, better objects
    preset: str = "medium"
    gop: int | None = None
    mjpeg_quality: int | None = None  # 1..100 JPEG-style quality for mjpeg (default 75)
    codec_options: dict[str, str] = field(default_factory=dict)  # passed to the encoder as they are
    preprocess: bool = True         # False = plain encode through the very same path (the baseline)
    detect_every: int = 8           # detector interval at the start; it adapts within [detect_min, detect_max]
                                    # (widened to include detect_every; min == max fixes it)
    detect_min: int = 2
    detect_max: int = 32
    # ROI method: FFmpeg qoffsets in [-1, 1] (x qp range: 51 QP for 8-bit x264/x265, 63 q for VP9)
    # (chosen on the strength sweep, RESULTS.md "ROI strength and aq-mode")
    roi_object: float = -0.15       # object cores (scaled down as objects cover more of the frame)
    roi_background: float = 0.05    # the rest of the frame (raised as objects cover more of it)
    plan_every: int = 4             # frames that share one region plan (each track's extent over them)
    # pixel method (the DCT requantizer in front of the encoder)
    strength: float = 3.0           # background step multiplier (see QuantParams)
    keep: int = 64                  # zigzag coefficients kept in background blocks
    dc_strength: float = 2.0
    quality: int = 50               # JPEG-table quality whose steps inter codecs' background is rounded to
    hold: float = 5.0               # RMS luma change under which a background macroblock is held (0: off)
    # ROI method regions: boxes as they are, snapped outwards to the encoder's blocks; a ring of
    # intermediate offset (feather) measured within a point of none, a margin no better (sweep)
    roi: RoiConfig = field(default_factory=lambda: RoiConfig(margin=0.0, feather=0.0))
    # pixel method importance map: requantized blocks need a soft edge around the objects
    importance: RoiConfig = field(default_factory=lambda: RoiConfig(margin=8.0, feather=16.0))
    track: TrackConfig = field(default_factory=TrackConfig)
    report_conf: float = 0.25       # boxes at or above it count as detections in EncodeStats (weaker ones steer too)
    device: str | None = None       # torch device for the pixel stage (default: the detector's, else cpu)
    measure_plain: bool = False     # also encode the plain stream (not written) to report its bitrate
    match_sample: int = 100         # frames of the clip that the --match-crf search encodes
    max_frames: int | None = None   # stop after this many frames (an excerpt)
    container: str | None = None    # output container format (needed when writing to a pipe)

    @property
    def spec(self) -> codecs.Codec:
        return codecs.get(self.codec)

    @property
    def resolved_method(self) -> str:
        return self.method or self.spec.method

    @property
    def uses_roi(self) -> bool:
        return self.preprocess and self.resolved_method in ("roi", "both")

    @property
    def uses_pixels(self) -> bool:
        return self.preprocess and self.resolved_method in ("pixel", "both")


@dataclass
class EncodeStats:
    """What one encode did; ``summary()`` is the line the CLI prints."""

    frames: int = 0
    frames_with_detections: int = 0
    detections_run: int = 0
    seconds: float = 0.0
    fps: float = 0.0                # processing speed: frames encoded per second of wall time
    bytes: int = 0                  # the video stream
    size: int | None = None         # the output file (container, audio and all); None when piped
    bitrate: float = 0.0
    plain_bytes: int | None = None
    plain_bitrate: float | None = None
    corrupt_packets: int = 0
    duration: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    method: str = ""
    crf: float | None = None        # the CRF used (the one found by --match-crf)
    plain_crf: float | None = None
    copied_streams: int = 0         # audio and subtitle streams copied from the input
    frames_moving: int = 0          # pixel method: frames passed through untouched because the camera moved

    def summary(self) -> str:
        s = (f"{self.frames} frames ({self.frames_with_detections} with detections), {self.width}x{self.height} "
             f"{self.codec}{f' ({self.method})' if self.method else ''}, processing speed {self.fps:.1f} frames/s, "
             f"video {self.bytes} B" + (f" (file {self.size} B)" if self.size is not None else "")
             + f", {self.bitrate / 1000:.0f} kb/s")
        if self.crf is not None:
            s += f" at crf {self.crf:g}"
        if self.plain_bitrate:
            s += (f" vs plain {self.plain_bitrate / 1000:.0f} kb/s" + (f" at crf {self.plain_crf:g}" if self.plain_crf is not None else "")
                  + f" (x{self.bytes / self.plain_bytes:.4f})")
        if self.frames_moving:
            s += f"; {self.frames_moving} frames left untouched (moving camera)"
        if self.corrupt_packets:
            s += f"; skipped {self.corrupt_packets} corrupt packets"
        return s


def validate(o: VideoOptions) -> None:
    """Raise VqpError for any option that the chosen codec cannot honour (never ignore one silently)."""
    c = o.spec
    if o.method is not None and o.method not in codecs.METHODS:
        raise VqpError(f"unknown method {o.method!r}; choose one of {', '.join(codecs.METHODS)}")
    if o.resolved_method in ("roi", "both") and not c.roi:
        raise VqpError(f"{o.codec} reads no region-of-interest data; use method 'pixel' with it")
    if o.uses_roi and str(o.codec_options.get("aq-mode", "1")) in ("0", "none"):
        raise VqpError("libx264 ignores ROI offsets with aq-mode 0; use aq-mode 1-3 or method 'pixel'")
    if o.bitrate is not None and o.bitrate <= 0:
        raise VqpError(f"bitrate must be positive, got {o.bitrate}")
    if not 0 <= o.report_conf <= 1:
        raise VqpError(f"conf must be between 0 and 1, got {o.report_conf}")
    if sum(x is not None for x in (o.crf, o.bitrate, o.match_crf)) > 1:
        raise VqpError("give at most one of crf, bitrate and match-crf")
    if o.bitrate is not None and codecs.BITRATE not in c.rate:
        raise VqpError(f"{o.codec} takes no bitrate here; use its quality setting")
    if o.two_pass and o.bitrate is None:
        raise VqpError("two-pass needs a bitrate (--bitrate)")
    if o.two_pass and codecs.TWO_PASS not in c.rate:
        raise VqpError(f"two-pass needs one of: "
                       f"{', '.join(n for n, k in codecs.CODECS.items() if codecs.TWO_PASS in k.rate)}")
    if o.match_crf is not None and codecs.CRF not in c.rate:
        raise VqpError(f"match-crf works with {', '.join(n for n, k in codecs.CODECS.items() if codecs.CRF in k.rate)}")
    lo, hi = c.crf_range
    for name, v in (("crf", o.crf), ("match-crf", o.match_crf)):
        if v is None:
            continue
        if codecs.CRF not in c.rate and codecs.QSCALE not in c.rate or o.codec == "mjpeg":
            raise VqpError(f"{o.codec} takes no {name}; use --quality")
        if not lo <= v <= hi:
            what = "a fixed quantizer" if codecs.QSCALE in c.rate else name
            raise VqpError(f"{o.codec} takes {what} between {lo:g} and {hi:g}, got {v:g}")
    if o.mjpeg_quality is not None and o.codec != "mjpeg":
        raise VqpError("quality is for mjpeg; use crf or bitrate")
    if o.mjpeg_quality is not None and not 1 <= o.mjpeg_quality <= 100:
        raise VqpError(f"mjpeg quality must be between 1 and 100, got {o.mjpeg_quality}")
    if min(o.detect_every, o.detect_min) < 1 or o.detect_max < o.detect_min:
        raise VqpError(f"detect-every must be at least 1, got {o.detect_every}")
    if not (-1 <= o.roi_object <= 0 and 0 <= o.roi_background <= 1):
        raise VqpError(f"ROI offsets: object in [-1, 0] and background in [0, 1], got {o.roi_object:g}, {o.roi_background:g}")
    if o.max_frames is not None and o.max_frames < 1:
        raise VqpError(f"frames must be at least 1, got {o.max_frames}")
    if o.gop is not None and o.gop < 1:
        raise VqpError(f"gop (keyframe interval) must be at least 1 frame, got {o.gop}")
    if not o.strength >= 1:
        raise VqpError(f"strength (background step multiplier) must be at least 1, got {o.strength:g}")
    if not o.hold >= 0:
        raise VqpError(f"hold must be 0 (off) or more RMS levels, got {o.hold:g}")
    check_device(o.device)
    check_encoder(o)


def check_device(device: str | None) -> None:
    """A torch device name that this machine has, or a one-line error (before any model loads)."""
    if device is None:
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise VqpError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise VqpError(f"device {device}: this machine has {have or 'no'} CUDA GPU{'s' if have != 1 else ''}; "
                       "use --device cpu" + (" or cuda:0" if have else ""))
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise VqpError(f"device {device}: MPS is not available here; use --device cpu")
    if d.type not in ("cpu", "cuda", "mps"):
        raise VqpError(f"device {device}: vqp runs on cpu, cuda or mps")


def check_encoder(o: VideoOptions) -> None:
    """Open the encoder once, on a tiny frame, with every option the encode will give it, so a
    refused value or an unknown option fails before any work (vqp.video.io.configure says how)."""
    import av

    from .io import configure  # io builds on this module

    crf = next((v for v in (o.crf, o.match_crf) if v is not None), o.spec.default_crf)
    configure(av.CodecContext.create(o.codec, "w"), o, o.spec.fmt420, 64, 64, Fraction(1, 25), Fraction(25), crf)
