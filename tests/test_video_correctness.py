"""Issue 10, video: colour and bit depth carried through, audio kept past a bad packet, options
checked before any work, one-line errors, and output people read (progress, summary, FFmpeg's log)."""
import json
import logging
import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from conftest import FAST, ROOT
from vqp.cli import main
from vqp.codecs import CODECS
from vqp.errors import VqpError
from vqp.quant import QuantParams, annex_k_tables, quantize_planes
from vqp.video import VideoOptions, encode_video, validate

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None or shutil.which("ffprobe") is None,
                                reason="the ffmpeg CLI is part of `make setup`")
TAGS = "pix_fmt,profile,color_range,color_space,color_primaries,color_transfer"


def ffmpeg(*args):
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def probe(path) -> dict:
    """The video stream's format and colour tags as ffprobe reads them (what players read)."""
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", f"stream={TAGS}",
                        "-of", "json", str(path)], check=True, capture_output=True, text=True)
    return json.loads(r.stdout)["streams"][0]


def luma(path) -> list[np.ndarray]:
    """Every frame's Y plane as stored (8 or 16-bit samples, no range or depth conversion)."""
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(video=0):
            dt = np.dtype(np.uint16 if f.format.components[0].bits > 8 else np.uint8)
            p = f.planes[0]
            out.append(np.frombuffer(p, dt).reshape(-1, p.line_size // dt.itemsize)[: f.height, : f.width].astype(float))
        return out


def rgb(path) -> list[np.ndarray]:
    """Every frame as a player shows it: converted to RGB by the stream's own range and matrix tags."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]


def mad(a, b) -> float:
    return float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b)]))


@pytest.fixture(scope="module")
def full_range(tmp_path_factory):
    """Full-range BT.709 (yuvj420p), as phones and webcams write it."""
    p = tmp_path_factory.mktemp("colour") / "full.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-frames:v", 10, "-pix_fmt", "yuvj420p",
           "-color_range", "pc", "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
           "-c:v", "libx264", "-crf", 8, "-preset", "veryfast", p)
    return p


@pytest.fixture(scope="module")
def hdr10(tmp_path_factory):
    """10-bit PQ BT.2020 (HDR10), stored losslessly."""
    p = tmp_path_factory.mktemp("colour") / "hdr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-frames:v", 10, "-pix_fmt", "yuv420p10le",
           "-color_range", "tv", "-colorspace", "bt2020nc", "-color_primaries", "bt2020", "-color_trc", "smpte2084",
           "-c:v", "ffv1", p)
    return p


def test_full_range_bt709_is_kept(full_range, detector, tmp_path):
    src = luma(full_range)
    assert min(y.min() for y in src) < 16 or max(y.max() for y in src) > 235  # truly full range
    for method in ("roi", "pixel"):
        out = tmp_path / f"{method}.mp4"
        encode_video(full_range, out, VideoOptions(method=method, **FAST), detector=detector)
        t = probe(out)
        assert (t["color_range"], t["color_space"], t["color_primaries"], t["color_transfer"]) == \
               ("pc", "bt709", "bt709", "bt709"), t
        assert mad(src, luma(out)) < 1.5          # the samples themselves: no range squeeze (~8 levels)
        assert mad(rgb(full_range), rgb(out)) < 3  # and as a player shows them


def test_mjpeg_gets_jfif_samples(full_range, detector, tmp_path):
    """MJPEG is full-range BT.601 by definition: a BT.709 source is converted, and looks the same."""
    out = tmp_path / "o.mkv"
    encode_video(full_range, out, VideoOptions(codec="mjpeg", mjpeg_quality=95), detector=detector)
    t = probe(out)
    assert (t["color_range"], t["color_space"], t["color_primaries"]) == ("pc", "bt470bg", "bt709"), t
    assert mad(rgb(full_range), rgb(out)) < 4


@pytest.mark.parametrize("codec,ext,profile", [("libx264", "mp4", "High 10"), ("libx265", "mkv", "Main 10")])
def test_hdr10_stays_10_bit(hdr10, detector, tmp_path, codec, ext, profile):
    out = tmp_path / f"o.{ext}"
    st = encode_video(hdr10, out, VideoOptions(codec=codec, **FAST), detector=detector)
    t = probe(out)
    assert (t["pix_fmt"], t["profile"], t["color_range"], t["color_space"], t["color_primaries"],
            t["color_transfer"]) == ("yuv420p10le", profile, "tv", "bt2020nc", "bt2020", "smpte2084"), t
    assert st.frames == 10 and mad(luma(hdr10), luma(out)) < 16  # 10-bit levels (a range squeeze: ~30)


def test_10_bit_pixel_method_on_real_detections(bus_path, detector, tmp_path):
    """The requantizer and the hold work in 10 bits: the background cheaper, the stream still 10-bit."""
    src = tmp_path / "bus10.mkv"
    ffmpeg("-loop", 1, "-i", bus_path, "-vf", "scale=224:320,noise=alls=6:allf=t", "-frames:v", 8,
           "-pix_fmt", "yuv420p10le", "-c:v", "ffv1", src)  # a still shot with sensor noise
    plain = encode_video(src, tmp_path / "plain.mkv", VideoOptions(preprocess=False, **FAST))
    st = encode_video(src, tmp_path / "pixel.mkv", VideoOptions(method="pixel", detect_every=4, **FAST),
                      detector=detector)
    assert probe(tmp_path / "pixel.mkv")["pix_fmt"] == "yuv420p10le"
    assert st.frames_with_detections == 8 and st.frames_moving == 0 and st.bytes < 0.95 * plain.bytes  # 8-bit: 0.94


def test_quantizer_at_10_bits_matches_8_bits():
    g = torch.Generator().manual_seed(0)
    y8 = torch.randint(0, 256, (1, 32, 48), generator=g, dtype=torch.uint8)
    y10 = y8.to(torch.int16) * 4  # the same picture in 10 bits
    imp = torch.zeros(1, 2, 3)
    imp[0, 0, 0] = 1
    tables, p = annex_k_tables(50), QuantParams()
    q8 = quantize_planes([y8], imp, tables, p, 16)[0].float()
    q10 = quantize_planes([y10], imp, tables, p, 16, depth=10)[0]
    assert q10.dtype == torch.int16 and torch.equal(q10[0, :16, :16], y10[0, :16, :16])  # the object as it was
    assert (q10.float() / 4 - q8).abs().mean() < 0.5 and not torch.equal(q10, y10)
    assert CODECS["libx264"].roi_scale(10) == pytest.approx(51 / 63) and CODECS["libx264"].roi_scale(8) == 1


def test_what_cannot_be_kept_is_said_once(hdr10, full_range, detector, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vqp"):
        encode_video(hdr10, tmp_path / "o.avi", VideoOptions(codec="mpeg4", measure_plain=True), detector=detector)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("10-bit source is reduced" in m and "libx264" in m for m in lines) == 1, lines
    assert sum("cannot carry" in m and "trc smpte2084" in m for m in lines) == 1, lines
    assert probe(tmp_path / "o.avi")["pix_fmt"] == "yuv420p"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vqp"):
        encode_video(full_range, tmp_path / "o.mkv", VideoOptions(codec="mpeg4"), detector=detector)
    assert not caplog.records  # .mkv carries every tag


@pytest.fixture(scope="module")
def damaged_avi(tmp_path_factory):
    """2 s of H.264 and PCM audio in AVI, with one audio chunk claiming 1 byte (a corrupt size, as
    a bad sector leaves it) and the back of a few frames' slice data scrambled."""
    p = tmp_path_factory.mktemp("damaged") / "d.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi", "-i", "sine=f=440:sample_rate=16000",
           "-t", 2, "-c:v", "libx264", "-preset", "veryfast", "-g", 10, "-c:a", "pcm_s16le", p)
    with av.open(str(p)) as c:
        audio = [(q.pos, q.size) for q in c.demux(audio=0) if q.size]
    with av.open(str(p)) as c:
        video = [(q.pos, q.size) for q in c.demux(video=0) if q.size]
    data = bytearray(p.read_bytes())
    pos, _ = audio[20]
    data[pos - 4:pos] = (1).to_bytes(4, "little")  # the chunk header's size field
    rng = np.random.default_rng(2)
    for pos, size in (video[k] for k in (3, 12, 21, 30)):
        data[pos + size // 3:pos + size] = rng.integers(0, 256, size - size // 3, np.uint8).tobytes()
    p.write_bytes(bytes(data))
    return p


def audio_seconds(path) -> float:
    with av.open(str(path)) as c:
        n = 0
        for q in c.demux(audio=0):
            try:
                n += sum(f.samples for f in q.decode())
            except av.FFmpegError:  # the damaged packet of the source
                pass
        return n / c.streams.audio[0].sample_rate


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_audio_goes_on_after_a_corrupt_packet(damaged_avi, tmp_path, ext):
    out = tmp_path / f"o.{ext}"
    st = encode_video(damaged_avi, out, VideoOptions(preprocess=False, **FAST))
    assert st.frames == 50 and st.copied_streams == 1 and st.corrupt_packets >= 1
    assert audio_seconds(out) == pytest.approx(audio_seconds(damaged_avi), abs=0.07)  # all but that one packet
    assert audio_seconds(out) > 1.8


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true"}
    return subprocess.run([sys.executable, "-m", "vqp", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True)


def test_ffmpeg_log_only_with_verbose(damaged_avi, tmp_path):
    quiet = run_cli("encode", damaged_avi, tmp_path / "q.mp4", "--plain", "--preset", "ultrafast")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines()[:-1] == []  # nothing but vqp's line on what it skipped
    assert "skipped 1 corrupt packets" in quiet.stderr and "@ 0x" not in quiet.stderr
    loud = run_cli("-v", "encode", damaged_avi, tmp_path / "v.mp4", "--plain", "--preset", "ultrafast")
    assert loud.returncode == 0, loud.stderr
    assert "[libav.h264] error while decoding" in loud.stderr and "[libav.pcm_s16le] Invalid PCM" in loud.stderr


BAD = [(["--gop", "0"], "gop"), (["--gop", "-3"], "gop"), (["--strength", "-1"], "strength"),
       (["--hold", "-1"], "hold"), (["--frames", "-1"], "frames"), (["--frames", "0"], "frames"),
       (["-x", "nonsense=1"], "libx264 has no option nonsense"),
       (["-x", "x264-params=nonsense=1"], "Error parsing option 'nonsense = 1'"),
       (["--preset", "banana"], "invalid preset 'banana'"),
       (["--match-crf", "99"], "match-crf between 0 and 51"),
       (["--codec", "libvpx-vp9", "--match-crf", "70"], "between 0 and 63"),
       (["--codec", "mjpeg", "--bitrate", "1M"], "takes no bitrate"),
       (["--device", "banana"], "not a torch device"), (["--device", "cuda:99"], "CUDA GPU")]


@pytest.mark.parametrize("args,msg", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_options_are_one_line_errors(full_range, tmp_path, capsys, args, msg):
    assert main(["encode", str(full_range), str(tmp_path / "o.mp4"), "--model", "opencv", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqp: error:") and err.count("\n") == 1 and msg in err, err
    assert list(tmp_path.iterdir()) == []


def test_library_gets_the_same_checks():
    for o in (VideoOptions(gop=0), VideoOptions(strength=float("nan")), VideoOptions(hold=-1),
              VideoOptions(codec_options={"nonsense": "1"}), VideoOptions(codec="libx265", match_crf=99),
              VideoOptions(device="banana")):
        with pytest.raises(VqpError):
            validate(o)


@pytest.mark.parametrize("name", ["o.xyz", "noext"])
def test_unknown_output_format(full_range, tmp_path, capsys, name):
    assert main(["encode", str(full_range), str(tmp_path / name), "--model", "opencv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "--format" in err and ".mkv" in err, err
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_to_frames_and_summary_reads_plainly(bus_clip, tmp_path):
    seen = []
    st = encode_video(bus_clip, tmp_path / "o.mkv", VideoOptions(preprocess=False, max_frames=5, **FAST),
                      progress=seen.append)
    assert seen == pytest.approx([i / 5 for i in range(1, 6)])  # out of 5, not the clip's 16
    s = st.summary()
    assert "processing speed" in s and " fps" not in s
    assert st.size == os.path.getsize(tmp_path / "o.mkv") > st.bytes and f"(file {st.size} B)" in s
