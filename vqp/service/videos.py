"""Video job routes: upload (``POST /v1/jobs``), list, status, result, preview and delete.

A job's query parameters are the scalar fields of vqp.video.VideoOptions plus ``classes``, taken as
`vqp encode` takes them (``bitrate=300k``) and checked as encode_video checks them, before the upload
is read: a bad option is a 422, never a job that fails later. Jobs run in jobs.JobRunner (their encode
on Ray actors with ``--jobs ray``: remote.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import codecs
from ..errors import VqpError
from ..video import VideoOptions, encode_video, validate
from ..video.options import bitrate
from .batcher import Batcher, SharedDetector
from .core import Service, content_type, drained, expects_continue, read_upload, svc, unsupported
from .jobs import safe_name, safe_suffix
from .schemas import Job, JobPage, JobState, errors, upload

router = APIRouter(tags=["jobs"])
PREVIEW = "preview.png"  # written beside a job's output
SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
INT32 = 2**31 - 1  # integers beyond it would overflow the encoder's options
BITRATE = r"^\s*[0-9]+(\.[0-9]*)?\s*[kKmM]?\s*$"
KINDS = {f.name: next((t for t in f.type.replace(" ", "").split("|") if t in SCALARS), None)
         for f in dataclasses.fields(VideoOptions)}
OPTIONS = sorted([n for n, t in KINDS.items() if t] + ["classes"])


def option_schema(name: str, kind: str) -> dict:
    if name == "codec":
        return {"type": "string", "enum": list(codecs.CODECS)}
    if name == "method":
        return {"type": "string", "enum": list(codecs.METHODS)}
    if name == "bitrate":
        return {"type": "string", "pattern": BITRATE, "description": "bits/s, e.g. 800k or 2.5M"}
    return {"int": {"type": "integer", "minimum": -INT32, "maximum": INT32}, "float": {"type": "number"},
            "str": {"type": "string", "maxLength": 200}, "bool": {"type": "boolean"}}[kind]


def job_parameters() -> list[dict]:
    """The OpenAPI query parameters of an upload (FastAPI cannot see them: the route reads them itself)."""
    d = VideoOptions()
    params = [{"name": n, "in": "query", "required": False,
               "schema": {**option_schema(n, k), **({"default": v} if (v := getattr(d, n)) is not None else {})}}
              for n, k in KINDS.items() if k]
    return params + [
        {"name": "classes", "in": "query", "required": False, "description": "comma-separated class names or ids",
         "schema": {"type": "string", "maxLength": 2000}},
        {"name": "filename", "in": "query", "required": False, "description": "the raw upload's file name",
         "schema": {"type": "string", "maxLength": 1000}}]


def video_options(query: dict) -> dict:
    """Job query parameters to scalar VideoOptions fields plus ``classes``, checked by building a VideoOptions."""
    opts: dict = {}
    for k, v in query.items():
        if k == "filename":
            continue
        if k == "classes":
            opts[k] = [c for c in v.split(",") if c]
            continue
        kind = KINDS.get(k)
        if kind is None:
            raise VqpError(f"unknown video option {k!r}; known: {', '.join(OPTIONS)}")
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
            if kind == "float" and not math.isfinite(opts[k]) or kind == "int" and abs(opts[k]) > INT32:
                raise VqpError(f"video option {k}={v!r} is out of range")
    try:
        validate(VideoOptions(**{k: v for k, v in opts.items() if k != "classes"}))  # encode_video's checks, now
    except (ValueError, OverflowError) as e:  # an encoder refusing a value outright
        raise VqpError(f"video options refused: {e}") from None
    return opts


def encode_job(detector, src: Path, folder: Path, options: dict, progress=None) -> tuple[str, dict]:
    """One job's encode: the output and its preview in the job's folder, and the stats. Runs in the
    service or on a Ray actor (remote.py), so that both give the same files."""
    video = VideoOptions(**{k: v for k, v in options.items() if k != "classes"})
    dst = Path(folder) / ("output" + video.spec.containers.split()[0])
    stats = encode_video(src, dst, video, detector=detector, progress=progress, preview=Path(folder) / PREVIEW)
    return dst.name, {**dataclasses.asdict(stats), "summary": stats.summary()}


def video_encoder(batcher: Batcher):
    """The job runner's encode step: encode_job with the shared, micro-batched detector."""

    def encode(src: Path, folder: Path, options: dict, progress) -> tuple[str, dict]:
        return encode_job(SharedDetector(batcher, options.get("classes")), src, folder, options, progress)

    return encode


def over(s: Service, total: int) -> bool:
    return bool(s.settings.jobs_quota) and total > s.settings.jobs_quota


def quota(s: Service, used: int, incoming: int) -> None:
    """507 when ``incoming`` more bytes would take the jobs folder over its quota."""
    q = s.settings.jobs_quota
    if over(s, used + incoming):
        s.metrics.rejected.labels("quota").inc()
        raise HTTPException(507, f"the jobs folder holds {used:,} bytes; {incoming:,} more would exceed its quota of "
                                 f"{q:,} (finished jobs are removed {s.settings.job_ttl:g} s after they end, or "
                                 "DELETE them)")


def busy(s: Service) -> HTTPException:
    s.metrics.rejected.labels("jobs_full").inc()
    return HTTPException(503, f"{s.settings.max_jobs} jobs are queued or running; retry later", {"Retry-After": "10"})


@router.post("/v1/jobs", status_code=202, response_model=Job, responses=errors(400, 413, 415, 422, 503, 507),
             openapi_extra={**upload("video"), "parameters": job_parameters()})
async def create_job(request: Request, s: Service = Depends(svc)):
    """Upload a video; query parameters are vqp.video.VideoOptions fields (as `vqp encode` takes them)
    and ``classes``. Answers 202 with the job and its Location."""
    opts = video_options(dict(request.query_params))
    s.classes(",".join(opts.get("classes", [])))  # unknown class names: 422 now, not a failed job later
    ctype = content_type(request)
    if ctype != "multipart/form-data" and not (ctype.startswith("video/") or ctype == "application/octet-stream"):
        raise unsupported(ctype, "video")
    counts = s.store.counts()
    if counts["queued"] + counts["running"] >= s.settings.max_jobs:  # refuse before the upload is read
        raise busy(s)
    length = request.headers.get("content-length", "")
    used = await asyncio.to_thread(s.store.usage) if s.settings.jobs_quota else 0
    told = int(length) if length.isdigit() else 0
    if over(s, used + told):  # refused before the upload is stored, when its size is told
        if not expects_continue(request):
            await drained(request.stream())
        quota(s, used, told)
    job_id, folder = s.store.new_folder()
    try:
        if ctype == "multipart/form-data":
            part, name = await read_upload(request, "video")
            quota(s, used, part.size or 0)
            dst = folder / f"input{safe_suffix(safe_name(name))}"
            with open(dst, "wb") as f:
                await asyncio.to_thread(shutil.copyfileobj, part.file, f)
        else:
            name = request.query_params.get("filename")
            dst = folder / f"input{safe_suffix(safe_name(name))}"
            written = 0
            with open(dst, "wb") as f:
                stream = request.stream()
                async for chunk in stream:
                    written += len(chunk)
                    if over(s, used + written):
                        await drained(stream)  # so that the client, still sending, reads the 507
                        quota(s, used, written)
                    f.write(chunk)
        if dst.stat().st_size == 0:
            raise VqpError("empty upload")
        job = s.store.add(job_id, safe_name(name, "video"), opts, s.settings.max_jobs)
        if job is None:
            raise busy(s)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    s.runner.notify()
    return JSONResponse(job.to_dict(), 202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/jobs", response_model=JobPage, responses=errors(422))
def list_jobs(s: Service = Depends(svc), limit: int = Query(100, ge=1, le=1000, description="jobs per page"),
              offset: int = Query(0, ge=0, le=1 << 62, description="jobs to skip"), state: JobState | None = None):
    """Jobs, newest first, a page at a time; ``total`` counts them all (of ``state`` when given)."""
    jobs, total = s.store.page(limit, offset, state)
    return {"jobs": [j.to_dict() for j in jobs], "total": total, "limit": limit, "offset": offset}


def get_job(s: Service, job_id: str):
    job = s.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.get("/v1/jobs/{job_id}", response_model=Job, responses=errors(404))
def job_status(job_id: str, s: Service = Depends(svc)):
    """State (queued, running, done, failed), progress in [0, 1], error or note, and result stats."""
    return get_job(s, job_id).to_dict()


def finished_file(s: Service, job_id: str, name: str | None, what: str) -> tuple[Path, str]:
    """A file of a done job (409 while it is not done, 410 when the file is gone), and the job's stem."""
    job = get_job(s, job_id)
    if job.state != "done":
        raise HTTPException(409, f"job is {job.state}" + (f": {job.error}" if job.error else ""))
    path = s.store.folder(job.id) / (name or job.output)
    if not path.is_file():
        raise HTTPException(410, f"the job's {what} is gone")
    return path, Path(job.name).stem


FILE = {"schema": {"type": "string", "format": "binary"}}


@router.get("/v1/jobs/{job_id}/result", response_class=FileResponse, responses={
    200: {"content": {"video/*": FILE}, "description": "the encoded video"}, **errors(404, 409, 410)})
def job_result(job_id: str, s: Service = Depends(svc)):
    """The encoded video of a finished job (409 while it is not done)."""
    path, stem = finished_file(s, job_id, None, "output file")
    return FileResponse(path, filename=f"{stem}.vqp{path.suffix}")


@router.get("/v1/jobs/{job_id}/preview", response_class=FileResponse, responses={
    200: {"content": {"image/png": FILE}, "description": "frames with the ROI map and boxes"}, **errors(404, 409, 410)})
def job_preview(job_id: str, s: Service = Depends(svc)):
    """A strip of the finished job's frames with the ROI map and the boxes drawn over them (409 while not done)."""
    path, stem = finished_file(s, job_id, PREVIEW, "preview")
    return FileResponse(path, media_type="image/png", filename=f"{stem}.preview.png")


@router.delete("/v1/jobs/{job_id}", status_code=204, response_class=Response, responses=errors(404))
def delete_job(job_id: str, s: Service = Depends(svc)):
    """Remove a job and its files; a running job is stopped first."""
    job = get_job(s, job_id)
    if job.state == "running":
        s.runner.cancel(job.id)
        s.store.delete(job.id, files=False)  # the worker removes the folder when it stops
    else:
        s.store.delete(job.id)
    return Response(status_code=204)
