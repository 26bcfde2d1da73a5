"""Service settings: ``VQP_*`` environment variables (pydantic-settings), then ``vqp serve`` flags.

Environment variables make the Docker image configurable without a new command line. Sizes take
units (``VQP_JOBS_QUOTA=20GiB``), times too (``VQP_JOB_TTL=24h``). ``from_env`` turns a bad value
into a one-line error that names the variable or flag.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import VqpError

MIB = 1 << 20
SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
              "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
FLAGS = {"timeout_s": "--timeout"}  # flags not named after their setting


def amount(v, units: dict[str, float], unit: str, examples: str) -> float:
    """A number, or a string of a number and a unit: ``unit`` is a regex whose group is a key of ``units``."""
    if not isinstance(v, str):
        return v
    m = re.fullmatch(rf"\s*([0-9]+(?:\.[0-9]*)?)\s*{unit}\s*", v, re.I)
    if not m:
        raise ValueError(f"not a {examples}")
    return float(m[1]) * units[(m[2] or "").lower()]


def size(v):
    """Bytes as a number or with a unit: 500M, 20G (powers of 1000), 20GiB (of 1024)."""
    n = amount(v, SIZE_UNITS, "([kmgt]i?)?b?", "size such as 1000000, 500M, 20G or 20GiB")
    return int(n) if isinstance(v, str) else n  # a number is left to the field's own type check


def duration(v):
    """Seconds as a number or with a unit: 90s, 30m, 24h, 7d."""
    return amount(v, TIME_UNITS, "([smhd])?", "duration such as 3600, 90s, 30m, 24h or 7d")


Bytes = Annotated[int, BeforeValidator(size)]
Seconds = Annotated[float, BeforeValidator(duration)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VQP_", extra="forbid")

    model: str | None = None            # detector model (None: vqp's model resolution, which reads VQP_MODEL)
    device: str | None = None           # torch device (None: cuda when available)
    conf: float = Field(0.25, ge=0, le=1)
    imgsz: int = Field(640, ge=32)
    max_batch: int = Field(8, ge=1)     # detector batch limit; 1 turns micro-batching off
    max_wait_ms: float = Field(5.0, ge=0)  # how long a batch may wait for more requests
    queue_size: int = Field(64, ge=1)   # image requests waiting to be decoded, and frames waiting for the
                                        # detector; beyond it 503 + Retry-After
    jpeg_queue: int = Field(8, ge=0)    # JPEG encodes (quality searches) waiting for a worker; beyond it 503
    max_image_bytes: Bytes = Field(32 * MIB, ge=1)   # request body limit on image routes (413)
    max_video_bytes: Bytes = Field(1024 * MIB, ge=1)  # request body limit on job uploads (413)
    max_pixels: int = Field(50_000_000, ge=1)  # decoded image limit (413)
    timeout_s: Seconds = Field(60.0, gt=0)  # an image request expected to wait longer to start is refused (503)
    encode_workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)  # decode and JPEG threads
    jobs_dir: Path = Path("vqp-jobs")   # SQLite database and job files
    max_jobs: int = Field(16, ge=1)     # queued plus running jobs; beyond it 503 + Retry-After
    job_workers: int = Field(1, ge=1)   # video jobs encoded at the same time
    max_attempts: int = Field(3, ge=1)  # starts of one job (restarts included) before it fails
    require_model: bool = False         # no model file is a start-up error, not the OpenCV fallback
    job_ttl: Seconds = Field(86400.0, ge=0)  # a finished or failed job is removed this long after it ended
    jobs_quota: Bytes = Field(20 * 1024 * MIB, ge=0)  # bytes the jobs folder may hold (507 beyond); 0: none
    jobs: Literal["local", "ray"] = "local"  # where video jobs are encoded: worker threads here, or Ray actors
    ray_address: str | None = None      # Ray to join with jobs=ray (None: $RAY_ADDRESS, else a new local Ray)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """``VQP_MAX_BATCH=16`` sets ``max_batch``; keyword overrides (flags) that are not None win.
        A bad value is a VqpError naming where it came from."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as e:
            err = e.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else ""
            if name in given:
                where = f"{FLAGS.get(name, '--' + name.replace('_', '-'))} {given[name]}"
            else:
                where = f"VQP_{name.upper()}={os.environ.get(f'VQP_{name.upper()}', '')!r}"
            raise VqpError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
