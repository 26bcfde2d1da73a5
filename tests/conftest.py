import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")

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
