"""`vqp image` end to end, and every kind of bad input: one-line error, exit 2, nothing half-written."""
import json
import os
import re
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
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"vqp: error: {bad}: not an image Pillow can read"]


def test_weight_free_fallback_end_to_end(png, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    assert main(["image", str(png), str(out), "--model", "opencv", "--match-quality", "50"]) == 0
    line = capsys.readouterr().out
    assert "background lam" in line and "passed through" not in line  # the Haar face drove the quantizer
    plain = tmp_path / "plain.jpg"
    Image.open(png).save(plain, quality=50)
    assert out.stat().st_size <= plain.stat().st_size


# -- correctness sweep (issue 10) -----------------------------------------------------------------
def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_folder_name_clash_keeps_both(tmp_path, astronaut, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "a.jpg", quality=90)
    Image.fromarray(astronaut[:256]).save(src / "a.png")
    Image.fromarray(astronaut[:128]).save(src / "b.png")
    assert main(["image", str(src), str(out), "--quality", "50", *MODEL]) == 0
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"a.jpg": (512, 512), "a.png.jpg": (512, 256), "b.jpg": (512, 128)}


def test_rerun_into_output_inside_input_skips_earlier_outputs(tmp_path, astronaut, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(astronaut[::2, ::2]).save(src / "a.png")
    for _ in range(2):
        assert main(["image", str(src), str(src / "out"), "--quality", "50", "--json", *MODEL]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(x)["input"] for x in lines] == [str(src / "a.png")]
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == ["a.png", "out/a.jpg"]


@pytest.mark.parametrize("name", ["out.png", "out"])
def test_single_output_must_be_named_jpeg(png, tmp_path, capsys, name):
    rc, err = _run([str(png), str(tmp_path / name)], capsys)
    assert rc == 2 and ".jpg" in err and err.count("\n") == 1
    assert _leftovers(tmp_path, {"astronaut.png"}) == []


def test_quality_never_larger_than_plain(tmp_path):
    """Noise around a face-sized object: requantizing noise at a coarser step (a ladder of the old
    step-multiplier kind) makes a larger file than plain JPEG at the same quality, so the plain file
    is written. The rate-distortion ladder only removes bits, so it needs a made-up ladder to show."""
    from tests.conftest import ultralytics_asset
    from vqp.jpeg import save_jpeg
    from vqp.quant import QuantParams

    a = _noise(480, 640)
    a[100:400, 200:440] = np.asarray(Image.open(ultralytics_asset("zidane.jpg")).convert("RGB").resize((240, 300)))
    src = tmp_path / "in.png"
    Image.fromarray(a).save(src)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(a).save(plain, quality=90)
    r = save_jpeg(src, tmp_path / "o.jpg", quality=90, conf=0.05, model=MODEL[1], ladder=(QuantParams(2, 64),))
    assert r.detections.boxes and r.params is None  # objects found, yet the plain file won
    assert r.size == r.plain_bytes == plain.stat().st_size == (tmp_path / "o.jpg").stat().st_size


def test_summary_line_shows_byte_difference(png, tmp_path, capsys):
    assert main(["image", str(png), str(tmp_path / "o.jpg"), "--match-quality", "60", *MODEL]) == 0
    line = capsys.readouterr().out
    m = re.search(r"(\d+) B vs (\d+) B plain at q60 \(([+-]\d+) B, x(\d\.\d{4})\)", line)
    assert m and int(m[1]) - int(m[2]) == int(m[3]) and abs(int(m[1]) / int(m[2]) - float(m[4])) < 1e-4


@pytest.mark.parametrize("opts,msg", [
    (["--priority", "person=2"], "[0, 1]"),
    (["--priority", "garbage"], "CLASS=W"),
    (["--priority", "person=high"], "CLASS=W"),
    (["--background-weight", "-1"], "--background-weight"),
    (["--background-weight", "nan"], "--background-weight"),
    (["--quality", "101"], "--quality must be between 1 and 100"),
    (["--match-quality", "0"], "--match-quality must be between 1 and 100"),
    (["--target-size", "0"], "--target-size must be between 1"),
    (["--margin", "-3"], "--margin"),
])
def test_bad_option_values_one_line(tmp_path, astronaut, capsys, opts, msg):
    src = tmp_path / "in"
    src.mkdir()
    for n in ("a", "b"):
        Image.fromarray(astronaut[::4, ::4]).save(src / f"{n}.png")
    for args in ([str(src / "a.png"), str(tmp_path / "o.jpg")], [str(src), str(tmp_path / "out")]):
        rc, err = _run([*args, *opts], capsys)
        assert rc == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.jpg").exists()


def test_priority_is_used(png, tmp_path, capsys):
    """A zero weight for the only class found leaves nothing to protect: the image passes through."""
    rc = main(["image", str(png), str(tmp_path / "o.jpg"), "--quality", "50", "--priority", "person=0", "--json",
               "--classes", "person", *MODEL])
    assert rc == 0 and json.loads(capsys.readouterr().out)["strength"] is None


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_only_on_a_terminal(tmp_path, astronaut, capsys, monkeypatch, tty):
    src = tmp_path / "in"
    src.mkdir()
    for n in ("a", "b"):
        Image.fromarray(astronaut[::4, ::4]).save(src / f"{n}.png")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert main(["image", str(src), str(tmp_path / "out"), "--quality", "50", *MODEL]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 2  # one line per file, through tqdm.write
    assert ("img/s" in cap.err or "2/2" in cap.err) == tty


def test_folder_error_names_the_file(tmp_path, astronaut, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "a.png")
    Image.fromarray(astronaut[::8, ::8]).save(src / "b.png")
    rc, err = _run([str(src), str(tmp_path / "out"), "--target-size", "2000"], capsys)
    assert rc == 2 and f"{src / 'a.png'}: cannot fit" in err and "1 of 2 files failed" in err
    assert (tmp_path / "out" / "b.jpg").exists() and not (tmp_path / "out" / "a.jpg").exists()
    rc, err = _run([str(src / "a.png"), str(tmp_path / "a.jpg"), "--target-size", "2000"], capsys)
    assert rc == 2 and err == f"vqp: error: {src / 'a.png'}: cannot fit the image in 2000 bytes; " \
                             f"the smallest file is {err.split()[-2]} bytes\n"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # in-process: pytest resets filters
def test_decompression_bomb_warning_goes_to_the_log(tmp_path, monkeypatch, caplog):
    """Over Pillow's warning threshold but within vqp's limit: no Pillow warning on stderr, an INFO
    log line instead (shown with -v)."""
    src = tmp_path / "big.png"
    Image.fromarray(_noise(200, 300)).save(src)
    code = ("import sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = 40_000; from vqp.cli import main; "
            f"sys.exit(main(['-v', 'detect', {str(src)!r}, '--model', {str(MODELS / 'yolo11n_coco_dq.pt')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "YOLO_OFFLINE": "true"})
    assert p.returncode == 0 and json.loads(p.stdout)["width"] == 300
    assert "DecompressionBombWarning" not in p.stderr and "decompression-bomb warning threshold" in p.stderr
    from vqp.imageio import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)
    with caplog.at_level("INFO", logger="vqp"):
        load_image(src)
    assert [r.levelname for r in caplog.records if "decompression-bomb" in r.message] == ["INFO"]
