"""Operations routes: liveness (``/healthz``), readiness (``/readyz``) and Prometheus ``/metrics``."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..models import FALLBACK
from .core import svc
from .schemas import Health, Ready

router = APIRouter(tags=["operations"])


# health and readiness run on the event loop itself (async, no blocking call): no wait for a thread
# of the pool, so a probe answers at once however busy the workers are
@router.get("/healthz", response_model=Health)
async def healthz():
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "not ready"}})
async def readyz(request: Request):
    """Ready when the model is loaded and the batcher and job workers run (never on the OpenCV
    fallback when a model is required)."""
    s = getattr(request.app.state, "svc", None)
    fallback = bool(s and s.settings.require_model and s.detector.source == FALLBACK)
    ok = bool(s and s.batcher.alive and s.runner.alive and not fallback)
    body = {"status": "ready" if ok else "not ready",
            **({"model": s.detector.source, "max_batch": s.settings.max_batch} if s else {}),
            **({"reason": "a model is required but the OpenCV fallback runs"} if fallback else {})}
    return JSONResponse(body, 200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
def prometheus(request: Request):
    """Prometheus text format."""
    return Response(svc(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
