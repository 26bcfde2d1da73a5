"""The service reports detections as the CLI does: boxes at its ``conf`` and above, though weaker
ones (down to ROI_CONF) steer the JPEG search; and errors name the client's file."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from conftest import MODELS
from service_live import Live
from vqp.detect import load_detector
from vqp.imageio import load_image
from vqp.roi import ROI_CONF
from vqp.service import Settings, create_app


@pytest.fixture(scope="module")
def steering():
    return load_detector(str(MODELS / "yolo11n_coco_dq.pt"), conf=ROI_CONF)


def test_reported_boxes_are_those_at_conf(tmp_path, steering, bus_path):
    want = steering([load_image(bus_path).rgb])[0]
    assert any(b.conf < 0.25 for b in want.boxes), "the test needs weak boxes to leave out"
    want = want.above(0.25).to_dict()["boxes"]
    body = bus_path.read_bytes()
    with Live(create_app(Settings(jobs_dir=tmp_path / "jobs", conf=0.25), steering)) as live:
        r = live.client.post("/v1/detect", content=body, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["boxes"] == want
        r = live.client.post("/v1/jpeg", content=body, params={"quality": 75}, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and int(r.headers["X-Vqp-Detection-Count"]) == len(want)


def test_bad_upload_error_names_the_file(tmp_path, steering):
    with Live(create_app(Settings(jobs_dir=tmp_path / "jobs"), steering)) as live:
        r = live.client.post("/v1/detect", files={"file": ("holiday.png", b"not an image", "image/png")})
        assert r.status_code in (400, 415, 422) and "holiday.png" in r.json()["error"], r.text
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        r = live.client.post("/v1/detect", files={"file": ("tiny.png", buf.getvalue()[:30], "image/png")})
        assert "tiny.png" in r.json()["error"] and "<bytes>" not in r.text, r.text
