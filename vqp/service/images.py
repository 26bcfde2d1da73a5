"""Image routes: ``POST /v1/jpeg`` (object-aware JPEG, like ``vqp image``) and ``POST /v1/detect``.

Each request reserves its places (decode threads, the detection queue, JPEG threads) before its
body is read (Service.admit), is decoded on the decode stage, detected through the micro-batcher
and, for JPEG, encoded on the JPEG stage.
"""
from __future__ import annotations

import json
import time
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from ..errors import VqpError
from ..imageio import Picture
from ..jpeg import save_jpeg
from ..types import Detections
from .core import Service, read_upload, svc
from .schemas import DetectResult, errors, upload

router = APIRouter(tags=["images"])
HEADER_BOXES = 32  # boxes listed in X-Vqp-Detections (the full list is in /v1/detect); keeps headers small
CLASSES = Query(None, max_length=2000, description="comma-separated class names or ids to keep (unknown ones: 422)")
TIMEOUT = Query(None, gt=0, le=3600, description="seconds the client waits at most: a request that cannot start "
                "within them is refused at once (503), one that takes longer is answered 504")
FAILS = errors(400, 413, 415, 422, 503, 504)
JPEG_HEADERS = {h: {"description": d, "schema": {"type": "string"}} for h, d in {
    "X-Vqp-Quality": "encoder quality used", "X-Vqp-Bytes": "size of the JPEG",
    "X-Vqp-Plain-Bytes": "size of plain JPEG at the reference quality (empty without one)",
    "X-Vqp-Ratio": "bytes against plain JPEG", "X-Vqp-Reference-Quality": "the quality matched",
    "X-Vqp-Detection-Count": "boxes found", "X-Vqp-Detections": f"JSON list of the {HEADER_BOXES} surest boxes",
    "X-Vqp-Size": "WIDTHxHEIGHT", "Server-Timing": "decode, detect and encode durations"}.items()}


async def image_in(request: Request, s: Service, tickets: dict) -> tuple[Picture, dict]:
    data, name = await read_upload(request, "image")
    if isinstance(data, UploadFile):
        data = await data.read()
    t = time.perf_counter()
    pic = await s.stages["decode"].run(tickets["decode"], s.decode, data, name)
    return pic, {"decode": time.perf_counter() - t}


async def detect_one(s: Service, pic: Picture, ids, times: dict, tickets: dict) -> Detections:
    t = time.perf_counter()
    dets = await s.detect(pic.rgb, ids, tickets["detect"])
    times["detect"] = time.perf_counter() - t
    return dets


def server_timing(s: Service, times: dict) -> str:
    for k, v in times.items():
        s.metrics.stage.labels(k).observe(v)
    return ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in times.items())


@router.post("/v1/jpeg", response_class=Response, openapi_extra=upload("image"),
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                              "headers": JPEG_HEADERS,
                              "description": "object-aware JPEG; X-Vqp-* headers give detections, quality and "
                                             "size against plain JPEG"}, **FAILS})
async def jpeg(request: Request, s: Service = Depends(svc),
               quality: int | None = Query(None, ge=1, le=100, description="fixed encoder quality"),
               match_quality: int | None = Query(None, ge=1, le=100,
                                                 description="no larger than plain JPEG at this quality (default 75)"),
               target_size: int | None = Query(None, ge=1, le=1 << 40, description="no larger than this many bytes "
                                               "(422 when even the lowest quality is larger)"),
               classes: str | None = CLASSES, encoder: Literal["pillow", "jpegli"] = "pillow",
               timeout: float | None = TIMEOUT):
    """Encode an image as object-aware JPEG, like ``vqp image``. Give at most one of quality,
    match_quality and target_size."""
    if sum(v is not None for v in (quality, match_quality, target_size)) > 1:
        raise VqpError("give only one of quality, match_quality and target_size")
    ids = s.classes(classes)

    async def work(tickets):
        pic, times = await image_in(request, s, tickets)
        dets = await detect_one(s, pic, ids, times, tickets)
        t = time.perf_counter()
        r = await s.stages["jpeg"].run(tickets["jpeg"], save_jpeg, pic, quality=quality, match_quality=match_quality,
                                       target_size=target_size, encoder=encoder, detections=dets,
                                       conf=s.settings.conf, device=s.settings.device)
        times["encode"] = time.perf_counter() - t
        return r, times

    async with s.admit(("decode", "jpeg"), timeout) as tickets:
        r, times = await s.within(request, timeout, work(tickets))
    sm = r.summary()
    boxes = sorted(sm["detections"], key=lambda b: -b["conf"])[:HEADER_BOXES]
    headers = {"X-Vqp-Quality": str(r.quality), "X-Vqp-Bytes": str(r.size),
               "X-Vqp-Plain-Bytes": str(sm["plain_bytes"] or ""), "X-Vqp-Ratio": str(sm["ratio"] or ""),
               "X-Vqp-Reference-Quality": str(sm["reference_quality"] or ""),
               "X-Vqp-Detection-Count": str(len(sm["detections"])),
               "X-Vqp-Detections": json.dumps(boxes, separators=(",", ":")),
               "X-Vqp-Size": f"{r.detections.width}x{r.detections.height}",
               "Server-Timing": server_timing(s, times)}
    return Response(r.data, media_type="image/jpeg", headers=headers)


@router.post("/v1/detect", response_model=DetectResult, openapi_extra=upload("image"), responses=FAILS)
async def detect(request: Request, s: Service = Depends(svc), classes: str | None = CLASSES,
                 timeout: float | None = TIMEOUT):
    """Detector boxes of an image, as JSON."""
    ids = s.classes(classes)

    async def work(tickets):
        pic, times = await image_in(request, s, tickets)
        return await detect_one(s, pic, ids, times, tickets), times

    async with s.admit(("decode",), timeout) as tickets:
        dets, times = await s.within(request, timeout, work(tickets))
    return JSONResponse({"model": s.detector.source, **dets.above(s.settings.conf).to_dict()},
                        headers={"Server-Timing": server_timing(s, times)})
