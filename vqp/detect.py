"""Detection stage: RGB frames in, per-frame boxes out.

Two backends share one interface: Ultralytics YOLO (any format it loads: .pt, OpenVINO folder,
ONNX) and a weight-free OpenCV fallback (HOG people detector plus Haar frontal faces).
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch

from .errors import VqpError, one_line
from .models import FALLBACK, ModelChoice, resolve_model
from .types import Box, Detections

log = logging.getLogger("vqp")
# Boxes reported to users (`vqp detect`, `vqp image`, JpegResult.detections): the usual YOLO default.
# Steering may run the detector lower (vqp.roi.ROI_CONF) and report only the boxes at or above this.
DETECT_CONF = 0.25


def _as_hwc(frame) -> np.ndarray:
    """Accept HxWx3 uint8 arrays or 3xHxW uint8 tensors (any device)."""
    if isinstance(frame, torch.Tensor):
        frame = frame.permute(1, 2, 0).cpu().numpy() if frame.shape[0] == 3 else frame.cpu().numpy()
    return np.ascontiguousarray(frame)


class Detector(Protocol):
    names: dict[int, str]
    conf: float  # boxes below it are dropped; may be lowered after loading (read on every call)

    def __call__(self, frames: Sequence) -> list[Detections]: ...


class YoloDetector:
    """Ultralytics backend: batched, CUDA when available, class and confidence filters."""

    def __init__(self, source: str, *, conf: float = DETECT_CONF, imgsz: int = 640,
                 classes: Iterable[int | str] | None = None, device: str | None = None, batch: int = 8,
                 augment: bool = False):
        if not (source.endswith(".pt") and "/" not in source and not os.path.exists(source)):
            os.environ.setdefault("YOLO_OFFLINE", "true")  # local file: never reach for the network
        from ultralytics import YOLO

        try:
            self.model = YOLO(source, task="detect")
        except Exception as e:  # ultralytics raises many types for a bad or missing file
            raise VqpError(f"cannot load detector {source!r}: {one_line(e)}") from None
        self.names = dict(self.model.names)
        self.conf, self.imgsz, self.batch = conf, imgsz, batch
        self.augment = augment  # Ultralytics' test-time augmentation (flips and scales, merged)
        self.classes = class_ids(self.names, classes)
        self.device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        self.source = source

    def __call__(self, frames: Sequence) -> list[Detections]:
        out: list[Detections] = []
        arrays = [_as_hwc(f) for f in frames]
        for i in range(0, len(arrays), self.batch):
            chunk = [a[:, :, ::-1] for a in arrays[i:i + self.batch]]  # Ultralytics takes BGR arrays
            results = self.model.predict(chunk, conf=self.conf, imgsz=self.imgsz, classes=self.classes,
                                         device=self.device, augment=self.augment, verbose=False)
            for a, r in zip(arrays[i:i + self.batch], results):
                b = r.boxes
                xyxy, conf, cls = (b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(int))
                boxes = [Box(*map(float, xyxy[j]), float(conf[j]), int(cls[j]), self.names.get(int(cls[j]), str(cls[j])))
                         for j in range(len(conf))]
                out.append(Detections(boxes, a.shape[0], a.shape[1]))
        return out


class OpenCVDetector:
    """Weight-free fallback from what ships inside OpenCV: HOG people and Haar frontal faces."""

    names = {0: "person", 1: "face"}

    def __init__(self, *, conf: float = DETECT_CONF, classes: Iterable[int | str] | None = None, **_):
        import cv2

        self.cv2 = cv2
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.face = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
        self.conf = conf
        self.classes = set(class_ids(self.names, classes) or self.names)
        self.source = FALLBACK

    def __call__(self, frames: Sequence) -> list[Detections]:
        cv2 = self.cv2
        out = []
        for f in frames:
            a = _as_hwc(f)
            gray = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
            boxes: list[Box] = []
            if 0 in self.classes and min(a.shape[:2]) >= 128:
                rects, weights = self.hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
                for (x, y, w, h), s in zip(rects, np.ravel(weights)):
                    c = float(1 / (1 + np.exp(-s)))  # SVM margin to a (0, 1) score
                    if c >= self.conf:
                        boxes.append(Box(float(x), float(y), float(x + w), float(y + h), c, 0, "person"))
            if 1 in self.classes:
                for (x, y, w, h) in self.face.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5):
                    boxes.append(Box(float(x), float(y), float(x + w), float(y + h), 0.8, 1, "face"))
            out.append(Detections(boxes, a.shape[0], a.shape[1]))
        return out


def load_detector(model: str | None = None, *, fast: bool = False, **kw) -> Detector:
    """Resolve and load a detector; fall back to OpenCV with a warning when no model file exists.

    ``fast`` (the video path) runs a ``.pt`` checkpoint on the CPU through an OpenVINO export at
    the requested input size, made once and cached: about 2x faster than torch there (see
    benchmarks/RESULTS.md). On CUDA the checkpoint itself runs.
    """
    choice: ModelChoice = resolve_model(model)
    if choice.source == FALLBACK:
        if choice.how != "requested":
            log.warning("vqp: %s; using the weight-free OpenCV detector (people and faces only)", choice.how)
        return OpenCVDetector(**kw)
    source = choice.source
    device = kw.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if fast and source.endswith(".pt") and not choice.download and str(device).startswith("cpu"):
        from .models import openvino_export

        source = openvino_export(source, kw.get("imgsz", 640)) or source
    return YoloDetector(source, **kw)


@lru_cache(maxsize=4)
def shared_detector(model: str | None = None, classes: tuple | None = None, **kw) -> Detector:
    """One loaded detector per configuration for library callers that do not pass their own."""
    return load_detector(model, classes=classes, **kw)


def class_ids(names: dict[int, str], wanted: Iterable[str] | None) -> list[int] | None:
    """Map class names or ids given by a user to ids, with a clear error for unknown ones."""
    if not wanted:
        return None
    lookup = {v.lower(): k for k, v in names.items()}
    ids = []
    for w in wanted:
        w = str(w).strip().lower()
        if w.isdigit() and int(w) in names:
            ids.append(int(w))
        elif w in lookup:
            ids.append(lookup[w])
        else:
            raise VqpError(f"unknown class {w!r}; known: {', '.join(sorted(lookup))}")
    return ids
