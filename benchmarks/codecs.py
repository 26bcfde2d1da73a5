"""Codecs under test, as declared in a benchmark config: each turns one reference and one grid value
into encoded bytes (images) or an encoded file (clips), through vqp's own library calls."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vqp.errors import VqpError
from vqp.imageio import Picture
from vqp.jpeg import ENCODERS, get_encoder, save_jpeg
from vqp.types import Detections

from vqp.codecs import CODECS as VIDEO_CODECS

VIDEO_ENCODERS = tuple(VIDEO_CODECS)


@dataclass(frozen=True)
class Codec:
    """One curve: an encoder, with or without vqp in front, swept over ``grid``.

    ``equal_bytes`` names the plain codec whose file size at the same grid point vqp must not exceed:
    images pass it as ``save_jpeg(target_size=...)``; clips use vqp.video's ``match_crf`` (a plain
    encode with the same encoder and options at that CRF), so both curves meet point by point.
    ``anchors`` are the codecs this one's BD-rates are computed against. ``options`` go to the
    encoder as they are; ``settings`` are vqp.video.VideoOptions fields (method, roi_object, ...).
    ``model`` is the detector that steers this vqp codec (default: the config's), so one run can set
    an original and a repaired checkpoint side by side; the measured object region does not change.
    ``detector`` (images) sets how the steering detector runs for this codec: ``imgsz``, ``augment``
    (test-time augmentation), ``conf``; the time it takes is recorded per image (``detect_seconds``).
    ``detector: {oracle: true}`` steers with the ground-truth boxes instead (confidence 1): an upper
    bound on what better recall can buy.
    """

    name: str
    encoder: str
    grid: tuple
    vqp: bool = False
    equal_bytes: str | None = None
    anchors: tuple = ()
    options: dict = field(default_factory=dict, hash=False, compare=False)
    settings: dict = field(default_factory=dict, hash=False, compare=False)
    model: str | None = None
    detector: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def kind(self) -> str:
        return "image" if self.encoder in ENCODERS else "video"

    @property
    def param(self) -> str:
        """Name of the grid axis."""
        if self.kind == "image":
            return "bytes_of_" + self.equal_bytes if self.equal_bytes else "quality"
        return "quality" if self.encoder == "mjpeg" else "match_crf" if self.equal_bytes else "crf"

    def key(self) -> str:
        """Everything that changes this codec's output, for the cache of finished points."""
        return repr((self.encoder, self.vqp, self.equal_bytes, sorted(self.options.items()))
                    + ((tuple(sorted(self.settings.items())),) if self.settings else ())
                    + ((model_id(self.model),) if self.model else ())
                    + ((tuple(sorted(self.detector.items())),) if self.detector else ()))

    @classmethod
    def from_config(cls, d: dict, default_grid: dict) -> "Codec":
        d = dict(d)
        for k in ("name", "encoder"):
            if k not in d:
                raise VqpError(f"codec entry {d} has no {k!r}")
        enc = d["encoder"]
        if enc not in ENCODERS and enc not in VIDEO_ENCODERS:
            raise VqpError(f"codec {d['name']}: unknown encoder {enc!r}; choose from "
                           f"{', '.join([*ENCODERS, *VIDEO_ENCODERS])}")
        kind = "image" if enc in ENCODERS else ("mjpeg" if enc == "mjpeg" else "video")
        grid = d.pop("grid", None) or default_grid.get(kind)
        if not grid:
            raise VqpError(f"codec {d['name']}: no grid (give 'grid' or a default 'grid: {{{kind}: [...]}}')")
        unknown = set(d) - {"name", "encoder", "vqp", "equal_bytes", "anchors", "options", "settings", "model",
                           "detector"}
        if unknown:
            raise VqpError(f"codec {d['name']}: unknown keys {', '.join(sorted(unknown))}")
        if d.get("model") and (not d.get("vqp") or kind == "image"):
            raise VqpError(f"codec {d['name']}: 'model' sets the detector of a vqp clip codec only")
        det = dict(d.get("detector") or {})
        known = det == {"oracle": True} or not set(det) - {"imgsz", "augment", "conf"}
        if det and (not d.get("vqp") or kind != "image" or not known):
            raise VqpError(f"codec {d['name']}: 'detector' takes imgsz, augment and conf, or only oracle: true, "
                           "for a vqp image codec")
        return cls(d["name"], enc, tuple(grid), bool(d.get("vqp", False)), d.get("equal_bytes"),
                   tuple(d.get("anchors", ())), dict(d.get("options", {})), dict(d.get("settings", {})),
                   d.get("model"), det)


@lru_cache(maxsize=None)
def model_id(model: str) -> str:
    """The resolved checkpoint and a digest of its bytes: a retrained file at the same path must not
    reuse the cached points of the old one."""
    from vqp.models import resolve_model

    src = Path(resolve_model(model).source)
    files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file())  # an exported folder
    return f"{src.name}@{hashlib.sha1(b''.join(f.read_bytes() for f in files)).hexdigest()[:10]}"


def encode_image(codec: Codec, rgb: np.ndarray, value, dets: Detections, budget: int | None = None) -> tuple[bytes, int]:
    """(JPEG bytes, encoder quality used). ``budget`` is the plain codec's size for equal-bytes vqp."""
    if not codec.vqp:
        return get_encoder(codec.encoder).encode(rgb, int(value)), int(value)
    if codec.equal_bytes:
        r = save_jpeg(Picture(rgb), target_size=budget, encoder=codec.encoder, detections=dets, **codec.options)
    else:
        r = save_jpeg(Picture(rgb), quality=int(value), encoder=codec.encoder, detections=dets, **codec.options)
    return r.data, r.quality


def decode_image(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def read_frames(path: Path, every: int = 1) -> tuple[list[np.ndarray], float]:
    """Every ``every``-th decoded frame as RGB, and the frame rate (PyAV)."""
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 25)
            frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(s)) if i % every == 0]
    except av.FFmpegError as e:
        raise VqpError(f"{path}: cannot decode ({e})") from None
    return frames, fps


def encode_clip(codec: Codec, value, src: Path, dst: Path, detector):
    """Encode a clip with vqp.video (``preprocess`` on for vqp codecs); returns its EncodeStats."""
    from vqp.video import VideoOptions, encode_video

    grid = {"mjpeg_quality": int(value)} if codec.encoder == "mjpeg" else {codec.param: float(value)}
    from vqp.roi import RoiConfig

    settings = dict(codec.settings)
    if "roi" in settings:  # a mapping of RoiConfig fields (margin, feather, ...)
        settings["roi"] = RoiConfig(**settings["roi"])
    o = VideoOptions(codec=codec.encoder, preprocess=codec.vqp, codec_options=dict(codec.options),
                     **settings, **grid)
    return encode_video(src, dst, o, detector=detector if codec.vqp else None)
