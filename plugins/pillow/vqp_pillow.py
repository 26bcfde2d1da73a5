"""Pillow plugin: route an existing ``img.save(...)`` through vqp by changing one line.

    import vqp_pillow  # registers the "VQP" format
    img.save("out.jpg", "VQP", quality=50)   # was: img.save("out.jpg", quality=50)

``quality`` keeps its meaning as the size budget: the file is no larger than plain JPEG at that
quality, and objects get the bits (vqp's ``match_quality``). ``target_size=`` (bytes),
``encoder="jpegli"`` and ``classes=[...]`` are passed through as well; EXIF and ICC are kept.
"""
from __future__ import annotations

from PIL import Image

import vqp


def _save(im: Image.Image, fp, filename) -> None:
    info = im.encoderinfo
    target = info.get("target_size")
    vqp.save_jpeg(im, fp, match_quality=None if target else int(info.get("quality", 75)), target_size=target,
                  encoder=info.get("encoder", "pillow"), classes=info.get("classes"))


Image.register_save("VQP", _save)
Image.register_mime("VQP", "image/jpeg")
