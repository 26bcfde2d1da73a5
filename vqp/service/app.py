"""FastAPI app factory: a thin HTTP layer over vqp's library calls.

One process loads the detector once; image requests are decoded and encoded on the threads of
their stages while their detection goes through the micro-batcher. Every stage bounds the work it
accepts (admission.py): a request is refused at once with 503 and Retry-After, or it finishes; 504
answers only a deadline the client set. Video jobs are persistent (jobs.py).
Every error, including 404s, validation failures and limits, is answered as JSON
``{"error": message, "status": code}``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..detect import Detector, class_ids, load_detector
from ..errors import VqpError
from ..imageio import Picture, load_image
from ..jpeg import save_jpeg
from ..models import FALLBACK, resolve_model
from ..types import Detections
from .admission import Busy, Stage, Ticket
from .batcher import Batcher, SharedDetector, keep_classes
from .jobs import JobRunner, JobStore, Sweeper, safe_name, safe_suffix
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("vqp.service")
HEADER_BOXES = 32  # boxes listed in X-Vqp-Detections (the full list is in /v1/detect); keeps headers small
BINARY = {"schema": {"type": "string", "format": "binary"}}
MULTIPART = {"schema": {"type": "object", "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}}}}


def _body_doc(kind: str) -> dict:
    return {"requestBody": {"required": True, "content": {
        f"{kind}/*": BINARY, "application/octet-stream": BINARY, "multipart/form-data": MULTIPART}}}


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status, headers=headers)


class Guard:
    """ASGI middleware: request body limits (413) and per-route request metrics."""

    def __init__(self, app, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    def limit(self, path: str) -> int:
        return self.settings.max_video_bytes if path.startswith("/v1/jobs") else self.settings.max_image_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            if length.isdigit() and int(length) > limit:
                self.metrics.rejected.labels("too_large").inc()
                await error(413, f"request body of {int(length):,} bytes is over the limit of {limit:,}",
                            {"Connection": "close"})(scope, receive, send_status)
                return
            seen = [0]

            async def counted():
                msg = await receive()
                seen[0] += len(msg.get("body", b""))
                if seen[0] > limit:
                    self.metrics.rejected.labels("too_large").inc()
                    raise HTTPException(413, f"request body is over the limit of {limit:,} bytes")
                return msg

            await self.app(scope, counted, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


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
        return class_ids(self.detector.names, [c for c in classes.split(",") if c]) if classes else None

    def decode(self, data: bytes) -> Picture:
        """load_image, with pixel limits answered as 413 (checked from the header, before decoding)."""
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
        return load_image(data, max_pixels=limit)


async def read_upload(request: Request, kind: str) -> tuple[bytes | UploadFile, str | None]:
    """The uploaded file: a raw body of ``kind``/* or application/octet-stream, or a multipart 'file' part.

    Raw bodies come back as bytes, multipart parts as an UploadFile (spooled to disk when large).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise HTTPException(400, "multipart body has no file part named 'file'")
        return part, part.filename
    if ctype.startswith(f"{kind}/") or ctype == "application/octet-stream":
        return await request.body(), request.query_params.get("filename")
    raise HTTPException(415, f"content type {ctype or 'missing'!r} is not accepted; send {kind}/*, "
                             "application/octet-stream or multipart/form-data with a 'file' part")


PREVIEW = "preview.png"  # written beside a job's output
SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def video_options(query: dict) -> dict:
    """Job query parameters to scalar VideoOptions fields plus ``classes``, checked by building a VideoOptions."""
    from ..video import VideoOptions, validate
    from ..video.options import bitrate

    kinds = {f.name: next((t for t in f.type.replace(" ", "").split("|") if t in SCALARS), None)
             for f in dataclasses.fields(VideoOptions)}
    opts: dict = {}
    for k, v in query.items():
        if k == "filename":
            continue
        if k == "classes":
            opts[k] = [c for c in v.split(",") if c]
            continue
        kind = kinds.get(k)
        if kind is None:
            known = sorted([n for n, t in kinds.items() if t] + ["classes"])
            raise VqpError(f"unknown video option {k!r}; known: {', '.join(known)}")
        if k == "bitrate":  # as `vqp encode --bitrate` takes it
            try:
                opts[k] = bitrate(v)
            except ValueError:
                raise VqpError(f"video option bitrate={v!r} is not a bitrate such as 800k, 2.5M or 800000") from None
        elif kind == "bool":
            if v.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise VqpError(f"video option {k}={v!r} is not true or false")
            opts[k] = v.lower() in ("1", "true", "yes")
        else:
            try:
                opts[k] = SCALARS[kind](v)
            except ValueError:
                raise VqpError(f"video option {k}={v!r} is not a valid {kind}") from None
    validate(VideoOptions(**{k: v for k, v in opts.items() if k != "classes"}))  # encode_video's own checks, now: 422
    return opts


def video_encoder(batcher: Batcher):
    """The job runner's encode step: vqp.video.encode_video with the shared, micro-batched detector."""

    def encode(src: Path, folder: Path, options: dict, progress) -> tuple[str, dict]:
        from ..video import VideoOptions, encode_video

        opts = dict(options)
        det = SharedDetector(batcher, opts.pop("classes", None))
        video = VideoOptions(**opts)
        dst = folder / ("output" + video.spec.containers.split()[0])
        stats = encode_video(src, dst, video, detector=det, progress=progress, preview=folder / PREVIEW)
        return dst.name, {**dataclasses.asdict(stats), "summary": stats.summary()}

    return encode


def refuse_fallback(settings: Settings) -> None:
    """With ``require_model`` a missing model is a start-up error, not the weight-free OpenCV fallback."""
    if settings.require_model and (choice := resolve_model(settings.model)).source == FALLBACK:
        why = "the OpenCV fallback was asked for" if choice.how == "requested" else choice.how
        raise VqpError(f"a detector model is required (VQP_REQUIRE_MODEL) but {why}")


def create_app(settings: Settings | None = None, detector: Detector | None = None) -> FastAPI:
    """Build the app; the detector (loaded once, at startup) and job store live in ``app.state.svc``."""
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if detector is None:
            refuse_fallback(settings)
        det = detector or load_detector(settings.model, conf=settings.conf, imgsz=settings.imgsz,
                                        device=settings.device, batch=settings.max_batch)
        batcher = Batcher(det, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000,
                          queue_size=settings.queue_size, metrics=metrics).start()
        await asyncio.to_thread(batcher.ready.wait)
        store = JobStore(settings.jobs_dir, settings.max_attempts)
        for job in store.recover():
            log.warning("vqp: job %s: %s", job.id, job.error or job.note)
        if gone := store.sweep(settings.job_ttl):
            log.info("vqp: removed %d jobs older than %g s", len(gone), settings.job_ttl)
        sweeper = Sweeper(store, settings.job_ttl).start()
        metrics.watch_jobs(store.counts)
        runner = JobRunner(store, video_encoder(batcher), settings.job_workers).start()
        stages = {"decode": Stage("decode", settings.encode_workers, settings.queue_size),
                  "jpeg": Stage("jpeg", settings.encode_workers, settings.jpeg_queue)}
        for name, stage in stages.items():
            metrics.admitted.labels(name).set_function(lambda stage=stage: stage.admitted)
        app.state.svc = Service(settings, metrics, det, batcher, store, runner, stages)
        try:
            yield
        finally:
            sweeper.stop()
            runner.stop()
            batcher.stop()
            for stage in stages.values():
                stage.shutdown()

    app = FastAPI(title="vqp", version=__version__, lifespan=lifespan,
                  description="Detector-driven encoder preprocessing: objects keep their bits.")
    app.add_middleware(Guard, settings=settings, metrics=metrics)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
        return error(422, msg, details=jsonable_encoder(exc.errors()))

    @app.exception_handler(VqpError)
    async def bad_input(request, exc: VqpError):
        return error(422, str(exc))

    @app.exception_handler(Busy)
    async def busy(request, exc: Busy):
        metrics.rejected.labels(exc.reason).inc()
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def crash(request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error(500, f"internal error: {type(exc).__name__}")

    def svc(request: Request) -> Service:
        return request.app.state.svc

    async def within(request: Request, timeout: float | None, work):
        """Await ``work``; past the client's ``timeout`` answer 504 (the work's places are given back
        when the work it started ends)."""
        if timeout is None:
            return await work
        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            svc(request).metrics.deadline.labels(request.url.path).inc()
            raise HTTPException(504, f"request took longer than the client's timeout of {timeout:g} s") from None

    async def image_in(request: Request, s: Service, tickets: dict) -> tuple[Picture, dict]:
        data, _ = await read_upload(request, "image")
        if isinstance(data, UploadFile):
            data = await data.read()
        t = time.perf_counter()
        pic = await s.stages["decode"].run(tickets["decode"], s.decode, data)
        return pic, {"decode": time.perf_counter() - t}

    async def detect_one(s: Service, pic: Picture, ids, times: dict, tickets: dict) -> Detections:
        t = time.perf_counter()
        dets = await s.detect(pic.rgb, ids, tickets["detect"])
        times["detect"] = time.perf_counter() - t
        return dets

    TIMEOUT = Query(None, gt=0, le=3600, description="seconds the client waits at most: a request that cannot start "
                    "within them is refused at once (503), one that takes longer is answered 504")

    def server_timing(s: Service, times: dict) -> str:
        for k, v in times.items():
            s.metrics.stage.labels(k).observe(v)
        return ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in times.items())

    @app.post("/v1/jpeg", response_class=Response, openapi_extra=_body_doc("image"),
              responses={200: {"content": {"image/jpeg": {}}, "description": "object-aware JPEG; "
                               "X-Vqp-* headers give detections, quality and size against plain JPEG"}})
    async def jpeg(request: Request,
                   quality: int | None = Query(None, ge=1, le=100, description="fixed encoder quality"),
                   match_quality: int | None = Query(None, ge=1, le=100,
                                                     description="no larger than plain JPEG at this quality (default 75)"),
                   target_size: int | None = Query(None, ge=1, description="no larger than this many bytes"),
                   classes: str | None = Query(None, description="comma-separated class names or ids to keep"),
                   encoder: Literal["pillow", "jpegli"] = "pillow", timeout: float | None = TIMEOUT):
        """Encode an image as object-aware JPEG, like ``vqp image``."""
        if sum(v is not None for v in (quality, match_quality, target_size)) > 1:
            raise VqpError("give only one of quality, match_quality and target_size")
        s = svc(request)
        ids = s.classes(classes)

        async def work(tickets):
            pic, times = await image_in(request, s, tickets)
            dets = await detect_one(s, pic, ids, times, tickets)
            t = time.perf_counter()
            r = await s.stages["jpeg"].run(tickets["jpeg"], save_jpeg, pic, quality=quality,
                                           match_quality=match_quality, target_size=target_size, encoder=encoder,
                                           detections=dets, device=settings.device)
            times["encode"] = time.perf_counter() - t
            return r, times

        async with s.admit(("decode", "jpeg"), timeout) as tickets:
            r, times = await within(request, timeout, work(tickets))
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

    @app.post("/v1/detect", openapi_extra=_body_doc("image"))
    async def detect(request: Request,
                     classes: str | None = Query(None, description="comma-separated class names or ids to keep"),
                     timeout: float | None = TIMEOUT):
        """Detector boxes of an image, as JSON."""
        s = svc(request)
        ids = s.classes(classes)

        async def work(tickets):
            pic, times = await image_in(request, s, tickets)
            return await detect_one(s, pic, ids, times, tickets), times

        async with s.admit(("decode",), timeout) as tickets:
            dets, times = await within(request, timeout, work(tickets))
        return JSONResponse({"model": s.detector.source, **dets.to_dict()},
                            headers={"Server-Timing": server_timing(s, times)})

    @app.post("/v1/jobs", status_code=202, openapi_extra=_body_doc("video"))
    async def create_job(request: Request):
        """Upload a video; query parameters are vqp.video.VideoOptions fields. Answers 202 with the job."""
        s = svc(request)
        opts = video_options(dict(request.query_params))
        s.classes(",".join(opts.get("classes", [])))  # unknown class names: 422 now, not a failed job later
        counts = s.store.counts()
        if counts["queued"] + counts["running"] >= settings.max_jobs:  # refuse before the upload is read
            s.metrics.rejected.labels("jobs_full").inc()
            raise HTTPException(503, f"{settings.max_jobs} jobs are queued or running; retry later", {"Retry-After": "10"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        length = request.headers.get("content-length", "")
        used = await asyncio.to_thread(s.store.usage) if settings.jobs_quota else 0
        quota(s, used, int(length) if length.isdigit() else 0)  # before the upload is read, when its size is told
        job_id, folder = s.store.new_folder()
        try:
            if ctype == "multipart/form-data":
                part, name = await read_upload(request, "video")
                quota(s, used, part.size or 0)
                dst = folder / f"input{safe_suffix(safe_name(name))}"
                with open(dst, "wb") as f:
                    await asyncio.to_thread(shutil.copyfileobj, part.file, f)
            elif ctype.startswith("video/") or ctype == "application/octet-stream":
                name = request.query_params.get("filename")
                dst = folder / f"input{safe_suffix(safe_name(name))}"
                written = 0
                with open(dst, "wb") as f:
                    async for chunk in request.stream():
                        written += len(chunk)
                        quota(s, used, written)
                        f.write(chunk)
            else:
                await read_upload(request, "video")  # raises the 415
            if dst.stat().st_size == 0:
                raise VqpError("empty upload")
            job = s.store.add(job_id, safe_name(name, "video"), opts, settings.max_jobs)
            if job is None:
                raise HTTPException(503, f"{settings.max_jobs} jobs are queued or running; retry later",
                                    {"Retry-After": "10"})
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        s.runner.notify()
        return JSONResponse(job.to_dict(), 202, headers={"Location": f"/v1/jobs/{job.id}"})

    def quota(s: Service, used: int, incoming: int) -> None:
        """507 when ``incoming`` more bytes would take the jobs folder over its quota."""
        if settings.jobs_quota and used + incoming > settings.jobs_quota:
            s.metrics.rejected.labels("quota").inc()
            raise HTTPException(507, f"the jobs folder holds {used:,} bytes; {incoming:,} more would exceed its quota "
                                     f"of {settings.jobs_quota:,} (finished jobs are removed {settings.job_ttl:g} s "
                                     "after they end, or DELETE them)")

    @app.get("/v1/jobs")
    def list_jobs(request: Request, limit: int = Query(100, ge=1, le=1000, description="jobs per page"),
                  offset: int = Query(0, ge=0, description="jobs to skip"),
                  state: Literal["queued", "running", "done", "failed"] | None = None):
        """Jobs, newest first, a page at a time; ``total`` counts them all."""
        jobs, total = svc(request).store.page(limit, offset, state)
        return {"jobs": [j.to_dict() for j in jobs], "total": total, "limit": limit, "offset": offset}

    def get_job(request: Request, job_id: str):
        job = svc(request).store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.get("/v1/jobs/{job_id}")
    def job_status(request: Request, job_id: str):
        """State (queued, running, done, failed), progress in [0, 1], error or note, and result stats."""
        return get_job(request, job_id).to_dict()

    def finished_file(request: Request, job_id: str, name: str | None, what: str) -> tuple[Path, str]:
        """A file of a done job (409 while it is not done, 410 when the file is gone), and the job's stem."""
        job = get_job(request, job_id)
        if job.state != "done":
            raise HTTPException(409, f"job is {job.state}" + (f": {job.error}" if job.error else ""))
        path = svc(request).store.folder(job.id) / (name or job.output)
        if not path.is_file():
            raise HTTPException(410, f"the job's {what} is gone")
        return path, Path(job.name).stem

    @app.get("/v1/jobs/{job_id}/result", response_class=FileResponse,
             responses={200: {"content": {"video/*": {}}, "description": "the encoded video"}})
    def job_result(request: Request, job_id: str):
        """The encoded video of a finished job (409 while it is not done)."""
        path, stem = finished_file(request, job_id, None, "output file")
        return FileResponse(path, filename=f"{stem}.vqp{path.suffix}")

    @app.get("/v1/jobs/{job_id}/preview", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}, "description": "frames with the ROI map and boxes"}})
    def job_preview(request: Request, job_id: str):
        """A strip of the finished job's frames with the ROI map and the boxes drawn over them (409 while not done)."""
        path, stem = finished_file(request, job_id, PREVIEW, "preview")
        return FileResponse(path, media_type="image/png", filename=f"{stem}.preview.png")

    @app.delete("/v1/jobs/{job_id}", status_code=204)
    def delete_job(request: Request, job_id: str):
        """Remove a job and its files; a running job is stopped first."""
        s = svc(request)
        job = get_job(request, job_id)
        if job.state == "running":
            s.runner.cancel(job.id)
            s.store.delete(job.id, files=False)  # the worker removes the folder when it stops
        else:
            s.store.delete(job.id)
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz():
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request):
        """Ready when the model is loaded and the batcher and job workers run (never on the OpenCV
        fallback when a model is required)."""
        s = getattr(request.app.state, "svc", None)
        fallback = bool(s and settings.require_model and s.detector.source == FALLBACK)
        ok = bool(s and s.batcher.alive and s.runner.alive and not fallback)
        body = {"status": "ready" if ok else "not ready",
                **({"model": s.detector.source, "max_batch": settings.max_batch} if s else {}),
                **({"reason": "a model is required but the OpenCV fallback runs"} if fallback else {})}
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics", response_class=Response)
    def prometheus(request: Request):
        """Prometheus text format."""
        return Response(svc(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
