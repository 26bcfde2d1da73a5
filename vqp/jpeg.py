"""JPEG output: detector-driven quantization in front of libjpeg-turbo (Pillow) or jpegli.

``save_jpeg`` is the library call. With ``match_quality=Q`` the output is never larger than the
plain encoder's file at Q; with ``target_size=N`` never larger than N bytes. In both cases the
encoder quality and the background strength are searched jointly for the best object quality
that fits, on sizes and errors modelled from the DCT coefficients (vqp.jpegsize) and confirmed by
a real encode. Quantization steps come from the encoder's own tables at the quality it will use,
so background coefficients land on multiples of the encoder's step and survive it.
"""
from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .detect import DETECT_CONF, Detector, shared_detector
from .errors import VqpError
from .imageio import Picture, load_image, write_atomic
from .jpegsize import header_bytes, scan_bits, zigzag
from .quant import CHROMA_FACTOR, QuantParams, annex_k_tables, prepare, quantize, requantize_blocks
from .roi import ROI_CONF, RoiConfig, roi_map
from .types import Detections

# Background settings tried by the search, gentlest first: rate-distortion trades (vqp.jpegsize.rd_levels,
# squared level error per bit saved), the two hardest with a coarser DC. On halved coco128 they give the
# objects the same gain as the step multipliers they replace for half the background's loss (RESULTS.md).
LADDER = (*(QuantParams(1, 64, 1, lam) for lam in (1, 2, 4, 8, 16, 32)), QuantParams(1, 64, 2, 128),
          QuantParams(1, 64, 2, 1000))
DEFAULT_QUALITY = 75
# Share of background PSNR in the search score: 0.5 keeps the objects' gain at about half the background
# loss of 0.1 on coco128 images the ladder was not chosen on (benchmarks/RESULTS.md).
BACKGROUND_WEIGHT = 0.5
SUBSAMPLING = tuple(CHROMA_FACTOR)  # what the quantizer reproduces


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
                "lam": self.params.lam if self.params else None,
                "detections": [b.to_dict() for b in self.detections.boxes]}


def _psnr(err_sum: float, weight_sum: float) -> float:
    mse = err_sum / max(weight_sum, 1e-9)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-10))


# Most blocks the size and score model looks at per candidate: larger photos are sampled by MCU rows
# (the real encode at the end sees every block).
SAMPLE_BLOCKS = 1 << 12
# Real encodes the search may spend confirming a predicted size before it settles for a safe file.
CONFIRMS = 4
# A confirmed file below this share of the budget is re-aimed once the model is recalibrated on it.
FILL = 0.97
# Luma MSE that decoding adds to any candidate (rounding in the IDCT and colour conversion): a plain
# file at 100 measures 0.25 on Kodak against 0.08 from its coefficients alone.
ROUNDING_MSE = 0.16


class _Search:
    """One image's equal-size search, in the DCT domain.

    Each candidate (encoder quality, background setting) is scored without encoding it: its
    coefficients are requantized as the quantizer would, rounded to the encoder's steps, and
    counted as the entropy coder would code them (vqp.jpegsize); the luma error follows from the
    coefficient error (the DCT is orthonormal). The count is scaled to bytes by the latest real
    encode of this image, so only its relative error matters, and the chosen candidate is always
    confirmed by a real encode. ``steer`` is the quantizer's importance map (every box, weak ones
    weighted down), ``weight`` the score's object weight (the boxes the user counts as objects).
    """

    def __init__(self, pic: Picture, steer: torch.Tensor, weight: torch.Tensor, enc: Encoder, device):
        self.pic, self.enc, self.imp, self.device = pic, enc, steer, device
        self.weight = weight
        self.adaptive = not (isinstance(enc, PillowEncoder) and not enc.optimize and not enc.progressive)
        self._cache: dict = {}
        self._model: dict = {}
        self.meta = sum(len(v) if isinstance(v, (bytes, str)) else 16 for v in pic.metadata().values() if v)

    @cached_property
    def rgb(self) -> torch.Tensor:
        """The photo as a (1, 3, H, W) uint8 tensor on the search's device."""
        return torch.from_numpy(np.require(self.pic.rgb, requirements="W")).permute(2, 0, 1)[None].to(self.device)

    @cached_property
    def sample(self) -> tuple:
        """(luma coef, luma steer, chroma coef, chroma steer, object weight, background weight) on
        every k-th MCU row, k chosen so that at most SAMPLE_BLOCKS luma blocks are modelled. Only
        those rows are transformed (a block's coefficients depend on its own pixels alone), so a
        large photo costs the model no more than a small one."""
        f = CHROMA_FACTOR[self.enc.subsampling]
        h, w = self.pic.rgb.shape[:2]
        hm, wm = -(-h // (8 * f)), -(-w // (8 * f))
        hb, wb = hm * f, wm * f
        step = max(1, math.ceil(hb * wb / SAMPLE_BLOCKS))
        rows_c = torch.arange(0, hm, step, device=self.rgb.device)
        rows_y = (rows_c[:, None] * f + torch.arange(f, device=rows_c.device)).flatten()
        x = F.pad(self.rgb, (0, wm * 8 * f - w, 0, hm * 8 * f - h), mode="replicate")
        p = prepare(x.view(1, 3, hm, 8 * f, -1)[:, :, rows_c].flatten(2, 3), self.enc.subsampling)
        imp = self.imp.to(rows_c.device, torch.float32)
        imp = F.pad(imp[:, None], (0, wb - imp.shape[-1], 0, hb - imp.shape[-2]), mode="replicate")[:, 0]
        imp_c = F.max_pool2d(imp[:, None], f)[:, 0] if f > 1 else imp
        valid = torch.zeros(hb, wb, device=imp.device)
        valid[: -(-h // 8), : -(-w // 8)] = 1
        wt = F.pad(self.weight.to(imp.device, torch.float32), (0, wb - self.weight.shape[-1],
                                                                0, hb - self.weight.shape[-2]))
        return (zigzag(p.coef_y), imp[:, rows_y], zigzag(p.coef_c), imp_c[:, rows_c],
                wt[rows_y] * valid[rows_y], (1 - wt[rows_y]) * valid[rows_y])

    def model(self, quality: int, params: QuantParams | None) -> tuple[float, float, float]:
        """(entropy-coded bytes estimate, object luma error sum, background luma error sum)."""
        key = (quality, params)
        if key not in self._model:
            cy, iy, cc, ic, wo, wb = self.sample
            t = zigzag(self.enc.tables(quality).to(cy.device))  # the sample is in scan order
            if params is not None:
                ry = requantize_blocks(cy, t[0], iy, params, scan=True)
                rc = requantize_blocks(cc, t[1], ic, params, scan=True, chroma=True)
            else:
                ry, rc = cy, cc
            ky, kc = torch.round(ry / t[0]), torch.round(rc / t[1])  # what the encoder's quantizer writes
            bits = scan_bits([x.to(torch.int32) for x in (ky[0, 0], kc[0, 0], kc[0, 1])], self.adaptive)
            err = ((cy - ky * t[0]) ** 2).sum((-1, -2))[0, 0]
            self._model[key] = (bits / 8, float((err * wo).sum()), float((err * wb).sum()))
        return self._model[key]

    def score(self, quality: int, params: QuantParams | None, background_weight: float) -> tuple[float, float]:
        """(search score, object PSNR-Y): object PSNR-Y plus a small share of the background's, so
        that marginal object gains do not buy a wrecked background (modelled, not decoded)."""
        _, eo, eb = self.model(quality, params)
        _, _, _, _, wo, wb = self.sample
        no, nb = 64 * float(wo.sum()), 64 * float(wb.sum())
        obj = _psnr(eo + ROUNDING_MSE * no, no)
        return obj + background_weight * _psnr(eb + ROUNDING_MSE * nb, nb), obj

    def encode(self, quality: int, params: QuantParams | None) -> bytes:
        key = (quality, params)
        if key not in self._cache:
            rgb = self.pic.rgb
            if params is not None:
                t = self.enc.tables(quality)
                rgb = quantize(self.rgb, self.imp, t, params, self.enc.subsampling)[0].permute(1, 2, 0).cpu().numpy()
            self._cache[key] = self.enc.encode(np.ascontiguousarray(rgb), quality, **self.pic.metadata())
            self.calibrate(quality, params)
        return self._cache[key]

    def calibrate(self, quality: int, params: QuantParams | None) -> None:
        """Scale the model's bytes to this image's real file at a point that was really encoded."""
        self.ref = (self.model(quality, params)[0], len(self._cache[(quality, params)]))

    def predict(self, quality: int, params: QuantParams | None) -> float:
        """Predicted file size: the model's bytes scaled like the latest real encode's
        (before any, by the fixed part of a file plus the estimate)."""
        est = self.model(quality, params)[0]
        fixed = header_bytes(self.meta)
        if not hasattr(self, "ref"):
            return fixed + est
        est_ref, real_ref = self.ref
        return fixed + (real_ref - fixed) * est / max(est_ref, 1.0)

    def best_quality(self, params: QuantParams | None, budget: int, lo: int, hi: int = 100,
                     real: bool = False, near: int | None = None) -> int | None:
        """Largest quality in [lo, hi] whose file fits the budget (size grows with quality):
        predicted, or with ``real`` encodes. ``near``: where the answer is expected (a neighbouring
        setting's quality); the search gallops out from there before it bisects."""
        size = (lambda q: len(self.encode(q, params))) if real else (lambda q: self.predict(q, params))
        if lo > hi:
            return None
        if near is not None:
            q, step = min(max(near, lo), hi), 1
            if size(q) <= budget:  # fits: gallop up
                lo = q
                while lo < hi:
                    q = min(lo + step, hi)
                    if size(q) > budget:
                        hi = q - 1
                        break
                    lo, step = q, step * 2
            else:  # too big: gallop down
                hi = q - 1
                while hi >= lo:
                    q = max(hi - step + 1, lo)
                    if size(q) <= budget:
                        lo = q
                        break
                    hi, step = q - 1, step * 2
                else:
                    return None
        elif size(lo) > budget:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _candidate(quality: int, params: QuantParams | None, **measured) -> dict:
    """One line of JpegResult.candidates: the setting (plain: strength 1, all coefficients, lambda 0)."""
    p = params or QuantParams(1, 64, 1)
    return {"quality": quality, "strength": p.strength, "keep": p.keep, "lam": p.lam, **measured}


def _equal_size(search: _Search, budget: int, ref: int | None, ladder: Sequence[QuantParams],
                background_weight: float, reported: Detections) -> JpegResult:
    """The best-scoring candidate whose file fits ``budget``, chosen on predicted sizes and scores and
    confirmed by a real encode; a candidate that turns out too large recalibrates the prediction
    and caps its quality. With ``ref`` (match_quality) the plain file at ref always fits.

    The ladder is walked from its hardest setting down: a gentler setting fits only at a lower
    quality than a harder one (so its search gallops down from there), and the walk stops once
    the score falls."""
    caps: dict = {}
    tried: list[dict] = []
    lo = ref or 1
    fit, fit_score = None, -math.inf
    last: dict = {}  # each setting's quality in the previous round: a recalibrated search starts there
    for _ in range(CONFIRMS):
        best, hi = None, 100
        for params in [*reversed(ladder), None]:
            if params is None and ref is not None:
                q = ref
            else:
                top = min(hi, caps.get(params, 100))
                q = search.best_quality(params, budget, lo, top, near=top if best is not None else last.get(params))
            if q is None:
                continue
            hi = last[params] = q
            score, obj = search.score(q, params, background_weight) if ladder else (0.0, 0.0)
            tried.append(_candidate(q, params, predicted_bytes=round(search.predict(q, params)),
                                    object_psnr=round(obj, 3)))
            if best is not None and score <= best[0] and params is not None:
                break  # gentler settings only lose from here
            if best is None or score > best[0]:
                best = (score, q, params)
        if best is None:
            break
        _, q, params = best
        data = search.encode(q, params)
        tried.append(_candidate(q, params, bytes=len(data)))
        if len(data) <= budget:
            if fit is not None and (fit.quality, fit.params) == (q, params):
                break  # the recalibrated search comes back to the same file
            if fit is None or best[0] >= fit_score:
                fit, fit_score = JpegResult(data, q, params, reported, budget if ref is not None else None, ref,
                                            tried), best[0]
            if len(data) >= FILL * budget:
                break
            continue  # well under budget (jpegli's adaptive quantization): aim again, recalibrated
        caps[params] = q - 1
    if fit is not None:
        return fit
    params = None if ref is not None or not ladder else ladder[-1]
    q = ref if ref is not None else search.best_quality(params, budget, 1, real=True)
    if q is None:
        smallest = len(search.encode(1, params))
        raise VqpError(f"cannot fit the image in {budget} bytes; the smallest file is {smallest} bytes")
    return JpegResult(search.encode(q, params), q, params, reported, budget if ref is not None else None, ref, tried)


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
    the same boxes ``vqp detect`` gives at that threshold. Those reported boxes are also what the
    search counts as objects (fully, times ``roi.priority`` of their class); weaker boxes are
    protected but never veto a gain. ``detections`` skips the detector (e.g.
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
    steer = roi_map([detections], block=8, config=roi, device=dev).importance
    # What the score counts as object: the reported boxes, each fully (times its class priority).
    # Weaker boxes still steer the quantizer (protected), but never veto a gain on the real objects.
    counted = replace(roi, conf_full=max(conf, 1e-6), margin=0.0, feather=0.0)
    weight = roi_map([reported], block=8, config=counted, device=dev).importance[0]
    search = _Search(pic, steer, weight, enc, dev)
    active = bool(steer.max() > 0)

    if quality is not None:
        plain = search.encode(quality, None)
        params = ladder[0] if active else None
        if params is not None and len(search.encode(quality, params)) >= len(plain):
            params = None  # the promise is "smaller than plain at Q": otherwise plain is the better file
        res = JpegResult(search.encode(quality, params), quality, params, reported, len(plain), quality)
    else:
        ref = match_quality
        budget = len(search.encode(ref, None)) if ref is not None else target_size
        options = list(ladder) if active and bool(weight.max() > 0) else []
        res = _equal_size(search, budget, ref, options, background_weight, reported)
    if dest is not None:
        if hasattr(dest, "write"):
            dest.write(res.data)
        else:
            write_atomic(dest, res.data)
    return res
