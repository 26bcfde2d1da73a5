import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests.conftest import ROOT
from vqp import save_jpeg
from vqp.errors import VqpError
from vqp.imageio import Picture, load_image
from vqp.jpeg import get_encoder, insert_metadata
from vqp.metrics import box_mask, luma, psnr
from vqp.types import Detections


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def kodak_pics(kodak):
    return [load_image(kodak / f"kodim{i:02d}.png") for i in (6, 12)]  # boats; people on a beach


@pytest.mark.parametrize("encoder", ["pillow", "jpegli"])
@pytest.mark.parametrize("q", [30, 75])
def test_match_quality_never_larger_and_objects_better(encoder, q, kodak_pics, detector):
    enc = get_encoder(encoder)
    for pic in kodak_pics:
        plain = enc.encode(pic.rgb, q)
        r = save_jpeg(pic, match_quality=q, encoder=encoder, detector=detector)
        assert r.size <= len(plain) and r.plain_bytes == len(plain)
        assert r.detections.boxes and r.params is not None and r.quality > q
        m = box_mask([(b.x1, b.y1, b.x2, b.y2) for b in r.detections.boxes if b.conf > 0.25], *pic.rgb.shape[:2])
        y = luma(pic.rgb)
        assert psnr(y, luma(_decode(r.data)), m) > psnr(y, luma(_decode(plain)), m) + 0.5


def test_target_size(kodak_pics, detector):
    pic = kodak_pics[0]
    r = save_jpeg(pic, target_size=20000, detector=detector)
    assert r.size <= 20000
    with pytest.raises(VqpError, match="cannot fit"):
        save_jpeg(pic, target_size=300, detector=detector)


def test_no_detection_passes_through(detector):
    flat = Picture(np.full((64, 96, 3), 120, np.uint8))
    r = save_jpeg(flat, quality=50, detector=detector)
    assert r.params is None and r.data == get_encoder("pillow").encode(flat.rgb, 50)


def test_precomputed_detections_skip_the_detector(astronaut):
    r = save_jpeg(Picture(astronaut), match_quality=50, detections=Detections([], 512, 512))
    assert r.params is None and not r.detections.boxes


def test_options_are_checked(astronaut):
    with pytest.raises(VqpError, match="only one"):
        save_jpeg(Picture(astronaut), quality=50, target_size=1000)
    with pytest.raises(VqpError, match="between 1 and 100"):
        save_jpeg(Picture(astronaut), match_quality=0)
    with pytest.raises(VqpError, match="unknown encoder"):
        save_jpeg(Picture(astronaut), quality=50, encoder="gif")


@pytest.mark.parametrize("encoder", ["pillow", "jpegli"])
def test_exif_orientation_applied_and_metadata_kept(tmp_path, encoder, astronaut, detector):
    src = tmp_path / "rotated.jpg"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    exif[0x010F] = "vqp-test-camera"
    Image.fromarray(astronaut[:, :400]).save(src, quality=95, exif=exif, icc_profile=icc)
    dest = tmp_path / "out.jpg"
    save_jpeg(src, dest, match_quality=60, encoder=encoder, detector=detector)
    out = Image.open(dest)
    assert out.size == (512, 400)  # upright: width and height swapped
    assert out.info.get("icc_profile") == icc
    e = out.getexif()
    assert e.get(0x010F) == "vqp-test-camera" and e.get(0x0112, 1) == 1


def test_insert_metadata_chunks_large_icc():
    jpeg = get_encoder("jpegli").encode(np.zeros((8, 8, 3), np.uint8), 50)
    icc = bytes(range(256)) * 600  # 150 KB: needs 3 APP2 chunks
    out = Image.open(io.BytesIO(insert_metadata(jpeg, None, icc)))
    assert out.info["icc_profile"] == icc


def test_pillow_plugin_one_line(tmp_path, kodak_pics, detector, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "pillow"))
    import vqp_pillow  # noqa: F401  (registers the format)

    img = Image.fromarray(kodak_pics[0].rgb)
    img.save(tmp_path / "plain.jpg", quality=50)
    img.save(tmp_path / "vqp.jpg", "VQP", quality=50)
    plain, ours = (tmp_path / "plain.jpg").read_bytes(), (tmp_path / "vqp.jpg").read_bytes()
    assert len(ours) <= len(plain) and ours != plain
    assert Image.open(tmp_path / "vqp.jpg").format == "JPEG"


def test_insert_metadata_like_pillow():
    """jpegli gets its metadata spliced in; Pillow must read back what its own writer would write."""
    jpeg = get_encoder("jpegli").encode(np.zeros((8, 8, 3), np.uint8), 50)
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    out = Image.open(io.BytesIO(insert_metadata(jpeg, comment="hello", dpi=(72.4, 300), xmp=xmp)))
    assert out.info["comment"] == b"hello" and out.info["dpi"] == (72, 300) and out.info["xmp"] == xmp
    with pytest.raises(VqpError, match="EXIF data is too long"):
        insert_metadata(jpeg, exif=b"Exif\x00\x00" + bytes(70000))
    with pytest.raises(VqpError, match="EXIF data is too long"):
        get_encoder("pillow").encode(np.zeros((8, 8, 3), np.uint8), 50, exif=b"Exif\x00\x00" + bytes(70000))


def test_errors_name_the_users_file(tmp_path):
    with pytest.raises(VqpError, match=r"^image data: not an image Pillow can read$"):
        load_image(b"garbage")
    with pytest.raises(VqpError, match=r"^holiday\.png: not an image"):
        load_image(b"garbage", name="holiday.png")
    src = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(src)
    with pytest.raises(VqpError, match=rf"^{src}: image too large"):
        load_image(Image.open(src), max_pixels=100)  # a Pillow image opened from a file: its name
    with pytest.raises(VqpError, match=r"is a folder"):
        load_image(tmp_path)


def test_upright_false_keeps_pixels_and_leaves_the_image_alone(tmp_path, astronaut):
    src = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(astronaut[:, :400]).save(src, exif=exif)
    im = Image.open(src)
    assert load_image(im, upright=False).rgb.shape == (512, 400, 3)
    assert load_image(im).rgb.shape == (400, 512, 3) and im.size == (400, 512)  # the caller's image unchanged


def test_background_weight_checked(astronaut):
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(VqpError, match="background_weight must be a number >= 0"):
            save_jpeg(Picture(astronaut), quality=50, background_weight=bad)
