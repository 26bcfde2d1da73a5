"""What every route shares: the Service (the app's loaded detector, batcher, stages and job store),
uploads, deadlines and the JSON error body."""
from __future__ import annotations

import asyncio
import io
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..detect import Detector, class_ids
from ..imageio import Picture, load_image
from ..types import Detections
from .admission import Busy, Stage, Ticket
from .batcher import Batcher, keep_classes
from .jobs import JobRunner, JobStore
from .metrics import Metrics
from .settings import Settings

DRAIN = 8 << 20  # bytes of an over-limit body read and dropped before its 413 (see drain)


async def drain(receive, budget: int = DRAIN) -> None:
    """Read and drop what the client is still sending, up to ``budget`` bytes, before answering:
    closing a connection with unread data in it resets it, and the client, still writing, would
    see the reset instead of the 413. (A client that sent Expect: 100-continue waits for the
    answer and sends nothing: it is not drained.)"""
    while budget > 0:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            return
        budget -= len(msg.get("body", b""))


async def drained(stream, budget: int = DRAIN) -> None:
    """``drain`` for a request body being read as ``request.stream()``: the rest of the same stream."""
    async for chunk in stream:
        budget -= len(chunk)
        if budget <= 0:
            return


def expects_continue(request: Request) -> bool:
    return "100-continue" in request.headers.get("expect", "").lower()


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    """The one error body (schemas.ErrorBody)."""
    return JSONResponse({"error": message, "status": status, **extra}, status, headers=headers)


@dataclass
class Service:
    settings: Settings
    metrics: Metrics
    detector: Detector
    batcher: Batcher
    store: JobStore
    runner: JobRunner
    stages: dict[str, Stage]  # "decode" (both image routes) and "jpeg" (the encode and its search)

    @asynccontextmanager
    async def admit(self, stages: tuple[str, ...], timeout: float | None):
        """Places in ``stages`` and the detection queue, reserved before any work; Busy (503) at once
        when one is full or the request could not start within its deadline (the client's
        ``timeout``, else the server's ``timeout_s``). Places not used are given back at the end."""
        wait = sum(self.stages[n].expected_wait() for n in stages) + self.batcher.expected_wait()
        limit = timeout or self.settings.timeout_s
        if wait > limit:
            raise Busy(f"the request would wait about {wait:.1f} s to start, longer than its deadline of {limit:g} s; "
                       "retry later", wait - limit, "deadline")
        tickets: dict[str, Ticket] = {}
        try:
            for n in stages:
                tickets[n] = self.stages[n].admit()
            tickets["detect"] = self.batcher.reserve()
            yield tickets
        finally:
            for t in tickets.values():
                t.close()

    async def detect(self, rgb, ids, place: Ticket) -> Detections:
        return keep_classes(await asyncio.wrap_future(self.batcher.submit(rgb, place)), ids)

    def classes(self, classes: str | None) -> list[int] | None:
        """Class names or ids, comma-separated, as ids of the model; unknown ones are a 422."""
        return class_ids(self.detector.names, [c for c in classes.split(",") if c]) if classes else None

    def decode(self, data: bytes, name: str | None = None) -> Picture:
        """load_image, with pixel limits answered as 413 (checked from the header, before decoding);
        errors name the client's file where the upload gave one."""
        limit, over = self.settings.max_pixels, ""
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > limit:
                    over = f"image of {im.width}x{im.height} pixels"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow's own bomb check (its warning is an error while another thread is inside
            # load_image, whose warnings filter is process-wide): over the limit either way
            over = "image"
        except Exception:  # not an image: load_image below gives the one-line reason
            pass
        if over:
            self.metrics.rejected.labels("too_many_pixels").inc()
            raise HTTPException(413, f"{over} is over the limit of {limit:,} pixels")
        return load_image(data, max_pixels=limit, name=name or None)

    async def within(self, request: Request, timeout: float | None, work):
        """Await ``work``; past the client's ``timeout`` answer 504 (the places of work that started
        are given back when it ends)."""
        if timeout is None:
            return await work
        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            self.metrics.deadline.labels(request.scope["route"].path).inc()
            raise HTTPException(504, f"request took longer than the client's timeout of {timeout:g} s") from None


def svc(request: Request) -> Service:
    """The route's Service (a FastAPI dependency)."""
    return request.app.state.svc


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_upload(request: Request, kind: str) -> tuple[bytes | UploadFile, str | None]:
    """The uploaded file: a raw body of ``kind``/* or application/octet-stream, or a multipart 'file' part.

    Raw bodies come back as bytes, multipart parts as an UploadFile (spooled to disk when large).
    """
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise HTTPException(400, "multipart body has no file part named 'file'")
        return part, part.filename
    if ctype.startswith(f"{kind}/") or ctype == "application/octet-stream":
        return await request.body(), request.query_params.get("filename")
    raise unsupported(ctype, kind)


def unsupported(ctype: str, kind: str) -> HTTPException:
    return HTTPException(415, f"content type {ctype or 'missing'!r} is not accepted; send {kind}/*, "
                              "application/octet-stream or multipart/form-data with a 'file' part")
