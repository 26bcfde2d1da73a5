import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VQP_SHARED", ROOT.parent / "shared"))
MODELS = SHARED / "models"
DATA = SHARED / "data"


def ultralytics_asset(name: str) -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / name


@pytest.fixture(scope="session")
def bus_path() -> Path:
    return ultralytics_asset("bus.jpg")


@pytest.fixture(scope="session")
def zidane_path() -> Path:
    return ultralytics_asset("zidane.jpg")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def kodak() -> Path:
    return DATA / "kodak"


@pytest.fixture(scope="session")
def detector():
    from vqp.detect import load_detector

    return load_detector(str(MODELS / "yolo11n_coco_dq.pt"))


@pytest.fixture()
def png(tmp_path, astronaut) -> Path:
    p = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(p)
    return p


# -- video clips ---------------------------------------------------------------------------------
FAST = dict(preset="veryfast")


def make_clip(path, frames, *, codec="libx264", fmt="yuv420p", rate=10, pts=None, rotation=0, audio=False,
              options=None):
    """Write ``frames`` (H, W, 3 uint8 RGB arrays) with PyAV; optional VFR stamps, rotation, AAC audio."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, fmt
        s.options = options or {}
        tb = Fraction(1, rate * (10 if pts else 1))
        s.codec_context.time_base = tb
        if rotation:
            s.set_display_rotation(rotation)
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000, layout="mono")
        for i, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format=fmt)
            f.pts, f.time_base = (pts[i] if pts else i), tb
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            n = int(16000 * len(frames) / rate)
            t = np.arange(n) / 16000
            af = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 16000, 0
            for p in a.encode(af):
                c.mux(p)
            for p in a.encode():
                c.mux(p)
    return Path(path)


def moving_square(n, w=96, h=64):
    out = []
    for i in range(n):
        a = np.full((h, w, 3), 60, np.uint8)
        a[10:30, 5 + 3 * i:25 + 3 * i] = (220, 120, 40)
        out.append(a)
    return out


def decode(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = list(c.decode(s))
        return s, frames


@pytest.fixture(scope="session")
def bus_clip(tmp_path_factory, bus_path):
    """16 frames of bus.jpg (people + bus) drifting by a few pixels: real detections, fast."""
    im = np.asarray(Image.open(bus_path).convert("RGB").reduce(2))[:320, :224]
    frames = [np.ascontiguousarray(np.roll(im, i, axis=1)) for i in range(16)]
    return make_clip(tmp_path_factory.mktemp("clips") / "bus.mp4", frames, options={"crf": "12", **FAST})


@pytest.fixture(scope="session")
def vtest_clip(tmp_path_factory):
    """The first 24 frames of the PETS2009 clip (pedestrians, static camera)."""
    dst = tmp_path_factory.mktemp("clips") / "vtest24.mp4"
    with av.open(str(DATA / "video" / "vtest_pets2009_480x360.avi")) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(24), c.decode(video=0))]
    return make_clip(dst, frames, options={"crf": "10", **FAST})


def as_from_a_shell() -> None:
    """``preexec_fn`` for a child that must take Ctrl-C as from a terminal: SIGINT at its default
    and unblocked, whatever this test process (with Ray's driver and service threads in it) left."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
