import json
from pathlib import Path

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


def test_int8_export_is_the_same_on_every_machine(tmp_path, monkeypatch):
    """Two exports of one checkpoint into two fresh caches, from processes whose torch seeds differ
    (each process draws its own), are byte-identical: Ultralytics orders the calibration images by
    that seed. The caller's random stream is left as it was."""
    import torch

    from vqp.models import openvino_export

    bins = []
    for seed in (1, 2):
        monkeypatch.setenv("VQP_CACHE_DIR", str(tmp_path / str(seed)))
        torch.manual_seed(seed)
        out = openvino_export(str(MODELS / "yolo11n_coco_dq.pt"), 128)
        assert out and "int8" in out
        assert torch.initial_seed() == seed and torch.equal(torch.random.get_rng_state(),
                                                            torch.manual_seed(seed).get_state())
        bins.append((Path(out) / "model.bin").read_bytes())
    assert bins[0] == bins[1]


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


def _cli_json(capsys, argv):
    assert main(argv) == 0
    return capsys.readouterr().out


def test_detect_and_image_report_the_same_boxes(bus_path, tmp_path, capsys):
    """Weak boxes steer `vqp image` (ROI_CONF) but both commands and the library report >= --conf."""
    from vqp import save_jpeg
    from vqp.roi import ROI_CONF

    model = ["--model", str(MODELS / "yolo11n_coco_dq.pt")]
    steer = load_detector(model[1], conf=ROI_CONF)([load_image(bus_path).rgb])[0]
    for conf in ([], ["--conf", "0.5"]):
        threshold = float(conf[1]) if conf else 0.25
        detected = json.loads(_cli_json(capsys, ["detect", str(bus_path), *model, *conf]))["boxes"]
        imaged = json.loads(_cli_json(capsys, ["image", str(bus_path), str(tmp_path / "o.jpg"), "--json",
                                               "--quality", "60", *model, *conf]))["detections"]
        assert detected == imaged and len(detected) < len(steer)  # the low threshold stays internal
        assert all(b["conf"] >= threshold for b in detected)
        lib = save_jpeg(bus_path, quality=60, model=model[1], conf=threshold).summary()["detections"]
        assert lib == detected


def test_cli_detect_folder_one_json_per_image(bus_path, zidane_path, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "bus.jpg").write_bytes(bus_path.read_bytes())
    (tmp_path / "sub" / "zidane.jpg").write_bytes(zidane_path.read_bytes())
    (tmp_path / "broken.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("skipped: not an image extension")
    rc = main(["detect", str(tmp_path), "--model", str(MODELS / "yolo11n_coco_dq.pt")])
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 2 and [x["file"] for x in lines] == [str(tmp_path / "bus.jpg"), str(tmp_path / "sub" / "zidane.jpg")]
    assert any(b["name"] == "bus" for b in lines[0]["boxes"]) and lines[1]["width"] == 1280
    assert err.splitlines() == [f"vqp: error: {tmp_path / 'broken.png'}: not an image Pillow can read",
                                "vqp: error: 1 of 3 files failed"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["detect", str(empty)]) == 2 and "no image files found" in capsys.readouterr().err
