"""vqp: detector-driven quantization in front of standard encoders.

Stages, one module each: imageio (decode) -> detect -> roi -> quant -> jpeg/video (encode) -> metrics.
"""
from .errors import VqpError
from .jpeg import JpegResult, save_jpeg
from .quant import QuantParams, quantize
from .roi import RoiConfig, roi_map
from .types import Box, Detections, RoiMap

__all__ = ["VqpError", "save_jpeg", "JpegResult", "QuantParams", "quantize", "RoiConfig", "roi_map",
           "Box", "Detections", "RoiMap"]
__version__ = "0.1.0"
