"""vqp filter: y4m in, y4m out, driven by the real ffmpeg command-line tool."""
import io
import os
import shutil
import subprocess
import sys
import threading

import av
import numpy as np
import pytest

from conftest import MODELS, ROOT
from vqp.errors import VqpError
from vqp.filter import filter_y4m
from vqp.video import VideoOptions
from vqp.y4m import read_frames, read_header, write_frame

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg CLI is part of `make setup`")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true", "YOLO_VERBOSE": "false"}
VQP = [sys.executable, "-m", "vqp"]
MODEL = ["--model", str(MODELS / "yolo11n_coco_dq.pt")]


def y4m_of(image, frames=8, pix_fmt="yuv420p", size="240:320") -> bytes:
    """``frames`` frames of an image as y4m, made by the ffmpeg CLI."""
    return subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-loop", "1", "-i", str(image), "-vf", f"scale={size}",
                           "-frames:v", str(frames), "-pix_fmt", pix_fmt, "-f", "yuv4mpegpipe", "-"],
                          check=True, capture_output=True).stdout


def planes(data: bytes):
    s = io.BytesIO(data)
    h = read_header(s)
    return h, list(read_frames(s, h))


def test_ffmpeg_pipe_end_to_end(bus_path, tmp_path):
    out = tmp_path / "out.mp4"
    cmd = (f"{FFMPEG} -nostdin -v error -loop 1 -i {bus_path} -vf scale=240:320 -frames:v 12 -f yuv4mpegpipe - "
           f"| {' '.join(VQP)} filter --stats {' '.join(MODEL)} "
           f"| {FFMPEG} -v error -y -i - -c:v libx264 -preset veryfast {out}")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "12 frames (12 with detections)" in r.stderr
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 12 and (frames[0].width, frames[0].height) == (240, 320)


def test_filter_420_and_444_in_process(bus_path, detector):
    for fmt, tag in (("yuv420p", "C420"), ("yuv444p", "C444")):
        src = y4m_of(bus_path, 4, fmt)
        out = io.BytesIO()
        st = filter_y4m(io.BytesIO(src), out, VideoOptions(detect_every=2), detector=detector)
        fi, fo = planes(src)[1], planes(out.getvalue())[1]
        assert out.getvalue().split(b"\n")[0] == src.split(b"\n")[0] and tag in out.getvalue().split(b"\n")[0].decode()
        assert st.frames == len(fo) == 4 and st.frames_with_detections == 4
        assert [p.shape for p in fo[0]] == [p.shape for p in fi[0]]
        assert not np.array_equal(fo[0][0], fi[0][0])  # the background was quantized
        # a big object (the bus, the people) covers the middle of the frame: kept bit-exact there
        assert np.array_equal(fo[0][0][160:176, 96:112], fi[0][0][160:176, 96:112])


def test_streams_with_bounded_memory(detector):
    h = b"YUV4MPEG2 W64 H48 F10:1 Ip A1:1 C420jpeg\n"
    frame = [np.full((48, 64), 90, np.uint8), np.full((24, 32), 128, np.uint8), np.full((24, 32), 128, np.uint8)]
    buf = io.BytesIO()
    buf.write(h)
    for _ in range(96):
        write_frame(buf, frame)
    src = io.BytesIO(buf.getvalue())
    seen = []

    class Out(io.BytesIO):
        def write(self, b):
            seen.append(src.tell())
            return super().write(b)

    out = Out()
    st = filter_y4m(src, out, VideoOptions(detect_every=8, detect_min=8, detect_max=8), detector=detector)
    assert st.frames == 96 and out.getvalue() == buf.getvalue()  # no detections: bit-identical
    frame_bytes = len(b"FRAME\n") + 64 * 48 * 3 // 2
    assert seen[1] < len(h) + 20 * frame_bytes  # output began after a chunk, not after the whole stream


def test_eof_cases(detector):
    head = b"YUV4MPEG2 W32 H32 F25:1 C420jpeg\n"
    out = io.BytesIO()
    assert filter_y4m(io.BytesIO(head), out, detector=detector).frames == 0 and out.getvalue() == head
    with pytest.raises(VqpError, match="ended inside a frame"):
        filter_y4m(io.BytesIO(head + b"FRAME\n" + bytes(100)), io.BytesIO(), detector=detector)
    with pytest.raises(VqpError, match="not a yuv4mpegpipe"):
        filter_y4m(io.BytesIO(b"\x00\x00\x01\xb3 mpeg video\n"), io.BytesIO(), detector=detector)
    with pytest.raises(VqpError, match="out of sync after frame 0"):  # a damaged FRAME marker
        filter_y4m(io.BytesIO(head + b"FRAMX\n" + bytes(1536)), io.BytesIO(), detector=detector)
    with pytest.raises(VqpError, match="empty"):
        filter_y4m(io.BytesIO(b""), io.BytesIO(), detector=detector)
    with pytest.raises(VqpError, match="C422 not supported"):
        filter_y4m(io.BytesIO(b"YUV4MPEG2 W32 H32 F25:1 C422\n"), io.BytesIO(), detector=detector)


def test_closed_pipe_and_bad_input_from_the_cli(bus_path):
    src = y4m_of(bus_path, 40, size="160:208")
    p = subprocess.Popen(VQP + ["filter", "--model", "opencv"], cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed():
        try:
            p.stdin.write(src)
            p.stdin.close()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    assert len(p.stdout.read(1000)) == 1000
    p.stdout.close()  # the reader goes away mid-stream
    err = p.stderr.read().decode()
    writer.join()
    assert p.wait() == 0 and "Traceback" not in err and "Exception" not in err
    r = subprocess.run(VQP + ["filter", "--model", "opencv"], cwd=ROOT, env=ENV, input=b"junk", capture_output=True)
    assert r.returncode == 2 and r.stderr.decode().startswith("vqp: error: input is not a yuv4mpegpipe")


def test_damaged_streams_from_the_cli(bus_path):
    """A header declaring a huge frame is refused before anything is allocated (it was a MemoryError),
    and a stream cut inside a frame after good ones ends in the same one-line error."""
    good = y4m_of(bus_path, 3, size="64:48")
    for src, words in ((b"YUV4MPEG2 W99999999 H99999999 F25:1 C420jpeg\nFRAME\n" + bytes(100), "over the limit"),
                       (good[:-100], "ended inside a frame")):
        r = subprocess.run(VQP + ["filter", "--model", "opencv"], cwd=ROOT, env=ENV, input=src, capture_output=True)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.startswith("vqp: error: y4m ") and words in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_ffmpeg_wrapper(bus_path, tmp_path):
    src = tmp_path / "in.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-loop", "1", "-i", str(bus_path), "-f", "lavfi", "-i",
                    "sine=d=1", "-vf", "scale=240:320", "-frames:v", "10", "-c:v", "libx264", "-c:a", "aac",
                    "-shortest", str(src)], check=True)
    env = {**ENV, "VQP": " ".join(VQP), "VQP_FILTER_ARGS": " ".join(MODEL)}
    r = subprocess.run([str(ROOT / "plugins" / "ffmpeg" / "vqp-ffmpeg"), str(src), str(tmp_path / "out.mkv"),
                        "-c:v", "libx264", "-preset", "veryfast"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert len(list(c.decode(video=0))) == 10
