"""Service settings: one dataclass, filled from ``VQP_*`` environment variables and then CLI flags.

Environment variables make the Docker image configurable without a new command line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import VqpError

MIB = 1 << 20


def flag(raw: str) -> bool:
    if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", ""):
        raise ValueError(raw)
    return raw.strip().lower() in ("1", "true", "yes")


@dataclass
class Settings:
    model: str | None = None            # detector model (None: vqp's default model resolution)
    device: str | None = None           # torch device (None: cuda when available)
    conf: float = 0.25
    imgsz: int = 640
    max_batch: int = 8                  # detector batch limit; 1 turns micro-batching off
    max_wait_ms: float = 5.0            # how long a batch may wait for more requests
    queue_size: int = 64                # image requests waiting to be decoded, and frames waiting for the
                                        # detector; beyond it 503 + Retry-After
    jpeg_queue: int = 8                 # JPEG encodes (quality searches) waiting for a worker; beyond it 503
    max_image_bytes: int = 32 * MIB     # request body limit on image routes (413)
    max_video_bytes: int = 1024 * MIB   # request body limit on job uploads (413)
    max_pixels: int = 50_000_000        # decoded image limit (413)
    timeout_s: float = 60.0             # an image request expected to wait longer to start is refused (503)
    encode_workers: int = max(1, os.cpu_count() or 1)  # threads decoding, and threads encoding JPEG
    jobs_dir: Path = Path("vqp-jobs")   # SQLite database and job files
    max_jobs: int = 16                  # queued plus running jobs; beyond it 503 + Retry-After
    job_workers: int = 1                # video jobs encoded at the same time
    max_attempts: int = 3               # starts of one job (restarts included) before it fails
    require_model: bool = False         # no model file is a start-up error, not the OpenCV fallback
    job_ttl: float = 86400.0            # seconds a finished or failed job is kept (files and row)
    jobs_quota: int = 20 * 1024 * MIB   # bytes the jobs folder may hold; an upload beyond it is refused (507)

    def __post_init__(self):
        self.jobs_dir = Path(self.jobs_dir)
        if self.jpeg_queue < 0:
            raise VqpError(f"jpeg_queue must be at least 0, got {self.jpeg_queue}")
        for f in ("max_batch", "queue_size", "max_image_bytes", "max_video_bytes", "max_pixels",
                  "encode_workers", "max_jobs", "job_workers", "max_attempts", "imgsz"):
            if getattr(self, f) < 1:
                raise VqpError(f"{f} must be at least 1, got {getattr(self, f)}")
        if self.job_ttl < 0 or self.jobs_quota < 0:
            raise VqpError("job_ttl and jobs_quota must be >= 0 (a quota of 0 is none)")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise VqpError("max_wait_ms must be >= 0 and timeout_s > 0")
        if not 0 <= self.conf <= 1:
            raise VqpError(f"conf must be between 0 and 1, got {self.conf}")

    @classmethod
    def from_env(cls, env=os.environ, **overrides) -> "Settings":
        """``VQP_MAX_BATCH=16`` sets ``max_batch``; keyword overrides that are not None win."""
        kw = {}
        for f in fields(cls):
            raw = env.get(f"VQP_{f.name.upper()}")
            if raw is None or f.name == "model":  # VQP_MODEL is already read by vqp.models
                continue
            kind = f.type.split("|")[0].strip()
            try:
                kw[f.name] = {"int": int, "float": float, "Path": Path, "bool": flag}.get(kind, str)(raw)
            except ValueError:
                raise VqpError(f"VQP_{f.name.upper()}={raw!r} is not a valid {kind}") from None
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)
