"""The Pillow plugin honours Pillow's JPEG save() arguments like plain Pillow, or refuses them by name."""
import io

import numpy as np
import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from tests.conftest import ROOT
from vqp.errors import VqpError


@pytest.fixture(scope="module")
def vqp_pillow():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "plugins" / "pillow"))
        import vqp_pillow  # registers the "VQP" format

        yield vqp_pillow


@pytest.fixture(scope="module")
def people(kodak):
    return Image.open(kodak / "kodim12.png").convert("RGB").reduce(2)  # people on a beach: the detector steers


def _save(img, fmt=None, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt or "JPEG", **kw)
    return buf.getvalue()


def _meta():
    exif = Image.Exif()
    exif[0x010F] = "vqp-test-camera"
    exif[0x0131] = "vqp plugin test"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    return dict(exif=exif.tobytes(), icc_profile=icc, dpi=(300, 150), comment=b"taken by vqp", xmp=xmp)


@pytest.mark.parametrize("encoder", ["pillow", "jpegli"])
def test_metadata_arguments_written_like_plain_pillow(vqp_pillow, people, encoder):
    meta = _meta()
    plain = Image.open(io.BytesIO(_save(people, quality=60, **meta)))
    data = _save(people, "VQP", quality=60, encoder=encoder, **meta)
    ours = Image.open(io.BytesIO(data))
    assert ours.format == "JPEG"
    for key in ("icc_profile", "dpi", "comment", "xmp"):
        assert ours.info.get(key) == plain.info.get(key) == (meta[key] if key != "dpi" else (300, 150)), key
    assert dict(ours.getexif()) == dict(plain.getexif()) == {0x010F: "vqp-test-camera", 0x0131: "vqp plugin test"}
    if encoder == "pillow":
        assert len(data) <= len(_save(people, quality=60, **meta))


def test_without_metadata_arguments_nothing_is_added(vqp_pillow, people, tmp_path):
    """Like Pillow: an image's own ICC profile and EXIF are not written unless passed to save()."""
    src = tmp_path / "in.jpg"
    people.save(src, quality=95, exif=Image.Exif().tobytes(), icc_profile=_meta()["icc_profile"])
    im = Image.open(src)
    ours, plain = (Image.open(io.BytesIO(_save(im, fmt, quality=50))) for fmt in ("VQP", "JPEG"))
    assert "icc_profile" not in ours.info and "icc_profile" not in plain.info
    assert "exif" not in ours.info and "exif" not in plain.info


def test_entropy_options_and_subsampling_honoured(vqp_pillow, people):
    for kw in (dict(progressive=True, subsampling="4:4:4"), dict(optimize=True, subsampling=2)):
        data = _save(people, "VQP", quality=50, **kw)
        ours, plain = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(_save(people, quality=50, **kw)))
        assert bool(ours.info.get("progressive")) == bool(plain.info.get("progressive")) == ("progressive" in kw)
        assert JpegImagePlugin.get_sampling(ours) == JpegImagePlugin.get_sampling(plain) == (0 if "progressive" in kw else 2)
        assert len(data) <= len(_save(people, quality=50, **kw)) and data != _save(people, quality=50, **kw)


@pytest.mark.parametrize("kw,name", [
    (dict(qtables="web_high"), "qtables"),
    (dict(smooth=50), "smooth"),
    (dict(restart_marker_rows=1), "restart_marker_rows"),
    (dict(extra=b"\xff\xe9\x00\x04ab"), "extra"),
    (dict(qualty=50), "qualty"),  # a typo is not silently ignored
    (dict(quality="web_high"), "quality"),
    (dict(subsampling="4:2:2"), "subsampling"),
    (dict(progressive=True, encoder="jpegli"), "progressive"),
])
def test_unsupported_arguments_refused_by_name(vqp_pillow, tmp_path, kw, name):
    img = Image.fromarray(np.full((32, 48, 3), 90, np.uint8))
    out = tmp_path / "o.jpg"
    with pytest.raises(VqpError, match=name):
        img.save(out, "VQP", **kw)
    assert not out.exists()  # Pillow removes the file it created
