"""Find a detector model without the network.

Order: an explicit path or name, then ``VQP_MODEL``, then the model folder (``VQP_MODEL_DIR``,
else ``../shared/models`` beside the working directory or beside the vqp checkout), then
Ultralytics' own download of ``yolo11n.pt``. ``opencv`` names the weight-free fallback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import VqpError, one_line

# Preferred files in a model folder, best first: trainable checkpoints, then int8 exports.
PREFERRED = (
    "yolo11n_coco_dq.pt",
    "yolov8n_coco_dq.pt",
    "yolo11n_int8_openvino_model",
    "yolov8n_int8_openvino_model",
    "yolo26n_int8.onnx",
)
DOWNLOAD_NAME = "yolo11n.pt"
FALLBACK = "opencv"


@dataclass(frozen=True)
class ModelChoice:
    """Where the detector comes from and how it was found (for messages and logs)."""

    source: str  # a path, a hub name to download, or "opencv"
    how: str
    download: bool = False


def model_dirs() -> list[Path]:
    """Folders searched for model files, in order."""
    env = os.environ.get("VQP_MODEL_DIR")
    if env:
        return [Path(env)]
    repo = Path(__file__).resolve().parent.parent
    dirs = [Path.cwd() / "../shared/models", repo / "../shared/models", Path.cwd() / "models"]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def _usable(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.xml")) or path.is_file() and path.stat().st_size > 0


def resolve_model(model: str | None = None, *, allow_download: bool | None = None) -> ModelChoice:
    """Pick the model to load; raise VqpError naming every place tried when none fits."""
    if allow_download is None:
        allow_download = os.environ.get("YOLO_OFFLINE", "").lower() not in ("1", "true", "yes")
    tried: list[str] = []
    requested = model or os.environ.get("VQP_MODEL")
    if requested and requested not in ("auto", ""):
        if requested == FALLBACK:
            return ModelChoice(FALLBACK, "requested")
        p = Path(requested).expanduser()
        if _usable(p):
            return ModelChoice(str(p), "given path")
        if p.parent == Path(".") and p.suffix == ".pt" and allow_download:
            return ModelChoice(requested, "Ultralytics download", download=True)
        for d in model_dirs():
            if _usable(d / requested):
                return ModelChoice(str(d / requested), f"found in {d}")
        why = "" if allow_download else " (downloads are off: YOLO_OFFLINE is set)"
        raise VqpError(f"model {requested!r} not found as a path or in {', '.join(map(str, model_dirs()))}{why}")
    for d in model_dirs():
        for name in PREFERRED:
            if _usable(d / name):
                return ModelChoice(str(d / name), f"model folder {d}")
        tried.append(str(d))
    if allow_download:
        return ModelChoice(DOWNLOAD_NAME, "Ultralytics download", download=True)
    tried.append(f"download of {DOWNLOAD_NAME} (off: YOLO_OFFLINE is set)")
    return ModelChoice(FALLBACK, "no model file found; tried " + "; ".join(tried))


def cache_dir() -> Path:
    """Where derived model files live: ``$VQP_CACHE_DIR``, else ``~/.cache/vqp``."""
    return Path(os.environ.get("VQP_CACHE_DIR") or Path.home() / ".cache" / "vqp")


def calibration_set() -> Path | None:
    """A YOLO-layout image folder for int8 calibration: coco128 beside the model folder, if present."""
    for d in model_dirs():
        images = d.parent / "data" / "coco" / "images" / "train2017"
        if images.is_dir() and any(images.iterdir()):
            return images
    return None


def openvino_export(checkpoint: str, imgsz: int) -> str | None:
    """An OpenVINO copy of a ``.pt`` detector at a fixed input size, exported once (offline) and
    cached by the checkpoint's content; None when it cannot be made (the caller then runs the
    checkpoint itself).

    int8 (NNCF post-training quantization, calibrated on coco128 when it is beside the model
    folder: about 20 s once) runs in about 18 ms at 320 px on 2 cores, fp32 in 28 ms and the torch
    checkpoint in 45-60 ms, with the same boxes to within a few low-confidence ones
    (benchmarks/RESULTS.md). Without NNCF or calibration images the export is fp32.
    """
    import hashlib
    import importlib.util
    import logging
    import shutil
    import tempfile
    import warnings

    log = logging.getLogger("vqp")
    src = Path(checkpoint)
    calib = calibration_set() if importlib.util.find_spec("nncf") else None
    digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
    kind = "int8" if calib else "fp32"
    # "seeded": exports cached before the calibration was seeded (below) differ per machine, so are not reused
    dst = cache_dir() / "openvino" / f"{src.stem}-{digest}-{imgsz}-{kind}-seeded_openvino_model"  # Ultralytics knows the suffix
    if (dst / "metadata.yaml").is_file():
        return str(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".export-") as tmp:
            shutil.copy(src, Path(tmp) / "model.pt")
            extra = {}
            if calib:
                import yaml

                root = calib.parent.parent.parent  # .../coco: its data.yaml names the classes
                spec = yaml.safe_load((root / "data.yaml").read_text()) if (root / "data.yaml").is_file() else {}
                data = Path(tmp) / "calibration.yaml"
                data.write_text(yaml.safe_dump({"path": str(root), "train": str(calib), "val": str(calib),
                                                "names": spec.get("names", {i: str(i) for i in range(80)})}))
                extra = {"int8": True, "data": str(data), "fraction": 0.25}  # 32 images calibrate well enough
            os.environ.setdefault("YOLO_OFFLINE", "true")
            from ultralytics import YOLO

            if calib:
                log.warning("vqp: making an int8 OpenVINO copy of %s for the CPU (once, about 20 s)", src.name)
            import torch

            # Ultralytics shuffles the calibration batches with a generator seeded from torch's
            # process-random initial seed, and NNCF averages the ranges per batch, so without a fixed
            # seed every export quantizes differently and `vqp encode` steers differently per machine.
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):  # CPU state only: no CUDA start-up
                warnings.simplefilter("ignore")  # torch.jit's deprecation notes mean nothing to a vqp user
                torch.manual_seed(0)
                out = YOLO(str(Path(tmp) / "model.pt")).export(format="openvino", imgsz=imgsz, half=False,
                                                               dynamic=False, verbose=False, **extra)
            try:
                os.replace(out, dst)  # atomic: a concurrent export of the same model simply loses the race
            except OSError:
                if not (dst / "metadata.yaml").is_file():
                    raise
    except Exception as e:  # export is an optimisation: any failure leaves the checkpoint in charge
        log.warning("vqp: OpenVINO export of %s failed (%s); running the checkpoint", src,
                    one_line(e))
        return None
    return str(dst)
