"""What the API answers, as pydantic models, and the OpenAPI text for what it takes and returns
that FastAPI cannot see in a route's signature (raw bodies, error statuses, files)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error, whatever its status."""

    error: str = Field(description="one line saying what was wrong")
    status: int = Field(description="the HTTP status, repeated")
    details: list[dict] | None = Field(None, description="per-parameter validation errors (422 only)")


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    conf: float = Field(ge=0, le=1)
    cls: int = Field(description="class id of the model")
    name: str = Field(description="class name")


class DetectResult(BaseModel):
    model: str = Field(description="the detector's model file (or 'opencv', the weight-free fallback)")
    height: int
    width: int
    boxes: list[Box]


JobState = Literal["queued", "running", "done", "failed"]


class Job(BaseModel):
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    state: JobState
    name: str = Field(description="the uploaded file's name, reduced to a safe base name")
    options: dict = Field(description="the video options the job was given")
    progress: float = Field(ge=0, le=1)
    attempts: int = Field(ge=0, description="starts so far (a restart interrupts one)")
    error: str | None = Field(description="why a failed job failed")
    note: str | None = Field(description="what happened to the job, e.g. resumed after a restart")
    result: dict | None = Field(description="encode statistics of a finished job (vqp.video.EncodeStats)")
    created: float = Field(description="Unix time")
    updated: float = Field(description="Unix time of the last change")


class JobPage(BaseModel):
    jobs: list[Job]
    total: int = Field(ge=0, description="jobs in all pages (of the state asked for)")
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    model: str | None = None
    max_batch: int | None = None
    reason: str | None = None


WHY = {
    400: "malformed multipart body, or no 'file' part",
    404: "no such job",
    409: "the job is not done",
    410: "the job's file is gone",
    413: "request body, or the decoded image, over its limit",
    415: "content type not accepted",
    422: "invalid parameters or input (the message says which)",
    503: "no room to start the request in time; retry after Retry-After seconds",
    504: "the client's own timeout passed before the request finished",
    507: "the upload would take the jobs folder over its quota",
}
RETRY = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*codes: int) -> dict:
    """OpenAPI ``responses`` for error statuses: each a JSON ErrorBody (503 with Retry-After)."""
    return {c: {"model": ErrorBody, "description": WHY[c], **({"headers": RETRY} if c == 503 else {})}
            for c in codes}


BINARY = {"schema": {"type": "string", "format": "binary"}}
MULTIPART = {"schema": {"type": "object", "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}}}}


def upload(kind: str) -> dict:
    """``openapi_extra`` for a route that reads the file itself: a raw body of ``kind``/*, or
    application/octet-stream, or a multipart 'file' part."""
    return {"requestBody": {"required": True, "content": {
        f"{kind}/*": BINARY, "application/octet-stream": BINARY, "multipart/form-data": MULTIPART}}}
