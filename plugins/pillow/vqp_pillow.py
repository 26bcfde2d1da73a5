"""Pillow plugin: route an existing ``img.save(...)`` through vqp by changing one line.

    import vqp_pillow  # registers the "VQP" format
    img.save("out.jpg", "VQP", quality=50)   # was: img.save("out.jpg", quality=50)

``quality`` keeps its meaning as the size budget: the file is no larger than plain JPEG at that
quality (with the same options), and objects get the bits (vqp's ``match_quality``). Pillow's
JPEG arguments behave as in Pillow: ``exif``, ``icc_profile``, ``dpi``, ``comment`` (default: the
image's own, as Pillow does) and ``xmp`` are written; ``optimize``, ``progressive`` (or
``progression``) and ``subsampling`` ("4:2:0"/2 or "4:4:4"/0) are honoured with the pillow
encoder. Like Pillow, the pixels are written as they are (no EXIF rotation) and only the metadata
given is kept. vqp's own: ``target_size=`` (bytes), ``encoder="jpegli"``, ``classes=[...]``.
Anything else (``qtables``, ``smooth``, ``restart_marker_*``, ``extra``, presets, ...) is
refused by name rather than silently ignored.
"""
from __future__ import annotations

import dataclasses

from PIL import Image

import vqp
from vqp.errors import VqpError
from vqp.imageio import load_image
from vqp.jpeg import PillowEncoder, get_encoder

METADATA = ("exif", "icc_profile", "dpi", "comment", "xmp")
ENTROPY = ("optimize", "progressive", "progression", "subsampling")  # pillow encoder only
OWN = ("quality", "target_size", "encoder", "classes")
SUBSAMPLING = {-1: "4:2:0", 2: "4:2:0", 0: "4:4:4", "4:2:0": "4:2:0", "4:4:4": "4:4:4"}


def _encoder(info: dict):
    name = info.get("encoder", "pillow")
    opts = {k: info[k] for k in ENTROPY if k in info}
    if name != "pillow":
        if any(opts.values()):
            raise VqpError(f"VQP save: {', '.join(opts)} only work with encoder='pillow'")
        return get_encoder(name)
    sub = opts.get("subsampling", -1)
    if sub not in SUBSAMPLING:
        raise VqpError(f"VQP save: subsampling={sub!r} is not supported; use '4:2:0' (2) or '4:4:4' (0)")
    return PillowEncoder(optimize=opts.get("optimize", False),
                         progressive=opts.get("progressive", False) or opts.get("progression", False),
                         subsampling=SUBSAMPLING[sub])


def _save(im: Image.Image, fp, filename) -> None:
    info = im.encoderinfo
    unknown = sorted(set(info) - set(METADATA + ENTROPY + OWN))
    if unknown:
        raise VqpError(f"VQP save: {', '.join(unknown)} not supported (vqp sets quantization itself)")
    quality = info.get("quality", 75)
    if not isinstance(quality, int) or isinstance(quality, bool):
        raise VqpError(f"VQP save: quality must be an integer 1-100, got {quality!r} (presets and 'keep' are not supported)")
    exif = info.get("exif")
    pic = dataclasses.replace(
        load_image(im, upright=False), exif=exif.tobytes() if isinstance(exif, Image.Exif) else exif or None,
        icc=info.get("icc_profile") or None, comment=info.get("comment", im.info.get("comment")) or None,
        dpi=tuple(round(x) for x in info["dpi"]) if any(info.get("dpi", ())) else None, xmp=info.get("xmp") or None)
    target = info.get("target_size")
    vqp.save_jpeg(pic, fp, match_quality=None if target else quality, target_size=target,
                  encoder=_encoder(info), classes=info.get("classes"))


Image.register_save("VQP", _save)
Image.register_mime("VQP", "image/jpeg")
