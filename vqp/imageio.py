"""Decode stage for still images: any Pillow-readable file to 8-bit RGB plus its metadata.

Every failure becomes a VqpError with one line of text that names the user's file; outputs are
written atomically. vqp enforces its own pixel limit (``VQP_MAX_PIXELS``) from the header before
any pixel is decoded, so Pillow's DecompressionBombWarning (a lower threshold that only warns) is
silenced once, process-wide, at import, and logged instead (visible with ``vqp -v``).
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import VqpError

log = logging.getLogger("vqp")
MAX_PIXELS = int(os.environ.get("VQP_MAX_PIXELS", 128_000_000))
JPEG_MAX_SIDE = 65_500
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}
_UMASK = os.umask(0)
os.umask(_UMASK)
# set once (not toggled per call: catch_warnings is not thread-safe); load_image logs instead
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_STRIP = 512  # rows converted to numpy at a time: the decoded image is never held twice as bytes


@dataclass
class Picture:
    """An upright 8-bit RGB image and the metadata to carry into the output."""

    rgb: np.ndarray          # (H, W, 3) uint8
    exif: bytes | None = None
    icc: bytes | None = None
    comment: bytes | None = None
    dpi: tuple[int, int] | None = None
    xmp: bytes | None = None

    def metadata(self) -> dict:
        """The metadata that is set, as keyword arguments for ``Encoder.encode``."""
        return {k: v for k in ("exif", "icc", "comment", "dpi", "xmp") if (v := getattr(self, k))}


def _array(im: Image.Image) -> np.ndarray:
    """An RGB Pillow image as a writable numpy array, converted in strips of rows: ``np.asarray``
    would hold the whole image once more as a bytes object on the way (363 MB for 121 megapixels)."""
    if im.height <= _STRIP:
        return np.array(im)
    out = np.empty((im.height, im.width, 3), np.uint8)
    for y in range(0, im.height, _STRIP):
        out[y:y + _STRIP] = np.asarray(im.crop((0, y, im.width, min(y + _STRIP, im.height))))
    return out


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Any Pillow mode to (H, W, 3) uint8; the flag says whether the ICC profile still applies."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(np.round(a * 255.0 / hi), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, 2), False
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return _array(Image.alpha_composite(white, rgba).convert("RGB")), True
    if mode == "CMYK":
        return _array(im.convert("RGB")), False  # a CMYK profile does not describe RGB pixels
    if mode in ("1", "L"):
        return _array(im.convert("RGB")), False
    return _array(im if mode == "RGB" else im.convert("RGB")), True


def _check_size(im: Image.Image, name: str, max_pixels: int) -> None:
    if im.width * im.height > max_pixels:
        raise VqpError(f"{name}: image too large ({im.width}x{im.height} > {max_pixels:,} pixels)")
    if max(im.size) > JPEG_MAX_SIDE:
        raise VqpError(f"{name}: {im.width}x{im.height} exceeds JPEG's {JPEG_MAX_SIDE}-pixel side limit")
    if Image.MAX_IMAGE_PIXELS and im.width * im.height > Image.MAX_IMAGE_PIXELS:
        log.info("vqp: %s: %dx%d is over Pillow's decompression-bomb warning threshold (%s pixels) but within "
                 "vqp's limit (%s, VQP_MAX_PIXELS)", name, im.width, im.height, f"{Image.MAX_IMAGE_PIXELS:,}",
                 f"{max_pixels:,}")


def _source_name(src) -> str:
    """How error messages call the input: its path or file name where known."""
    if isinstance(src, (bytes, bytearray)):
        return "image data"
    if isinstance(src, Image.Image):
        return str(getattr(src, "filename", "") or "image")
    return str(src)


def load_image(src: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = MAX_PIXELS,
               name: str | None = None, upright: bool = True) -> Picture:
    """Open, check and normalize an image.

    ``name`` is what error messages call the input (e.g. an upload's file name; by default its
    path, or "image data" for bytes). With ``upright`` (the default) EXIF orientation is applied
    and reset to 1; without it the pixels stay as they are (a Pillow ``save`` stand-in does that).
    A Pillow image passed in is never modified.
    """
    name = name or _source_name(src)
    if isinstance(src, Image.Image):
        im = src
        _check_size(im, name, max_pixels)
        mine = False
    else:
        data = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
        if not isinstance(src, (bytes, bytearray)):
            p = Path(src)
            if p.is_dir():
                raise VqpError(f"{name}: is a folder, not an image file")
            if not p.is_file():
                raise VqpError(f"{name}: no such file")
            if p.stat().st_size == 0:
                raise VqpError(f"{name}: empty file")
        elif not src:
            raise VqpError(f"{name}: empty")
        try:
            im = Image.open(data)  # reads the header only: the size is known before any pixel is decoded
            _check_size(im, name, max_pixels)
            im.load()
        except Image.DecompressionBombError:  # Pillow's own, larger limit
            raise VqpError(f"{name}: image too large (more than {max_pixels:,} pixels)") from None
        except UnidentifiedImageError:
            raise VqpError(f"{name}: not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise VqpError(f"{name}: damaged image ({e})") from None
        mine = True
    icc = im.info.get("icc_profile")
    if upright:
        try:
            if im.getexif().get(0x0112, 1) != 1:  # only then: a transpose costs a copy of the image
                if mine:
                    ImageOps.exif_transpose(im, in_place=True)
                else:
                    im = ImageOps.exif_transpose(im)
        except Exception as e:  # a corrupt EXIF block must not stop the image itself
            raise VqpError(f"{name}: unreadable EXIF data ({e})") from None
        exif = im.getexif()
        exif_bytes = exif.tobytes() if len(exif) else None
    else:
        exif_bytes = None
    rgb, icc_ok = _to_rgb(im)
    if icc and icc_ok:
        try:
            icc_ok = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
        except Exception:
            icc_ok = False
    return Picture(rgb, exif_bytes, icc if icc_ok else None)


def unclash(names: list[Path], want: list[Path], keep: list[bool]) -> list[Path]:
    """Output paths ``want`` for inputs named ``names``, where outputs that would coincide (``a.jpg``
    beside ``a.png``, compared ignoring case) take the input's full name plus their suffix
    (``a.png.jpg``), except those marked ``keep`` (the input already named so). Used by
    ``vqp image`` and ``vqp batch``, so both name outputs alike."""
    count = Counter(str(w).lower() for w in want)
    return [w.with_name(n.name + w.suffix) if count[str(w).lower()] > 1 and not k else w
            for n, w, k in zip(names, want, keep)]


def find_images(folder: Path, skip: Path | None = None) -> list[Path]:
    """Image files (by extension) under ``folder``, sorted, leaving out anything inside ``skip``
    (an output folder placed inside the input folder: earlier outputs are not inputs)."""
    skip = skip.resolve() if skip is not None else None
    return sorted(f for f in Path(folder).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                  and not (skip and skip in f.resolve().parents))


def reserve_temp(dest: str | os.PathLike, suffix: str = ".part") -> str:
    """Create an empty temp file beside ``dest`` (same folder, so the final rename is atomic)."""
    dest = Path(dest)
    if dest.is_dir():
        raise VqpError(f"{dest}: is a directory")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise VqpError(f"{dest}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=folder)
    except OSError as e:
        raise VqpError(f"cannot write {dest}: {e.strerror}") from None
    os.close(fd)
    return tmp


def discard_temps(dests: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove what writers of ``dests`` left behind when killed: ``reserve_temp``'s files
    (``.NAME.*.part*``) and x264's stats files named after them. Each folder is listed once, so a
    batch of many outputs in one folder costs one listing. Call it only when nothing is writing
    any of ``dests`` any more."""
    names: dict[Path, set[str]] = {}
    for d in map(Path, dests):
        names.setdefault(d.parent, set()).add(d.name)
    gone = []
    for folder, mine in names.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for e in entries:
            rest = e[1:]  # ".NAME.XXXX.part..." -> NAME is everything before one of the later dots
            if e.startswith(".") and any(rest[:i] in mine and ".part" in rest[i + 1:]
                                         for i, ch in enumerate(rest) if ch == "."):
                (folder / e).unlink(missing_ok=True)
                gone.append(folder / e)
    return sorted(gone)


def publish(tmp: str, dest: str | os.PathLike) -> None:
    """Give a finished temp file the usual permissions (mkstemp makes 0600) and rename it to ``dest``."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, dest)


def write_atomic(dest: str | os.PathLike, data: bytes) -> None:
    """Write through a temp file in the destination folder, then rename: never a partial file."""
    tmp = reserve_temp(dest)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        publish(tmp, dest)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise VqpError(f"cannot write {dest}: {e.strerror}") from None
