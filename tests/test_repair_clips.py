"""Degraded clips in the benchmark harness (issue 14 item 6): the encoder gets corrupted frames,
the metrics keep the clean clip as reference, and a vqp codec can steer with its own checkpoint."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import datasets, harness
from benchmarks.codecs import Codec, read_frames
from vqp.errors import VqpError
from vqp.metrics import luma, psnr
from vqp.types import Detections

AKIYO = datasets.DATA / "video" / "akiyo_cif.mp4"
pytestmark = pytest.mark.skipif(not AKIYO.exists(), reason="needs ../shared/data/video")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return datasets.excerpt(AKIYO, tmp_path_factory.mktemp("clip") / "clean.mkv", frames=3)


def frames(path):
    return np.stack(read_frames(path)[0])


def test_degraded_clip_is_reproducible(clean, tmp_path):
    a = frames(datasets.degrade_clip(clean, tmp_path / "a.mkv", "gaussian_noise", 3, seed=7, vary=True))
    b = frames(datasets.degrade_clip(clean, tmp_path / "b.mkv", "gaussian_noise", 3, seed=7, vary=True))
    other = frames(datasets.degrade_clip(clean, tmp_path / "c.mkv", "gaussian_noise", 3, seed=8, vary=True))
    assert a.shape == frames(clean).shape
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    still = frames(datasets.degrade_clip(clean, tmp_path / "d.mkv", "low_light", 3, seed=7))
    assert still.mean() < frames(clean).mean() - 20  # low light darkens


def test_noise_is_redrawn_per_frame_only_with_vary(clean, tmp_path):
    """Fixed seed per frame: the same noise field on every frame (akiyo's first frames barely move)."""
    src = frames(clean).astype(int)
    fixed = frames(datasets.degrade_clip(clean, tmp_path / "f.mkv", "gaussian_noise", 3)).astype(int) - src
    varied = frames(datasets.degrade_clip(clean, tmp_path / "v.mkv", "gaussian_noise", 3, vary=True)).astype(int) - src
    assert np.abs(fixed[1] - fixed[0]).mean() < np.abs(varied[1] - varied[0]).mean() / 2


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # no objects: object scores are NaN
def test_metrics_use_clean_reference_and_codec_model(tmp_path, monkeypatch):
    """A lossless stand-in encoder: the scores then measure exactly the degradation against the clean
    clip; regions come from the clean frames; the vqp codec is given the detector of its own model."""
    ckpt = tmp_path / "repaired.pt"
    ckpt.write_bytes(b"stand-in checkpoint")
    seen = {}

    class Detector:
        def __init__(self, model):
            self.model = model

        def __call__(self, rgbs):
            seen.setdefault("detected", []).extend(rgbs)
            return [Detections([], r.shape[0], r.shape[1]) for r in rgbs]

    def encode(c, v, src, dst, detector):
        seen.setdefault("models", {})[c.name] = detector.model
        seen["input"] = frames(src)
        datasets.excerpt(src, dst)  # lossless copy (FFV1; PyAV reads it whatever the name)
        return SimpleNamespace(frames=len(seen["input"]), bytes=dst.stat().st_size, seconds=1.0)

    monkeypatch.setattr("vqp.detect.load_detector", lambda model=None, **kw: Detector(model))
    monkeypatch.setattr(harness, "encode_clip", encode)
    p = tmp_path / "c.yaml"
    p.write_text(f"""
datasets:
  - {{name: noise, kind: clips, only: [akiyo_cif], frames: 2, every: 2,
     corrupt: {{name: gaussian_noise, severity: 3, seed: 5, vary: true}}}}
grid:
  video: [30]
codecs:
  - {{name: x264, encoder: libx264}}
  - {{name: vqp-repaired, encoder: libx264, vqp: true, model: {ckpt}, anchors: [x264]}}
""")
    recs = harness.Runner(harness.load_config(p, tmp_path / "run"), progress=False).run()
    ref = datasets.excerpt(AKIYO, tmp_path / "ref.mkv", frames=2)
    bad = frames(datasets.degrade_clip(ref, tmp_path / "bad.mkv", "gaussian_noise", 3, seed=5, vary=True))
    assert np.array_equal(seen["input"], bad)  # the encoder's input is the degraded clip
    regions = [f for f in seen["detected"] if f.shape == bad[0].shape]  # not the detectors' warm-up frames
    assert len(regions) == 1 and np.array_equal(regions[0], frames(ref)[0])  # objects: on the clean frame
    assert seen["models"] == {"x264": None, "vqp-repaired": str(ckpt)}
    want = psnr(luma(frames(ref)[0]), luma(bad[0]))  # every: 2 measures frame 0 only
    assert {r["group"] for r in recs} == {"noise/akiyo_cif"}
    assert all(r["psnr_full"] == pytest.approx(want, abs=1e-6) and r["psnr_full"] < 35 for r in recs)
    assert all(r["psnr_full_input"] == float("inf") for r in recs)  # lossless against what it was given
    assert all(row["psnr_full_input"] == float("inf") for row in harness.summarize(recs, {}))


def test_config_errors(tmp_path):
    with pytest.raises(VqpError, match="plain codec|vqp clip codec only"):
        Codec.from_config({"name": "x", "encoder": "libx264", "model": "m.pt"}, {"video": [30]})
    p = tmp_path / "c.yaml"
    for corrupt, msg in (("{name: smog}", "unknown corruption"), ("{name: fog, severity: 9}", "severity"),
                         ("{name: fog, level: 3}", "unknown keys")):
        p.write_text(f"datasets: [{{kind: clips, corrupt: {corrupt}}}]\ncodecs: [{{name: x, encoder: libx264}}]\n"
                     "grid: {video: [30]}\n")
        with pytest.raises(VqpError, match=msg):
            harness.load_config(p)


def test_codec_key_follows_checkpoint_bytes(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    keys = {Codec.from_config({"name": "v", "encoder": "libx264", "vqp": True, **m}, {"video": [30]}).key()
            for m in ({}, {"model": str(a)}, {"model": str(b)})}
    assert len(keys) == 3


def test_low_light_darkens_with_severity_and_is_seeded():
    from vqp.repair import corruptions as C

    rgb = np.full((32, 48, 3), 160, np.uint8)
    outs = [C.degrade(rgb, "low_light", s, seed=3) for s in C.SEVERITIES]
    assert all(o.shape == rgb.shape and o.dtype == np.uint8 for o in outs)
    assert all(a.mean() > b.mean() for a, b in zip(outs, outs[1:]))
    assert np.array_equal(outs[2], C.degrade(rgb, "low_light", 3, seed=3)) and outs[2].std() > 0  # noisy, reproducible
    assert "low_light" in C.names("extra") and "low_light" in C.names("all")
