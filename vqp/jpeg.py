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
import struct
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .detect import DETECT_CONF, Detector, shared_detector
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
SUBSAMPLING = ("4:2:0", "4:4:4")  # what the quantizer reproduces (vqp.quant.prepare)
_ROWS = 512  # pixel rows scored at a time: no full-size float plane is held for the search


class Encoder(Protocol):
    """Encodes RGB at a quality; ``meta`` is a Picture's metadata (exif, icc, comment, dpi, xmp)."""

    name: str
    subsampling: str

    def encode(self, rgb: np.ndarray, quality: int, **meta) -> bytes: ...

    def tables(self, quality: int) -> torch.Tensor: ...


class PillowEncoder:
    """libjpeg-turbo through Pillow: Annex K tables, 4:2:0 unless asked; ``optimize`` and
    ``progressive`` as in Pillow's JPEG writer (they change the entropy coding, not the pixels)."""

    name = "pillow"

    def __init__(self, *, optimize: bool = False, progressive: bool = False, subsampling: str = "4:2:0"):
        if subsampling not in SUBSAMPLING:
            raise VqpError(f"subsampling {subsampling!r} is not supported; choose from {', '.join(SUBSAMPLING)}")
        self.optimize, self.progressive, self.subsampling = bool(optimize), bool(progressive), subsampling

    def encode(self, rgb, quality, exif=None, icc=None, comment=None, dpi=None, xmp=None):
        buf = io.BytesIO()
        meta = {k: v for k, v in (("exif", exif), ("icc_profile", icc), ("comment", comment), ("dpi", dpi),
                                  ("xmp", xmp)) if v}
        try:
            Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality), optimize=self.optimize,
                                      progressive=self.progressive, subsampling=self.subsampling, **meta)
        except ValueError as e:  # Pillow's own checks, e.g. "EXIF data is too long"
            raise VqpError(str(e)) from None
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

    def encode(self, rgb, quality, **meta):
        h, w = rgb.shape[:2]
        data = self._jpegli.encode(np.ascontiguousarray(rgb).tobytes(), w, h, int(quality))
        return insert_metadata(data, **meta)

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


MAX_SEGMENT = 65533  # bytes of payload in one JPEG marker segment


def _segment(marker: int, body: bytes, what: str) -> bytes:
    if len(body) > MAX_SEGMENT:
        raise VqpError(f"{what} is too long for a JPEG segment ({len(body)} > {MAX_SEGMENT} bytes)")
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def insert_metadata(jpeg: bytes, exif: bytes | None = None, icc: bytes | None = None, *,
                    comment: bytes | str | None = None, dpi: tuple | None = None, xmp: bytes | None = None) -> bytes:
    """Add metadata segments the way Pillow's JPEG writer does: a JFIF APP0 carrying ``dpi``
    (replacing one already there), EXIF and XMP (APP1), ICC (APP2, chunked) and the comment (COM),
    after SOI and any APP0."""
    if not any((exif, icc, comment, dpi, xmp)):
        return jpeg
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":
        pos = 4 + struct.unpack(">H", jpeg[4:6])[0]
    head = jpeg[:pos]
    if dpi:
        head = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x01" + struct.pack(">HHBB", *map(round, dpi), 0, 0), "dpi")
    segs = []
    if exif:
        segs.append(_segment(0xE1, exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif, "EXIF data"))
    if xmp:
        segs.append(_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp, "XMP data"))
    if icc:
        chunks = [icc[i:i + MAX_SEGMENT - 14] for i in range(0, len(icc), MAX_SEGMENT - 14)]
        segs += [_segment(0xE2, b"ICC_PROFILE\x00" + bytes([i + 1, len(chunks)]) + c, "ICC profile")
                 for i, c in enumerate(chunks)]
    if comment:
        segs.append(_segment(0xFE, comment.encode() if isinstance(comment, str) else comment, "comment"))
    return head + b"".join(segs) + jpeg[pos:]


@dataclass
class JpegResult:
    """What ``save_jpeg`` produced and why."""

    data: bytes
    quality: int                      # encoder quality actually used
    params: QuantParams | None        # background quantization, None when the image passed through
    detections: Detections            # the boxes at or above the reporting threshold (save_jpeg's conf)
    plain_bytes: int | None = None    # the plain encoder's size at the reference quality
    reference_quality: int | None = None
    candidates: list[dict] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)

    def summary(self) -> dict:
        return {"bytes": self.size, "quality": self.quality, "plain_bytes": self.plain_bytes,
                "reference_quality": self.reference_quality,
                "ratio": round(self.size / self.plain_bytes, 6) if self.plain_bytes else None,
                "strength": self.params.strength if self.params else None,
                "keep": self.params.keep if self.params else None,
                "detections": [b.to_dict() for b in self.detections.boxes]}


def _psnr(err_sum: float, weight_sum: float) -> float:
    mse = err_sum / max(weight_sum, 1e-9)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-10))


class _Search:
    """Holds one image's prepared DCT and answers 'size and object error at (quality, params)'.

    Memory: the DCT is prepared only when a candidate needs requantizing (an image without
    detections is only ever encoded plainly), and scores are summed over strips of rows, so no
    full-size float plane besides the quantizer's own is held.
    """

    def __init__(self, pic: Picture, importance: torch.Tensor, enc: Encoder, device):
        self.pic, self.enc, self.imp, self.device = pic, enc, importance, device
        self.blocks = importance[0].cpu()  # (H/8, W/8) weight of each 8x8 block
        self._cache: dict = {}

    @cached_property
    def prep(self) -> Prepared:
        rgb = torch.from_numpy(np.require(self.pic.rgb, requirements="W")).permute(2, 0, 1)[None]
        return prepare(rgb.to(self.device), self.enc.subsampling)

    def encode(self, quality: int, params: QuantParams | None) -> bytes:
        key = (quality, params)
        if key not in self._cache:
            rgb = self.pic.rgb
            if params is not None:
                t = self.enc.tables(quality)
                rgb = requantize(self.prep, self.imp, t, params)[0].permute(1, 2, 0).cpu().numpy()
            self._cache[key] = self.enc.encode(np.ascontiguousarray(rgb), quality, **self.pic.metadata())
        return self._cache[key]

    def score(self, data: bytes, background_weight: float) -> tuple[float, float]:
        """(search score, object PSNR-Y): PSNR-Y weighted by importance, plus a small share of the
        background's PSNR-Y so that marginal object gains do not buy a wrecked background."""
        dec = Image.open(io.BytesIO(data)).convert("RGB")
        h, w = self.pic.rgb.shape[:2]
        sums = torch.zeros(4, dtype=torch.float64)  # object error, object weight, background error, weight
        for y in range(0, h, _ROWS):  # _ROWS is a multiple of 8: strips hold whole block rows
            rows = min(_ROWS, h - y)
            err = (luma(np.asarray(dec.crop((0, y, w, y + rows)))) - luma(self.pic.rgb[y:y + rows])) ** 2
            wt = self.blocks[y // 8: -(-(y + rows) // 8)].repeat_interleave(8, 0).repeat_interleave(8, 1)[:rows, :w]
            sums += torch.stack([(err * wt).sum(), wt.sum(), (err * (1 - wt)).sum(), (1 - wt).sum()]).double()
        obj = _psnr(sums[0].item(), sums[1].item())
        return obj + background_weight * _psnr(sums[2].item(), sums[3].item()), obj

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


def check_options(quality=None, match_quality=None, target_size=None, background_weight=BACKGROUND_WEIGHT,
                  *, flags: bool = False) -> tuple[int | None, int | None, int | None]:
    """Check save_jpeg's size options once, before any image is read, and return them as integers;
    ``flags`` names them as command-line options (``--match-quality``) in the errors."""
    name = (lambda n: "--" + n.replace("_", "-")) if flags else (lambda n: n)
    if sum(v is not None for v in (quality, match_quality, target_size)) > 1:
        raise VqpError(f"give only one of {name('quality')}, {name('match_quality')} and {name('target_size')}")
    if not (isinstance(background_weight, (int, float)) and 0 <= background_weight < math.inf):
        raise VqpError(f"{name('background_weight')} must be a number >= 0, got {background_weight}")
    return tuple(_bounded(name(n), v, hi) for n, v, hi in (
        ("quality", quality, 100), ("match_quality", match_quality, 100), ("target_size", target_size, 1 << 40)))


def save_jpeg(image, dest=None, *, quality: int | None = None, match_quality: int | None = None,
              target_size: int | None = None, encoder: str | Encoder = "pillow", detector: Detector | None = None,
              model: str | None = None, classes: Sequence[str | int] | None = None, conf: float = DETECT_CONF,
              roi: RoiConfig = RoiConfig(), ladder: Sequence[QuantParams] = LADDER,
              device: str | None = None, detections: Detections | None = None,
              background_weight: float = BACKGROUND_WEIGHT) -> JpegResult:
    """Encode an image (path, bytes, PIL image or Picture) as JPEG with object-aware quantization.

    Exactly one of ``quality`` (fixed encoder quality, gentlest ladder step; the plain file when
    that is not smaller), ``match_quality`` (no larger than plain JPEG at that quality) or
    ``target_size`` (bytes) may be given; the default is ``match_quality=75``. ``dest`` (a path or
    a binary file object) is optional; paths are written atomically. ``encoder`` is a name in
    ENCODERS or an Encoder (e.g. ``PillowEncoder(progressive=True)``).

    Every box steers the quantizer, down to ``vqp.roi.ROI_CONF`` (the built-in detector runs at
    that threshold), but only boxes at or above ``conf`` are reported in ``JpegResult.detections``:
    the same boxes ``vqp detect`` gives at that threshold. ``detections`` skips the detector (e.g.
    when a service has already run it on a micro-batch of requests). ``background_weight``
    trades object quality for background quality in the search (0 = objects only).
    """
    modes = (quality, match_quality, target_size)
    quality, match_quality, target_size = check_options(quality, match_quality, target_size, background_weight)
    if all(m is None for m in modes):
        match_quality = DEFAULT_QUALITY
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
    pic = image if isinstance(image, Picture) else load_image(image)
    if detections is None:
        det = detector or shared_detector(model, tuple(classes) if classes else None, conf=min(conf, ROI_CONF),
                                          device=device)
        detections = det([pic.rgb])[0]
    reported = detections.above(conf)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    imp = roi_map([detections], block=8, config=roi, device=dev).importance
    search = _Search(pic, imp, enc, dev)
    active = bool(imp.max() > 0)

    if quality is not None:
        plain = search.encode(quality, None)
        params = ladder[0] if active else None
        if params is not None and len(search.encode(quality, params)) >= len(plain):
            params = None  # the promise is "smaller than plain at Q": otherwise plain is the better file
        res = JpegResult(search.encode(quality, params), quality, params, reported, len(plain), quality)
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
                best = (score, JpegResult(data, q, params, reported, budget if ref is not None else None, ref))
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
