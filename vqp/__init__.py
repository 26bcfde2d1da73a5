"""vqp: detector-driven quantization in front of standard encoders.

Stages, one module each: imageio (decode) -> detect -> roi -> quant -> jpeg/video (encode) -> metrics.

The public names load on first use (PEP 562), so ``import vqp`` (and the ``vqp`` command's
start, ``--help`` and ``--version``) do not wait for torch and the detector stack.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import VqpError

_EXPORTS = {"save_jpeg": "jpeg", "JpegResult": "jpeg", "QuantParams": "quant", "quantize": "quant",
            "RoiConfig": "roi", "roi_map": "roi", "Box": "types", "Detections": "types", "RoiMap": "types"}
__all__ = ["VqpError", *_EXPORTS]

try:
    __version__ = version("vqp")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vqp' has no attribute {name!r}")
