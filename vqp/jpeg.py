"""JPEG output: detector-driven quantization in front of libjpeg-turbo (Pillow) or jpegli.

``save_jpeg`` is the library call. With ``match_quality=Q`` the output is never larger than the
plain encoder's file at Q; with ``target_size=N`` never larger than N bytes. In both cases the
encoder quality and the background strength are searched jointly for the best object quality
that fits. Quantization steps come from the encoder's own tables at the quality it will use, so
background coefficients land on multiples of the encoder's step and survive it.
"""
from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .detect import Detector, shared_detector
from .errors import VqpError
from .imageio import Picture, load_image, write_atomic
from .metrics import luma
from .quant import Prepared, QuantParams, annex_k_tables, prepare, requantize
from .roi import ROI_CONF, RoiConfig, roi_map
from .types import Detections

# Background settings tried by the search, gentlest first: (step multiplier, zigzag coefficients kept).
# Measured on halved coco128 (benchmarks/RESULTS.md): the hardest steps win most often.
LADDER = (QuantParams(2, 64), QuantParams(3, 28), QuantParams(4, 15), QuantParams(6, 10),
          QuantParams(8, 6), QuantParams(12, 3), QuantParams(16, 1), QuantParams(24, 1, dc_strength=4))
DEFAULT_QUALITY = 75
# Share of background PSNR in the search score: 0.1 gave up ~0.25 dB of object gain for ~1.4 dB
# less background loss on coco128 (benchmarks/RESULTS.md).
BACKGROUND_WEIGHT = 0.1


class Encoder(Protocol):
    name: str
    subsampling: str

    def encode(self, rgb: np.ndarray, quality: int, exif: bytes | None = None, icc: bytes | None = None) -> bytes: ...

    def tables(self, quality: int) -> torch.Tensor: ...


class PillowEncoder:
    """libjpeg-turbo through Pillow, with its defaults (Annex K tables, 4:2:0)."""

    name = "pillow"
    subsampling = "4:2:0"

    def encode(self, rgb, quality, exif=None, icc=None):
        buf = io.BytesIO()
        extra = {k: v for k, v in (("exif", exif), ("icc_profile", icc)) if v}
        Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality), **extra)
        return buf.getvalue()

    def tables(self, quality):
        return annex_k_tables(quality)


class JpegliEncoder:
    """jpegli through pyjpegli; its tables are read back from an encode (they do not depend on content)."""

    name = "jpegli"
    subsampling = "4:2:0"

    def __init__(self):
        import pyjpegli

        self._jpegli = pyjpegli

    def encode(self, rgb, quality, exif=None, icc=None):
        h, w = rgb.shape[:2]
        data = self._jpegli.encode(np.ascontiguousarray(rgb).tobytes(), w, h, int(quality))
        return insert_metadata(data, exif, icc)

    @lru_cache(maxsize=None)
    def tables(self, quality):
        q = Image.open(io.BytesIO(self.encode(np.zeros((16, 16, 3), np.uint8), quality))).quantization
        return torch.tensor([q[0], q.get(1, q[0])], dtype=torch.float32).reshape(2, 8, 8)


ENCODERS = {"pillow": PillowEncoder, "jpegli": JpegliEncoder}


@lru_cache(maxsize=None)
def get_encoder(name: str) -> Encoder:
    if name not in ENCODERS:
        raise VqpError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS[name]()


def insert_metadata(jpeg: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    """Insert EXIF (APP1) and ICC (APP2, chunked) segments after SOI and any APP0 (JFIF) segment."""
    if not exif and not icc:
        return jpeg
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":
        pos = 4 + struct.unpack(">H", jpeg[4:6])[0]
    segs = []
    if exif:
        body = exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif
        if len(body) <= 65533:
            segs.append(b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body)
    if icc:
        chunks = [icc[i:i + 65519] for i in range(0, len(icc), 65519)]
        for i, c in enumerate(chunks):
            body = b"ICC_PROFILE\x00" + bytes([i + 1, len(chunks)]) + c
            segs.append(b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body)
    return jpeg[:pos] + b"".join(segs) + jpeg[pos:]


@dataclass
class JpegResult:
    """What ``save_jpeg`` produced and why."""

    data: bytes
    quality: int                      # encoder quality actually used
    params: QuantParams | None        # background quantization, None when the image passed through
    detections: Detections
    plain_bytes: int | None = None    # the plain encoder's size at the reference quality
    reference_quality: int | None = None
    candidates: list[dict] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)

    def summary(self) -> dict:
        return {"bytes": self.size, "quality": self.quality, "plain_bytes": self.plain_bytes,
                "reference_quality": self.reference_quality,
                "ratio": round(self.size / self.plain_bytes, 4) if self.plain_bytes else None,
                "strength": self.params.strength if self.params else None,
                "keep": self.params.keep if self.params else None,
                "detections": [b.to_dict() for b in self.detections.boxes]}


def _wpsnr(err: torch.Tensor, w: torch.Tensor) -> float:
    mse = float((err * w).sum() / w.sum().clamp(min=1e-9))
    return 10 * math.log10(255 ** 2 / max(mse, 1e-10))


class _Search:
    """Holds one image's prepared DCT and answers 'size and object error at (quality, params)'."""

    def __init__(self, pic: Picture, importance: torch.Tensor, enc: Encoder, device):
        self.pic, self.enc = pic, enc
        rgb = torch.from_numpy(np.require(pic.rgb, requirements="W")).permute(2, 0, 1)[None].to(device)
        self.prep: Prepared = prepare(rgb, enc.subsampling)
        self.imp = importance
        h, w = pic.rgb.shape[:2]
        self.weight = importance[0].repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w].cpu()
        self.y = luma(pic.rgb)
        self._cache: dict = {}

    def encode(self, quality: int, params: QuantParams | None) -> bytes:
        key = (quality, params)
        if key not in self._cache:
            rgb = self.pic.rgb
            if params is not None:
                t = self.enc.tables(quality)
                rgb = requantize(self.prep, self.imp, t, params)[0].permute(1, 2, 0).cpu().numpy()
            self._cache[key] = self.enc.encode(np.ascontiguousarray(rgb), quality, self.pic.exif, self.pic.icc)
        return self._cache[key]

    def score(self, data: bytes, background_weight: float) -> tuple[float, float]:
        """(search score, object PSNR-Y): PSNR-Y weighted by importance, plus a small share of the
        background's PSNR-Y so that marginal object gains do not buy a wrecked background."""
        dec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        err = (luma(dec) - self.y) ** 2
        obj = _wpsnr(err, self.weight)
        return obj + background_weight * _wpsnr(err, 1 - self.weight), obj

    def best_quality(self, params: QuantParams | None, budget: int, lo: int, hi: int = 100) -> int | None:
        """Largest quality in [lo, hi] whose file fits the budget (size grows with quality)."""
        if len(self.encode(lo, params)) > budget:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.encode(mid, params)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _bounded(name: str, value, hi: int) -> int | None:
    """An optional integer option in [1, hi], or a one-line error."""
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise VqpError(f"{name} must be an integer, got {value!r}") from None
    if not 1 <= v <= hi:
        raise VqpError(f"{name} must be between 1 and {hi}, got {value}")
    return v


def save_jpeg(image, dest=None, *, quality: int | None = None, match_quality: int | None = None,
              target_size: int | None = None, encoder: str = "pillow", detector: Detector | None = None,
              model: str | None = None, classes: Sequence[str | int] | None = None, conf: float = ROI_CONF,
              roi: RoiConfig = RoiConfig(), ladder: Sequence[QuantParams] = LADDER,
              device: str | None = None, detections: Detections | None = None,
              background_weight: float = BACKGROUND_WEIGHT) -> JpegResult:
    """Encode an image (path, bytes, PIL image or Picture) as JPEG with object-aware quantization.

    Exactly one of ``quality`` (fixed encoder quality, gentlest ladder step), ``match_quality``
    (no larger than plain JPEG at that quality) or ``target_size`` (bytes) may be given; the
    default is ``match_quality=75``. ``dest`` (a path or a binary file object) is optional;
    paths are written atomically. ``detections`` skips the detector (e.g. when a service has
    already run it on a micro-batch of requests). ``background_weight`` trades object quality
    for background quality in the search (0 = objects only).
    """
    modes = [m for m in (quality, match_quality, target_size) if m is not None]
    if len(modes) > 1:
        raise VqpError("give only one of quality, match_quality and target_size")
    quality, match_quality, target_size = (_bounded(n, v, hi) for n, v, hi in (
        ("quality", quality, 100), ("match_quality", match_quality, 100), ("target_size", target_size, 1 << 40)))
    if not modes:
        match_quality = DEFAULT_QUALITY
    enc = get_encoder(encoder)
    pic = image if isinstance(image, Picture) else load_image(image)
    if detections is None:
        det = detector or shared_detector(model, tuple(classes) if classes else None, conf=conf, device=device)
        detections = det([pic.rgb])[0]
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    imp = roi_map([detections], block=8, config=roi, device=dev).importance
    search = _Search(pic, imp, enc, dev)
    active = bool(imp.max() > 0)

    if quality is not None:
        params = ladder[0] if active else None
        res = JpegResult(search.encode(quality, params), quality, params, detections,
                         len(search.encode(quality, None)), quality)
    else:
        ref = match_quality
        budget = len(search.encode(ref, None)) if ref is not None else target_size
        lo = ref if ref is not None else 1
        best, tried = None, []
        for params in ([None] + list(ladder) if active else [None]):
            q = search.best_quality(params, budget, lo)
            if q is None:
                continue
            lo = q  # a harder ladder step is never larger at the same quality: search only upwards
            data = search.encode(q, params)
            score, obj = search.score(data, background_weight) if active else (0.0, 0.0)
            tried.append({"quality": q, "strength": params.strength if params else 1,
                          "keep": params.keep if params else 64, "bytes": len(data), "object_psnr": round(obj, 3)})
            if best is None or (score, -len(data)) > (best[0], -len(best[1].data)):
                best = (score, JpegResult(data, q, params, detections, budget if ref is not None else None, ref))
        if best is None:
            smallest = len(search.encode(1, ladder[-1] if active else None))
            raise VqpError(f"cannot fit the image in {budget} bytes; the smallest file is {smallest} bytes")
        res = best[1]
        res.candidates = tried
    if dest is not None:
        if hasattr(dest, "write"):
            dest.write(res.data)
        else:
            write_atomic(dest, res.data)
    return res
