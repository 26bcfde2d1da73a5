"""Video: decode -> detect -> track -> ROI regions (encoder side data) or requantized planes -> encode.

One module per concept: ``io`` (PyAV reading and writing), ``options`` (VideoOptions and their
checks), ``pipeline`` (frames, boxes, regions, planes), ``ratecontrol`` (two-pass, match-crf),
``hold`` (the pixel method's still background), ``roi_side_data`` (regions as FFmpeg side data),
``encode`` (the whole job) and ``preview``. Codec knowledge lives in ``vqp.codecs``.
"""
from .encode import detect_clip, encode_video
from .options import DETECT_SIZE, EncodeStats, VideoOptions, validate
from .pipeline import Frame, Pipeline

__all__ = ["encode_video", "detect_clip", "VideoOptions", "EncodeStats", "validate", "DETECT_SIZE", "Pipeline",
           "Frame"]
