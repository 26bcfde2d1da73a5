"""Issue 9: ROI side data into the encoder's own quantizer, the codec registry, methods, pipes, preview."""
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, MODELS, ROOT, decode, make_clip, moving_square
from vqp.codecs import CODECS
from vqp.metrics import psnr
from vqp.types import Box
from vqp.video import VideoOptions, encode_video
from vqp.video.pipeline import Interval
from vqp.video.roi_side_data import Region, SideData, plan

MODEL = str(MODELS / "yolo11n_coco_dq.pt")


def texture(n, w=128, h=64):
    """Fine random texture drifting one pixel a frame: expensive to code, so offsets show."""
    base = np.random.default_rng(0).integers(0, 256, (h, w + n, 3), np.uint8)
    return [np.ascontiguousarray(base[:, i:i + w]) for i in range(n)]


DECODERS = {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9"}
SETTINGS = {"libx264": {"crf": "32", "preset": "veryfast"},
            "libx265": {"crf": "30", "preset": "veryfast", "x265-params": "log-level=error"},
            "libvpx-vp9": {"crf": "40", "b": "0", "deadline": "realtime", "cpu-used": "7"}}


def encode_halves(codec, regions, settings=None):
    """Encode the texture at one CRF with these regions on every frame; mean luma PSNR per half."""
    frames = texture(6)
    tb = Fraction(1, 10)
    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = 128, 64, "yuv420p", tb
    cc.options = settings or SETTINGS[codec]
    side = SideData(128, 64, "yuv420p", tb)
    packets = []
    for i, a in enumerate(frames):
        f = av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format="yuv420p")
        f.pts, f.time_base = i, tb
        packets += cc.encode(side.attach(f, regions))
    packets += cc.encode(None)
    dec = av.CodecContext.create(DECODERS[codec], "r")
    out = [f for p in packets for f in dec.decode(p)] + dec.decode(None)
    ref = [torch.from_numpy(av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format="yuv420p")
                            .to_ndarray(format="gray")) for a in frames]
    got = [torch.from_numpy(f.to_ndarray(format="gray")) for f in out]
    left = np.mean([psnr(r[:, :64], g[:, :64]) for r, g in zip(ref, got)])
    right = np.mean([psnr(r[:, 64:], g[:, 64:]) for r, g in zip(ref, got)])
    return left, right


@pytest.mark.parametrize("codec", list(DECODERS))
def test_side_data_reaches_the_encoder(codec):
    """Regions on one half, same CRF: that half finer, the other coarser (VP9: realtime mode, as vqp runs it)."""
    plain = encode_halves(codec, [])
    roi = encode_halves(codec, [Region(0, 0, 64, 64, -0.15), Region(0, 0, 128, 64, 0.15)])
    assert roi[0] > plain[0] + 1.0
    assert roi[1] < plain[1] - 1.0


def test_vp9_honours_roi_only_in_realtime_mode():
    """Why vqp runs VP9 with deadline=realtime: in 'good' mode libvpx leaves the same regions unused."""
    good = {"crf": "40", "b": "0", "deadline": "good", "cpu-used": "4"}
    regions = [Region(0, 0, 64, 64, -0.15), Region(0, 0, 128, 64, 0.15)]
    assert encode_halves("libvpx-vp9", regions, good) == encode_halves("libvpx-vp9", [], good)
    assert CODECS["libvpx-vp9"].options["deadline"] == "realtime"


def test_regions_snap_to_the_grid_and_come_objects_first():
    boxes = [Box(21, 30, 60, 70, 0.9, 0, "person"), Box(100, 5, 130, 20, 0.15, 2, "car")]
    from vqp.roi import RoiConfig

    rs = plan(boxes, 176, 144, grid=16, obj=-0.12, bg=0.04, config=RoiConfig(margin=4, feather=16, conf_full=0.25))
    assert all(r.x % 16 == 0 and r.y % 16 == 0 and (r.w % 16 == 0 or r.x + r.w == 176) for r in rs)
    assert rs[0].qoffset < 0 and (rs[0].x, rs[0].y, rs[0].w, rs[0].h) == (16, 16, 48, 64)  # strong core first
    assert rs[-1] == Region(0, 0, 176, 144, rs[-1].qoffset) and rs[-1].qoffset > 0.04   # background last, funded
    assert [r.qoffset for r in rs] == sorted(r.qoffset for r in rs)                      # most negative first
    assert plan([], 176, 144, grid=16, obj=-0.12, bg=0.04) == []                         # nothing detected: plain


def test_offsets_follow_coverage():
    small = plan([Box(0, 0, 16, 16, 0.9, 0, "person")], 320, 320, grid=16, obj=-0.2, bg=0.04)
    large = plan([Box(0, 0, 300, 300, 0.9, 0, "person")], 320, 320, grid=16, obj=-0.2, bg=0.04)
    assert small[0].qoffset < large[0].qoffset < 0      # a frame-filling object gets little boost...
    assert large[-1].qoffset > small[-1].qoffset        # ...and the little background left pays more


def test_interval_adapts_to_motion():
    iv = Interval(8, 2, 32)
    still = {1: Box(10, 10, 50, 90, 0.9, 0, "person")}
    assert iv.update(still, still, 8) == 16 and iv.update(still, still, 16) == 32 and iv.update(still, still, 32) == 32
    fast = {1: Box(60, 10, 100, 90, 0.9, 0, "person")}   # moved more than its own size
    assert iv.update(still, fast, 32) == 16 and iv.update(fast, still, 16) == 8
    assert Interval(4, 4, 4).update(still, fast, 4) == 4  # min == max: fixed


@pytest.mark.parametrize("name", list(CODECS))
def test_every_registry_codec_round_trips(bus_clip, detector, tmp_path, name):
    spec = CODECS[name]
    dst = tmp_path / ("out" + spec.containers.split()[0])
    st = encode_video(bus_clip, dst, VideoOptions(codec=name, detect_every=4, **FAST), detector=detector)
    s, frames = decode(dst)
    assert len(frames) == 16 == st.frames and st.frames_with_detections == 16
    assert st.method == spec.method and (s.width, s.height) == (224, 320)


@pytest.fixture(scope="module")
def plain_150k(vtest_clip, tmp_path_factory):
    dst = tmp_path_factory.mktemp("plain") / "plain.mp4"
    st = encode_video(vtest_clip, dst, VideoOptions(bitrate=150_000, two_pass=True, preprocess=False))
    return st, decode(dst)[1]


@pytest.mark.parametrize("method", ["roi", "pixel", "both"])
def test_methods_move_bits_to_objects(vtest_clip, plain_150k, detector, tmp_path, method):
    """Each method at equal bitrate (two-pass): better objects than plain, paid for by the background."""
    from vqp.metrics import box_mask
    from vqp.video import detect_clip

    plain, base = plain_150k
    st = encode_video(vtest_clip, tmp_path / "v.mp4", VideoOptions(bitrate=150_000, two_pass=True, method=method),
                      detector=detector)
    assert st.method == method and st.bytes < 1.1 * plain.bytes
    dets = detect_clip(vtest_clip, detector, every=8)
    ref, out = decode(vtest_clip)[1], decode(tmp_path / "v.mp4")[1]
    gains = []
    for i in (0, 8, 16):
        m = box_mask([(b.x1, b.y1, b.x2, b.y2) for b in dets[i].boxes], 360, 480)
        y = [torch.from_numpy(f[i].to_ndarray(format="gray")) for f in (ref, out, base)]
        gains.append((psnr(y[0], y[1], m) - psnr(y[0], y[2], m), psnr(y[0], y[1], ~m) - psnr(y[0], y[2], ~m)))
    obj, bg = np.mean(gains, 0)
    assert obj > 0.5 and bg < 0


def _cli(*args, **kw):
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true"}
    return subprocess.run([sys.executable, "-m", "vqp", *args], cwd=ROOT, env=env, capture_output=True, **kw)


def test_method_option_and_bad_values(bus_clip, tmp_path):
    r = _cli("encode", str(bus_clip), str(tmp_path / "o.mp4"), "--method", "pixel", "--preset", "veryfast",
             "--model", MODEL, "--json", text=True)
    assert r.returncode == 0 and '"method": "pixel"' in r.stdout
    for args, msg in ((["--method", "sideways"], "unknown method"),
                      (["--codec", "mjpeg", "--method", "roi"], "no region-of-interest"),
                      (["--method", "roi", "-x", "aq-mode=0"], "aq-mode 0"),
                      (["--codec", "h266"], "unknown codec"),
                      (["--codec", "mjpeg", "--crf", "20"], "takes no crf"),
                      (["--codec", "mjpeg", "--bitrate", "300k"], "takes no bitrate"),
                      (["--codec", "libvpx-vp9", "--crf", "70"], "between 0 and 63"),
                      (["--roi-offsets", "0.3,0.1"], "ROI offsets")):
        r = _cli("encode", str(bus_clip), str(tmp_path / "x.mp4"), "--model", MODEL, *args, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]  # no output, no temp file left


def test_stdin_stdout_pipes(bus_clip, tmp_path):
    mkv = tmp_path / "in.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(bus_clip), "-c", "copy", str(mkv)], check=True)
    r = _cli("encode", "-", "-", "--format", "matroska", "--preset", "veryfast", "--model", MODEL,
             input=mkv.read_bytes())
    assert r.returncode == 0, r.stderr
    (tmp_path / "out.mkv").write_bytes(r.stdout)
    s, frames = decode(tmp_path / "out.mkv")
    assert s.codec_context.name == "h264" and len(frames) == 16
    r = _cli("encode", str(bus_clip), "-", "--model", MODEL, text=True)
    assert r.returncode == 2 and "--format" in r.stderr


def test_preview_shows_the_roi_map(bus_clip, detector, tmp_path):
    encode_video(bus_clip, tmp_path / "o.mp4", VideoOptions(detect_every=4, **FAST), detector=detector,
                 preview=tmp_path / "p.png")
    im = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    assert im.shape[1] == 3 * 320 and im.shape[0] >= 320
    assert ((im[..., 1] - im[..., 0]) > 60).any()  # green tint where the objects are


def test_x265_takes_frames_with_and_without_regions():
    """libx265 crashes on a mix of frames with and without ROI data; vqp gives the others a neutral
    region. Run in a child process, so a crash fails this test rather than the whole run."""
    code = """
import av, numpy as np
from fractions import Fraction
from vqp.codecs import CODECS
from vqp.video.roi_side_data import Region, SideData
w, h, tb = 160, 96, Fraction(1, 10)
cc = av.CodecContext.create("libx265", "w")
cc.width, cc.height, cc.pix_fmt, cc.time_base = w, h, "yuv420p", tb
cc.options = {"crf": "28", "preset": "medium", "x265-params": "log-level=error"}
side = SideData(w, h, "yuv420p", tb, CODECS["libx265"].roi_every_frame)
rng = np.random.default_rng(0)
n = 0
for i in range(40):
    f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (h, w, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
    f.pts, f.time_base = i, tb
    n += len(cc.encode(side.attach(f, [Region(16 * (i % 4), 0, 64, h, -0.1), Region(0, 0, w, h, 0.05)] if i % 3 else [])))
n += len(cc.encode(None))
print(n)
"""
    import os

    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "40", r.stderr[-500:]


def test_source_picture_types_do_not_reach_the_encoder(tmp_path, detector):
    """Decoded frames of an intra-only source are typed I; passed on as they are, x264 would code
    every one as an I-frame. The encoder picks its own types, with ROI as without."""
    src = make_clip(tmp_path / "intra.mkv", moving_square(12), codec="ffv1")
    for method in ("roi", "pixel"):
        encode_video(src, tmp_path / f"{method}.mp4", VideoOptions(method=method, **FAST), detector=detector)
        with av.open(str(tmp_path / f"{method}.mp4")) as c:
            keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
        assert len(keys) == 12 and sum(keys) == 1, (method, keys)
