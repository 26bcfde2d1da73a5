"""Degradations for the robustness benchmark: the COCO-C corruptions plus codec damage.

The 15 common corruptions and the 4 held-out ones come from ``imagecorruptions`` (Michaelis et
al. 2019). COCO-C's ``brightness`` only brightens, so ``low_light`` adds the dark, noisy frames of
night footage, which surveillance clips meet. Codec degradations model what vqp itself meets in
practice: a very low-quality JPEG, a low-bitrate H.264 frame, and vqp's own background quantization
at strong settings.
"""
from __future__ import annotations

import fractions
import zlib

import numpy as np
import torch

from ..errors import VqpError
from ..types import Detections

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
          "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
          "jpeg_compression")
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CODECS = ("jpeg_low", "h264", "vqp_background")
EXTRA = ("low_light",)
# one per family (noise, blur, weather, digital) for --quick runs; glass_blur is left out for its cost
QUICK = ("gaussian_noise", "motion_blur", "fog", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)

JPEG_QUALITY = (12, 9, 6, 4, 2)            # per severity; COCO-C's jpeg_compression stops at 7
H264_CRF = (36, 40, 44, 48, 51)
VQP_STRENGTH = ((4, 15), (6, 10), (8, 6), (12, 3), (16, 1))  # (step multiplier, zigzag coefficients kept)
LOW_LIGHT = (0.3, 0.2, 0.12, 0.07, 0.04)   # exposure left (linear light) per severity
PHOTONS = 500.0                            # photons at full scale of the clean exposure: sets the shot noise
READ_NOISE = 0.002                         # sensor read noise, linear light


def names(group: str) -> tuple[str, ...]:
    """Corruption names of a group: common, held_out, codecs, extra, quick or all."""
    groups = {"common": COMMON, "held_out": HELD_OUT, "codecs": CODECS, "extra": EXTRA, "quick": QUICK,
              "all": COMMON + HELD_OUT + CODECS + EXTRA}
    if group not in groups:
        raise VqpError(f"unknown corruption group {group!r}; choose from {', '.join(groups)}")
    return groups[group]


def check(corruptions, severities) -> None:
    """Reject unknown corruption names or severities with one clear line."""
    known = set(COMMON + HELD_OUT + CODECS + EXTRA)
    bad = [c for c in corruptions if c not in known]
    if bad:
        raise VqpError(f"unknown corruption {bad[0]!r}; known: {', '.join(sorted(known))}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise VqpError(f"severity must be 1 to 5, got {bad[0]}")


def degrade(rgb: np.ndarray, name: str, severity: int, *, detections: Detections | None = None,
            seed: int = 0) -> np.ndarray:
    """Apply one degradation at severity 1-5 to an (H, W, 3) uint8 image; seeded, so reruns match.

    ``vqp_background`` needs the clean image's detections: they decide which blocks are kept.
    """
    if name in COMMON or name in HELD_OUT:
        from imagecorruptions import corrupt

        state = np.random.get_state()  # imagecorruptions draws from NumPy's global generator
        np.random.seed((seed + zlib.crc32(f"{name}{severity}".encode())) % 2**32)
        try:
            out = corrupt(rgb, corruption_name=name, severity=severity)
        finally:
            np.random.set_state(state)
        return np.ascontiguousarray(out[: rgb.shape[0], : rgb.shape[1]], dtype=np.uint8)
    if name == "low_light":
        rng = np.random.default_rng(seed + zlib.crc32(f"{name}{severity}".encode()))
        return _low_light(rgb, LOW_LIGHT[severity - 1], rng)
    if name == "jpeg_low":
        from io import BytesIO

        from PIL import Image

        from ..jpeg import get_encoder

        data = get_encoder("pillow").encode(rgb, JPEG_QUALITY[severity - 1])
        return np.asarray(Image.open(BytesIO(data)).convert("RGB"))
    if name == "h264":
        return _h264(rgb, H264_CRF[severity - 1])
    if name == "vqp_background":
        if detections is None:
            raise VqpError("vqp_background needs the clean image's detections")
        from ..quant import QuantParams, annex_k_tables, quantize
        from ..roi import roi_map

        strength, keep = VQP_STRENGTH[severity - 1]
        x = torch.from_numpy(np.array(rgb, np.uint8)).permute(2, 0, 1)[None]
        out = quantize(x, roi_map([detections]), annex_k_tables(50), QuantParams(strength, keep, dc_strength=4.0))
        return out[0].permute(1, 2, 0).numpy()
    raise VqpError(f"unknown corruption {name!r}")


def _low_light(rgb: np.ndarray, exposure: float, rng: np.random.Generator) -> np.ndarray:
    """Underexposure in linear light with shot (Poisson) and read noise, then the sRGB-like gamma again:
    dark frames whose noise grows as the light falls, as a camera's do (a plain scale would be noise-free)."""
    lin = (rgb.astype(np.float32) / 255) ** 2.2 * exposure
    lin = rng.poisson(lin * PHOTONS) / PHOTONS + rng.normal(0, READ_NOISE, lin.shape)
    return (np.clip(lin, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def _h264(rgb: np.ndarray, crf: int) -> np.ndarray:
    """Encode the image as a one-frame libx264 clip at ``crf`` and decode it again (PyAV, in memory)."""
    import io

    import av

    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p needs even sides
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fractions.Fraction(1))
        s.width, s.height, s.pix_fmt = padded.shape[1], padded.shape[0], "yuv420p"
        s.options = {"crf": str(crf), "preset": "veryfast"}
        for packet in s.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
            out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as inp:
        frame = next(inp.decode(video=0))
        return frame.to_ndarray(format="rgb24")[:h, :w]
