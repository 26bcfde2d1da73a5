"""vqp encode: the video pipeline on real codecs, a real clip excerpt and small synthetic clips."""
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA, FAST, MODELS, ROOT, as_from_a_shell, decode, make_clip, moving_square
from vqp.errors import VqpError
from vqp.metrics import box_mask, psnr
from vqp.quant import QuantParams, annex_k_tables, quantize_planes
from vqp.track import TrackConfig, Tracker, between
from vqp.types import Box, Detections
from vqp.video import VideoOptions, detect_clip, encode_video
from vqp.video.hold import Holder

def test_timestamps_rotation_and_audio_are_kept(tmp_path, detector):
    pts = [0, 10, 20, 40, 50, 90, 100, 130]  # variable frame rate, time base 1/100
    src = make_clip(tmp_path / "vfr.mp4", moving_square(8), pts=pts, rotation=90, audio=True)
    st = encode_video(src, tmp_path / "out.mp4", VideoOptions(**FAST), detector=detector)
    s, frames = decode(tmp_path / "out.mp4")
    assert [f.time for f in frames] == pytest.approx([p / 100 for p in pts])
    assert frames[0].rotation == 90
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        assert [bytes(p) for p in a.demux(audio=0) if p.size] == [bytes(p) for p in b.demux(audio=0) if p.size]
    assert st.copied_streams == 1 and st.frames == 8


def test_subtitles_are_copied(tmp_path, detector):
    clip = make_clip(tmp_path / "c.mp4", moving_square(10))
    (tmp_path / "s.srt").write_text("1\n00:00:00,000 --> 00:00:00,500\nhello\n\n2\n00:00:00,500 --> 00:00:00,900\nworld\n")
    src = tmp_path / "sub.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-i", str(tmp_path / "s.srt"), "-c", "copy",
                    "-c:s", "srt", str(src)], check=True)
    st = encode_video(src, tmp_path / "out.mkv", VideoOptions(**FAST), detector=detector)
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        assert [s.type for s in b.streams] == ["video", "subtitle"] and st.copied_streams == 1
        assert [bytes(p) for p in a.demux(subtitles=0) if p.size] == [bytes(p) for p in b.demux(subtitles=0) if p.size]


@pytest.mark.parametrize("codec,ext,name", [("libx265", "mkv", "hevc"), ("mjpeg", "avi", "mjpeg"), ("mpeg4", "mp4", "mpeg4")])
def test_other_codecs(bus_clip, detector, tmp_path, codec, ext, name):
    o = VideoOptions(codec=codec, detect_every=4, **(FAST if codec == "libx265" else {}))
    st = encode_video(bus_clip, tmp_path / f"out.{ext}", o, detector=detector)
    s, frames = decode(tmp_path / f"out.{ext}")
    assert s.codec_context.name == name and len(frames) == 16 == st.frames
    assert st.frames_with_detections == 16


def test_mjpeg_quantizes_on_its_own_tables(bus_clip, detector, tmp_path):
    plain = encode_video(bus_clip, tmp_path / "p.avi", VideoOptions(codec="mjpeg", mjpeg_quality=60, preprocess=False))
    st = encode_video(bus_clip, tmp_path / "v.avi", VideoOptions(codec="mjpeg", mjpeg_quality=60), detector=detector)
    assert st.bytes < 0.95 * plain.bytes


def test_bitrate_two_pass_and_match_crf(bus_clip, vtest_clip, detector, tmp_path):
    st = encode_video(bus_clip, tmp_path / "a.mp4", VideoOptions(bitrate=300_000, two_pass=True, **FAST), detector=detector)
    assert 0.5 < st.bitrate / 300_000 < 1.5
    assert not list(tmp_path.glob(".*"))  # two-pass stats files are gone
    m = encode_video(vtest_clip, tmp_path / "m.mp4", VideoOptions(match_crf=28, **FAST), detector=detector)
    assert m.bytes <= m.plain_bytes and m.plain_crf == 28 and m.method == "roi"  # ROI kept, at a CRF that fits
    m = encode_video(vtest_clip, tmp_path / "m.mp4", VideoOptions(match_crf=28, method="pixel", **FAST), detector=detector)
    assert m.bytes <= m.plain_bytes and m.crf < 28 and m.method == "pixel"  # the pixel stream is cheaper
    # a panning shot, where coarse background blocks cost more than they save: never larger than plain
    m = encode_video(bus_clip, tmp_path / "p.mp4", VideoOptions(match_crf=28, **FAST), detector=detector)
    assert m.bytes <= m.plain_bytes


def test_tracker_hysteresis_and_interpolation():
    t = Tracker(TrackConfig(conf_enter=0.5, conf_keep=0.2, hold=1))
    box = lambda x, c: Detections([Box(x, 10, x + 20, 50, c, 0, "person")], 100, 100)
    assert t.update(box(10, 0.3)) == {}             # too weak to start a track
    assert len(t.update(box(10, 0.6))) == 1         # confident: starts
    assert len(t.update(box(12, 0.25))) == 1        # weak but matching: kept
    assert len(t.update(Detections([], 100, 100))) == 1  # one miss: held
    assert t.update(Detections([], 100, 100)) == {}     # two misses: gone
    a, b = {1: Box(0, 0, 10, 10, 0.9, 0, "p")}, {1: Box(10, 0, 20, 10, 0.9, 0, "p"), 2: Box(50, 50, 60, 60, 0.9, 0, "p")}
    mid = between(a, b, 1)[0]
    assert mid[0].x1 == 5 and len(mid) == 2         # moved half-way; the new object shown already


def test_quantize_planes_keeps_objects_and_empty_frames():
    g = torch.Generator().manual_seed(0)
    planes = [torch.randint(0, 256, (2, 32, 48), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (2, 16, 24), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (2, 16, 24), generator=g, dtype=torch.uint8)]
    imp = torch.zeros(2, 2, 3)
    imp[0, 0, 0] = 1  # frame 0: one object macroblock; frame 1: nothing detected
    out = quantize_planes(planes, imp, annex_k_tables(50), QuantParams(), 16)
    assert torch.equal(out[0][0, :16, :16], planes[0][0, :16, :16])
    assert torch.equal(out[1][0, :8, :8], planes[1][0, :8, :8])
    assert not torch.equal(out[0][0, 16:, 16:], planes[0][0, 16:, 16:])
    assert all(torch.equal(o[1], p[1]) for o, p in zip(out, planes))


def test_holder_keeps_still_background_identical():
    h = Holder(3.0)
    y = torch.full((3, 32, 32), 100, dtype=torch.uint8)
    y[1] += 1          # tiny change: held
    y[2, :16, :16] = 180  # big change in one macroblock: refreshed there only
    imp = torch.zeros(3, 2, 2)
    imp[:, 1, 1] = 0.5
    hold, moving = h.masks(y, imp)
    assert not hold[0].any() and hold[1].all() and hold[2].sum() == 3 and not hold[2, 0, 0] and not moving.any()
    out = h.apply([y + 1], hold)  # stands in for the quantized planes
    assert torch.equal(out[1][0], out[0][0]) and out[2][0][0, 0] == 181
    pan = torch.stack([torch.arange(32).repeat(32, 1).roll(4 * i, 1) * 8 for i in range(4)]).to(torch.uint8)
    hold, moving = Holder(3.0).masks(pan, imp[:1].expand(4, -1, -1))
    assert moving.tolist() == [False, True, True, True] and not hold.any()  # a panning camera: nothing held


def test_odd_size_and_unusual_pixel_format(tmp_path, detector):
    frames = [np.ascontiguousarray(np.pad(a, ((0, 1), (0, 1), (0, 0)), mode="edge")) for a in moving_square(6)]
    src = make_clip(tmp_path / "odd.mkv", frames, codec="ffv1", fmt="bgr0")  # 97x65 packed RGB
    st = encode_video(src, tmp_path / "o.mp4", VideoOptions(**FAST), detector=detector)
    s, out = decode(tmp_path / "o.mp4")
    assert (s.width, s.height, s.codec_context.pix_fmt, len(out)) == (96, 64, "yuv420p", 6) and st.frames == 6


def corrupt_mjpeg(path, packets):
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    rnd = random.Random(1)
    for j in packets:
        a, b = soi[j] + 2, (soi[j + 1] - 10 if j + 1 < len(soi) else soi[j] + 600)
        data[a:b] = bytes(rnd.getrandbits(8) for _ in range(b - a))
    path.write_bytes(bytes(data))
    return path


def test_corrupt_packets_are_skipped_and_counted(tmp_path, detector):
    src = corrupt_mjpeg(make_clip(tmp_path / "c.avi", moving_square(12), codec="mjpeg", fmt="yuvj420p"), (4, 5))
    st = encode_video(src, tmp_path / "o.mp4", VideoOptions(**FAST), detector=detector)
    assert st.corrupt_packets == 2 and st.frames == 10
    assert "2 corrupt packets" in st.summary()


def test_bad_inputs_leave_no_output(tmp_path, detector):
    audio_only = tmp_path / "a.m4a"
    with av.open(str(audio_only), "w") as c:
        a = c.add_stream("aac", rate=16000, layout="mono")
        af = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 16000, 0
        for p in [*a.encode(af), *a.encode()]:
            c.mux(p)
    every_packet_bad = corrupt_mjpeg(make_clip(tmp_path / "z.avi", moving_square(4), codec="mjpeg", fmt="yuvj420p"),
                                     range(4))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    cases = [(audio_only, "no video stream"), (every_packet_bad, "no video frames"), (tmp_path / "junk.mp4", "not a media"),
             (tmp_path / "missing.mp4", "no such file")]
    for src, msg in cases:
        with pytest.raises(VqpError, match=msg):
            encode_video(src, tmp_path / "out.mp4", VideoOptions(), detector=detector)
    good = make_clip(tmp_path / "g.mp4", moving_square(3))
    with pytest.raises(VqpError, match="does not exist"):
        encode_video(good, tmp_path / "nope" / "out.mp4", VideoOptions(), detector=detector)
    with pytest.raises(VqpError, match="is a directory"):
        encode_video(good, tmp_path, VideoOptions(), detector=detector)
    with pytest.raises(VqpError, match="cannot encode"):
        encode_video(good, tmp_path / "out.mp3", VideoOptions(), detector=detector)
    with pytest.raises(VqpError, match="input file"):
        encode_video(good, good, VideoOptions(), detector=detector)
    with pytest.raises(VqpError, match="between 1 and 31"):
        encode_video(good, tmp_path / "out.mp4", VideoOptions(codec="mpeg4", crf=40), detector=detector)
    with pytest.raises(VqpError, match="at most one"):
        encode_video(good, tmp_path / "out.mp4", VideoOptions(crf=20, bitrate=10**6), detector=detector)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.m4a", "g.mp4", "junk.mp4", "z.avi"]


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true"}
    return subprocess.Popen([sys.executable, "-m", "vqp", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_encode_and_errors(bus_clip, tmp_path, capsys):
    from vqp.cli import main

    model = str(MODELS / "yolo11n_coco_dq.pt")
    assert main(["encode", str(bus_clip), str(tmp_path / "o.mp4"), "--preset", "veryfast", "--compare",
                 "--detect-every", "4", "--model", model]) == 0
    out = capsys.readouterr().out
    assert "16 frames (16 with detections)" in out and "vs plain" in out
    assert main(["encode", str(tmp_path / "missing.mp4"), str(tmp_path / "x.mp4"), "--model", "opencv"]) == 2
    assert capsys.readouterr().err.startswith("vqp: error:")
    with pytest.raises(SystemExit):  # argparse rejects a malformed bitrate
        main(["encode", str(bus_clip), str(tmp_path / "y.mp4"), "--bitrate", "2x"])


def test_ctrl_c_leaves_no_file(tmp_path):
    """Ctrl-C in the middle of a real clip (detector thread running): status 130, no file left."""
    dst = tmp_path / "out" / "o.mp4"
    dst.parent.mkdir()
    p = _cli("encode", str(DATA / "video" / "vtest_pets2009_480x360.avi"), str(dst),
             "--preset", "veryslow", "--model", str(MODELS / "yolo11n_coco_dq.pt"), preexec_fn=as_from_a_shell)
    while not list(dst.parent.iterdir()) and p.poll() is None:  # the temp file appears: encoding has begun
        time.sleep(0.05)  # no deadline: a loaded machine only makes this slower, never wrong
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate()
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "vqp: interrupted" and "Traceback" not in err, err
    assert list(dst.parent.iterdir()) == []
