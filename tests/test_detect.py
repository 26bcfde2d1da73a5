import json

import pytest

from tests.conftest import MODELS
from vqp.cli import main
from vqp.detect import OpenCVDetector, load_detector
from vqp.errors import VqpError
from vqp.imageio import load_image
from vqp.models import resolve_model


def test_yolo_finds_bus_and_people(detector, bus_path, zidane_path):
    bus, zidane = load_image(bus_path).rgb, load_image(zidane_path).rgb
    d_bus, d_zid = detector([bus, zidane])  # one batch, two frame sizes
    names = [b.name for b in d_bus.boxes if b.conf > 0.5]
    assert "bus" in names and names.count("person") >= 3
    assert (d_bus.height, d_bus.width) == bus.shape[:2]
    assert sum(b.name == "person" and b.conf > 0.5 for b in d_zid.boxes) == 2
    for b in d_bus.boxes:
        assert 0 <= b.x1 < b.x2 <= d_bus.width and 0 <= b.y1 < b.y2 <= d_bus.height


def test_class_filter_and_threshold(bus_path):
    det = load_detector(str(MODELS / "yolo11n_coco_dq.pt"), classes=["bus"], conf=0.5)
    boxes = det([load_image(bus_path).rgb])[0].boxes
    assert [b.name for b in boxes] == ["bus"]
    with pytest.raises(VqpError, match="unknown class"):
        load_detector(str(MODELS / "yolo11n_coco_dq.pt"), classes=["unicorn"])


def test_openvino_export_loads(bus_path):
    det = load_detector(str(MODELS / "yolo11n_int8_openvino_model"))
    names = [b.name for b in det([load_image(bus_path).rgb])[0].boxes if b.conf > 0.5]
    assert "bus" in names and "person" in names


def test_onnx_export_loads(bus_path):
    det = load_detector(str(MODELS / "yolo26n_int8.onnx"))
    names = [b.name for b in det([load_image(bus_path).rgb])[0].boxes if b.conf > 0.5]
    assert "bus" in names and names.count("person") >= 3


def test_opencv_fallback_finds_a_face(astronaut):
    d = OpenCVDetector()([astronaut])[0]
    faces = [b for b in d.boxes if b.name == "face"]
    assert faces and 150 < (faces[0].x1 + faces[0].x2) / 2 < 300


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.delenv("VQP_MODEL", raising=False)
    monkeypatch.setenv("VQP_MODEL_DIR", str(MODELS))
    assert resolve_model().source.endswith("yolo11n_coco_dq.pt")
    monkeypatch.setenv("VQP_MODEL", "yolov8n_coco_dq.pt")
    assert resolve_model().source.endswith("yolov8n_coco_dq.pt")
    monkeypatch.delenv("VQP_MODEL")
    monkeypatch.setenv("VQP_MODEL_DIR", str(tmp_path))  # empty folder: nothing usable, no download
    choice = resolve_model()
    assert choice.source == "opencv" and str(tmp_path) in choice.how and "yolo11n.pt" in choice.how
    with pytest.raises(VqpError, match="nope.pt"):
        resolve_model("nope.pt")
    monkeypatch.delenv("YOLO_OFFLINE")
    assert resolve_model().download  # outside, Ultralytics' own download is the next step


def test_fallback_warns_and_still_detects(tmp_path, monkeypatch, caplog, astronaut):
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.delenv("VQP_MODEL", raising=False)
    monkeypatch.setenv("VQP_MODEL_DIR", str(tmp_path))
    det = load_detector()
    assert isinstance(det, OpenCVDetector)
    assert "tried" in caplog.text and "OpenCV" in caplog.text
    assert det([astronaut])[0].boxes


def test_damaged_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VqpError, match="cannot load detector"):
        load_detector(str(bad))


def test_cli_detect_prints_json(bus_path, capsys):
    assert main(["detect", str(bus_path), "--model", str(MODELS / "yolo11n_coco_dq.pt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["width"] == 810 and any(b["name"] == "bus" for b in out["boxes"])
