"""`vqp image` end to end, and every kind of bad input: one-line error, exit 2, nothing half-written."""
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODELS, ROOT
from vqp.cli import main

MODEL = ["--model", str(MODELS / "yolo11n_coco_dq.pt")]


def _png_header_only(path, w, h):
    """A PNG that declares w x h pixels but holds no data: enough to trip a decompression-bomb check."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _run(args, capsys):
    rc = main(["image", *args, *MODEL])
    return rc, capsys.readouterr().err


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_single_file(png, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    rc = main(["image", str(png), str(out), "--match-quality", "50", *MODEL])
    assert rc == 0
    line = capsys.readouterr().out
    assert "quality" in line and "plain" in line and "detections" in line
    assert Image.open(out).format == "JPEG" and out.stat().st_mode & 0o644 == 0o644


def test_folder(tmp_path, astronaut, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(src / "a.png")
    Image.fromarray(astronaut[::2, ::2]).save(src / "sub" / "b.bmp")
    (src / "notes.txt").write_text("not an image")
    rc = main(["image", str(src), str(tmp_path / "out"), "--quality", "60", "--json", *MODEL])
    assert rc == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg")) == ["a.jpg", "sub/b.jpg"]


@pytest.mark.parametrize("make,msg", [
    (lambda p: p.write_text("hello, not an image"), "not an image"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes((ROOT / "tests" / "conftest.py").read_bytes()[:10]), "not an image"),
    (lambda p: _png_header_only(p, 30000, 30000), "too large"),
    (lambda p: Image.new("RGB", (70000, 4)).save(p), "side limit"),
])
def test_bad_input(tmp_path, capsys, make, msg):
    src = tmp_path / "in.png"
    make(src)
    before = src.read_bytes()
    rc, err = _run([str(src), str(tmp_path / "out.jpg")], capsys)
    assert rc == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err
    assert _leftovers(tmp_path, {"in.png"}) == [] and src.read_bytes() == before


def test_truncated_jpeg(tmp_path, capsys, bus_path):
    src = tmp_path / "cut.jpg"
    src.write_bytes(bus_path.read_bytes()[:20000])
    rc, err = _run([str(src), str(tmp_path / "out.jpg")], capsys)
    assert rc == 2 and "damaged image" in err
    assert _leftovers(tmp_path, {"cut.jpg"}) == []


def test_missing_input(tmp_path, capsys):
    rc, err = _run([str(tmp_path / "nope.png"), str(tmp_path / "out.jpg")], capsys)
    assert rc == 2 and "no such file" in err


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16", "LA", "1"])
def test_unusual_modes_encode(tmp_path, capsys, astronaut, mode):
    im = Image.fromarray(astronaut)
    if mode == "I;16":
        im = Image.fromarray((np.asarray(im.convert("L")).astype(np.uint16) * 257))
    elif mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(128)
    else:
        im = im.convert(mode)
    src = tmp_path / ("in.tif" if mode in ("CMYK", "I;16") else "in.png")
    im.save(src)
    rc, _ = _run([str(src), str(tmp_path / "out.jpg"), "--match-quality", "40"], capsys)
    assert rc == 0
    out = Image.open(tmp_path / "out.jpg")
    assert out.mode == "RGB" and out.size == (512, 512)


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (7, 9)])
def test_smaller_than_a_block(tmp_path, capsys, size):
    src = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(src)
    rc, _ = _run([str(src), str(tmp_path / "out.jpg")], capsys)
    assert rc == 0 and Image.open(tmp_path / "out.jpg").size == size


def test_unwritable_output(png, tmp_path, capsys):
    rc, err = _run([str(png), "/proc/vqp-test-out.jpg"], capsys)
    assert rc == 2 and "cannot write" in err
    rc, err = _run([str(png), str(tmp_path / "no" / "such" / "dir" / "out.jpg")], capsys)
    assert rc == 2 and "does not exist" in err
    assert _leftovers(tmp_path, {"astronaut.png"}) == []


def test_output_never_replaces_input(png, tmp_path, capsys):
    before = png.read_bytes()
    rc, err = _run([str(png), str(png)], capsys)
    assert rc == 2 and "input" in err and png.read_bytes() == before


def test_bad_options(png, tmp_path, capsys):
    rc, err = _run([str(png), str(tmp_path / "o.jpg"), "--match-quality", "0"], capsys)
    assert rc == 2 and "between 1 and 100" in err
    rc, err = _run([str(png), str(tmp_path / "o.jpg"), "--conf", "3"], capsys)
    assert rc == 2 and "--conf" in err
    rc, err = _run([str(png), str(tmp_path / "o.jpg"), "--classes", "unicorn"], capsys)
    assert rc == 2 and "unknown class" in err
    assert _leftovers(tmp_path, {"astronaut.png"}) == []


def test_real_process_exit_code_and_one_line(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("garbage")
    env = {**os.environ, "YOLO_OFFLINE": "true"}
    p = subprocess.run([sys.executable, "-m", "vqp", "image", str(bad), str(tmp_path / "o.jpg")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"vqp: error: {bad}: not an image Pillow can read"]


def test_weight_free_fallback_end_to_end(png, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    assert main(["image", str(png), str(out), "--model", "opencv", "--match-quality", "50"]) == 0
    line = capsys.readouterr().out
    assert "strength" in line and "passed through" not in line  # the Haar face drove the quantizer
    plain = tmp_path / "plain.jpg"
    Image.open(png).save(plain, quality=50)
    assert out.stat().st_size <= plain.stat().st_size
