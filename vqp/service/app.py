"""FastAPI app factory: a thin HTTP layer over vqp's library calls.

One process loads the detector once; image requests are decoded and encoded on the threads of
their stages while their detection goes through the micro-batcher. Every stage bounds the work it
accepts (admission.py): a request is refused at once with 503 and Retry-After, or it finishes; 504
answers only a deadline the client set. Video jobs are persistent (jobs.py), encoded here or on Ray
(remote.py). The routes live in images.py, videos.py and ops.py; every error, including 404s,
validation failures and limits, is answered as JSON ``{"error": message, "status": code}``
(schemas.ErrorBody).
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .. import __version__
from ..detect import Detector, load_detector
from ..errors import VqpError
from ..models import FALLBACK, resolve_model
from ..roi import ROI_CONF
from . import images, ops, videos
from .admission import Busy, Stage
from .batcher import Batcher
from .core import Service, drain, error
from .jobs import JobRunner, JobStore, Sweeper
from .metrics import Metrics
from .schemas import WHY
from .settings import Settings

log = logging.getLogger("vqp.service")


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
                if b"100-continue" not in dict(scope["headers"]).get(b"expect", b"").lower():
                    await drain(receive)
                await error(413, f"request body of {int(length):,} bytes is over the limit of {limit:,}",
                            {"Connection": "close"})(scope, receive, send_status)
                return
            seen = [0]

            async def counted():
                msg = await receive()
                seen[0] += len(msg.get("body", b""))
                if seen[0] > limit:
                    self.metrics.rejected.labels("too_large").inc()
                    if msg.get("more_body"):
                        await drain(receive)
                    raise HTTPException(413, f"request body is over the limit of {limit:,} bytes")
                return msg

            await self.app(scope, counted, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def refuse_fallback(settings: Settings) -> None:
    """With ``require_model`` a missing model is a start-up error, not the weight-free OpenCV fallback."""
    if settings.require_model and (choice := resolve_model(settings.model)).source == FALLBACK:
        why = "the OpenCV fallback was asked for" if choice.how == "requested" else choice.how
        raise VqpError(f"a detector model is required (VQP_REQUIRE_MODEL) but {why}")


def with_error_bodies(spec: dict) -> dict:
    """FastAPI documents its own validation-error body for 422; this app answers ErrorBody (see
    ``invalid`` below), so the schema says so."""
    for path in spec["paths"].values():
        for op in path.values():
            r = op["responses"].get("422", {})
            if "HTTPValidationError" in str(r):
                op["responses"]["422"] = {"description": WHY[422], "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for name in ("HTTPValidationError", "ValidationError"):
        spec.get("components", {}).get("schemas", {}).pop(name, None)
    return spec


def create_app(settings: Settings | None = None, detector: Detector | None = None) -> FastAPI:
    """Build the app; the detector (loaded once, at startup) and job store live in ``app.state.svc``."""
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if detector is None:
            refuse_fallback(settings)
        det = detector or load_detector(settings.model, conf=min(settings.conf, ROI_CONF), imgsz=settings.imgsz,
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
        if settings.jobs == "ray":  # imported here: a service with local jobs never loads Ray
            from .remote import RayJobs

            remote = await asyncio.to_thread(RayJobs, settings)
            encode = remote.encode
        else:
            remote, encode = None, videos.video_encoder(batcher)
        runner = JobRunner(store, encode, settings.job_workers).start()
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
            if remote:
                remote.close()
            batcher.stop()
            for stage in stages.values():
                stage.shutdown()

    app = FastAPI(title="vqp", version=__version__, lifespan=lifespan,
                  description="Detector-driven encoder preprocessing: objects keep their bits. Every error is "
                              "JSON {error, status}; 503 carries Retry-After; 504 only answers the client's own "
                              "timeout.")
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    for module in (images, videos, ops):
        app.include_router(module.router)
    app.openapi = lambda: app.openapi_schema or with_error_bodies(FastAPI.openapi(app))

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

    return app
