"""Persistent video jobs: a SQLite table plus one folder of files per job, and the worker threads.

A job's state lives only in the database and its folder, never only in memory, so a restart
finds every job again. Jobs that were running when the process died are queued again (the
encode starts over; outputs are written atomically, so nothing half-written is kept) until
they have been started ``max_attempts`` times; then they fail with the reason. Every attempt
starts, and every failure ends, with only the input left in the folder (an interrupted attempt's
partial output, two-pass logs and temporary files go). Finished and failed jobs are removed
``ttl`` seconds after they ended (Sweeper), and uploads are refused beyond the folder's quota.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import VqpError
from .admission import background

log = logging.getLogger("vqp.service")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- queued, running, done, failed
    name TEXT NOT NULL,             -- client's file name, reduced to a safe base name
    options TEXT NOT NULL,          -- JSON
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    note TEXT,
    result TEXT,                    -- JSON stats of a finished job
    output TEXT,                    -- output file name inside the job folder
    created REAL NOT NULL,
    updated REAL NOT NULL
)"""
ID = re.compile(r"^[0-9a-f]{32}$")
ACTIVE = ("queued", "running")


class Cancelled(Exception):
    """Raised inside a job's progress callback when the job was deleted or the service stops."""


def safe_name(name: str | None, default: str = "upload") -> str:
    """A client file name reduced to its last path part, printable and short; never used as a path."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")[:120]
    return base or default


def public_error(message: str, name: str, folder: Path) -> str:
    """A job's error as its client may read it: the stored upload named by the client's file name,
    the job's other files by their own names, and no path of the server's."""
    forms = sorted({str(folder.resolve()), str(folder.absolute()), str(folder)}, key=len, reverse=True)
    for form in forms:
        message = re.sub(re.escape(form + os.sep) + r"input(\.\w+)?\b", lambda _: name, message)
    for form in forms:
        message = message.replace(form + os.sep, "").replace(form, "the job folder")
    return message


def safe_suffix(name: str) -> str:
    """File extension to keep on the stored input (demuxers use it as a hint), or none."""
    m = re.search(r"\.([A-Za-z0-9]{1,5})$", name)
    return f".{m.group(1).lower()}" if m else ""


@dataclass
class Job:
    id: str
    state: str
    name: str
    options: dict
    progress: float
    attempts: int
    error: str | None
    note: str | None
    result: dict | None
    output: str | None
    created: float
    updated: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        d = dict(row)
        d["options"] = json.loads(d["options"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return cls(**d)

    def to_dict(self) -> dict:
        return {"id": self.id, "state": self.state, "name": self.name, "options": self.options,
                "progress": round(self.progress, 4), "attempts": self.attempts, "error": self.error,
                "note": self.note, "result": self.result, "created": self.created, "updated": self.updated}


def permission_hint(root: Path) -> str:
    """Why the job folder cannot be written, and the two usual fixes (a Docker volume made by another user)."""
    owner = next(q.stat().st_uid for q in (root, *root.absolute().parents) if q.exists())
    uid = os.getuid()
    return (f"cannot write the job store in {root}: permission denied for user id {uid} (the folder is owned by "
            f"user id {owner}); make it writable for {uid} (`chown -R {uid} {root}`), run as its owner "
            f"(`docker run --user {owner} ...`), or choose another --jobs-dir")


class JobStore:
    """SQLite (WAL) table of jobs, plus ``root/<id>/`` holding ``input*`` and the output."""

    def __init__(self, root: Path, max_attempts: int = 3):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(self.root)
            self.db = sqlite3.connect(self.root / "jobs.db", check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(SCHEMA)
        except PermissionError:
            raise VqpError(permission_hint(self.root)) from None
        except (OSError, sqlite3.Error) as e:
            if "readonly" in str(e) or "unable to open" in str(e):
                raise VqpError(permission_hint(self.root)) from None
            raise VqpError(f"cannot open the job store in {self.root}: {e}") from None
        self.lock = threading.Lock()
        self.max_attempts = max_attempts

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def _one(self, sql: str, args=()) -> Job | None:
        with self.lock:
            row = self.db.execute(sql, args).fetchone()
        return Job.from_row(row) if row else None

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id=?", (job_id,)) if ID.match(job_id) else None

    def counts(self) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {"queued": 0, "running": 0, "done": 0, "failed": 0, **{s: n for s, n in rows}}

    def new_folder(self) -> tuple[str, Path]:
        """Reserve an id and its folder; the upload is written there before ``add`` makes it a job."""
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        folder.mkdir()
        return job_id, folder

    def add(self, job_id: str, name: str, options: dict, max_active: int) -> Job | None:
        """Queue a job whose input is already in its folder; None when ``max_active`` jobs are queued or running."""
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                (active,) = self.db.execute(
                    f"SELECT COUNT(*) FROM jobs WHERE state IN {ACTIVE}").fetchone()
                if active >= max_active:
                    return None
                self.db.execute("INSERT INTO jobs (id, state, name, options, created, updated) VALUES (?,?,?,?,?,?)",
                                (job_id, "queued", name, json.dumps(options), now, now))
            finally:
                self.db.execute("COMMIT")
        return self.get(job_id)

    def claim(self) -> Job | None:
        """Atomically move the oldest queued job to running."""
        return self._one("UPDATE jobs SET state='running', attempts=attempts+1, progress=0, updated=? "
                         "WHERE id=(SELECT id FROM jobs WHERE state='queued' ORDER BY created LIMIT 1) RETURNING *",
                         (time.time(),))

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        for k in ("result", "options"):
            if k in fields and fields[k] is not None:
                fields[k] = json.dumps(fields[k])
        with self.lock:
            self.db.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
                            (*fields.values(), job_id))

    def delete(self, job_id: str, files: bool = True) -> bool:
        """Remove a job's files, then its row: once the job answers 404, its files are gone."""
        if files:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        with self.lock:
            return self.db.execute("DELETE FROM jobs WHERE id=?", (job_id,)).rowcount > 0

    def input_path(self, job_id: str) -> Path | None:
        return next(iter(sorted(self.folder(job_id).glob("input*"))), None)

    def clean(self, job_id: str) -> None:
        """Remove everything in the job's folder but its input: what an interrupted or failed attempt
        left (``*.part.*`` outputs, x264's ``*.log`` and ``*.mbtree.temp``, a stale preview)."""
        keep = self.input_path(job_id)
        folder = self.folder(job_id)
        for p in folder.iterdir() if folder.is_dir() else ():
            if p != keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def page(self, limit: int, offset: int = 0, state: str | None = None) -> tuple[list[Job], int]:
        """Jobs newest first, and how many there are (of ``state`` when given)."""
        where, args = ("WHERE state=?", (state,)) if state else ("", ())
        with self.lock:
            rows = self.db.execute(f"SELECT * FROM jobs {where} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                                   (*args, limit, offset)).fetchall()
            (total,) = self.db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()
        return [Job.from_row(r) for r in rows], total

    def sweep(self, ttl: float, now: float | None = None) -> list[str]:
        """Remove finished and failed jobs (rows and files) that ended more than ``ttl`` seconds ago."""
        cutoff = (time.time() if now is None else now) - ttl
        with self.lock:
            ids = [r[0] for r in self.db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND updated < ?", (cutoff,)).fetchall()]
        for job_id in ids:
            self.delete(job_id)
        return ids

    def usage(self) -> int:
        """Bytes in the jobs folder (uploads, outputs and the database)."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.stat(os.path.join(folder, f)).st_size
                except OSError:  # removed meanwhile
                    pass
        return total

    def recover(self) -> list[Job]:
        """After a start: re-queue or fail jobs left running, fail queued jobs whose input is gone,
        and remove folders that never became a job (an upload cut off by the crash)."""
        with self.lock:
            rows = self.db.execute(f"SELECT * FROM jobs WHERE state IN {ACTIVE}").fetchall()
            known = {r[0] for r in self.db.execute("SELECT id FROM jobs").fetchall()}
        touched = []
        for job in map(Job.from_row, rows):
            if self.input_path(job.id) is None:
                self.update(job.id, state="failed", error="input file missing after a restart")
            elif job.state == "running" and job.attempts >= self.max_attempts:
                self.update(job.id, state="failed",
                            error=f"interrupted by a restart after {job.attempts} attempts; giving up")
            elif job.state == "running":
                self.update(job.id, state="queued", progress=0,
                            note=f"resumed after a restart (attempt {job.attempts} was interrupted)")
            else:
                continue
            self.clean(job.id)
            touched.append(self.get(job.id))
        for p in self.root.iterdir():
            if p.is_dir() and ID.match(p.name) and p.name not in known:
                shutil.rmtree(p, ignore_errors=True)
        return touched


# encode(src, dst_folder, options, progress) -> (output file name, stats dict); progress(fraction or None)
Encode = Callable[[Path, Path, dict, Callable[[float | None], None]], tuple[str, dict]]


class JobRunner:
    """Worker threads that claim queued jobs and run ``encode`` on them."""

    def __init__(self, store: JobStore, encode: Encode, workers: int = 1):
        self.store, self.encode = store, encode
        self._wake = threading.Condition()
        self._stopping = False
        self._cancel: set[str] = set()
        self._threads = [threading.Thread(target=self._loop, name=f"vqp-job-{i}", daemon=True) for i in range(workers)]

    def start(self) -> "JobRunner":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Interrupt running jobs; they go back to the queue (the attempt is not counted) and resume on the next start."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for t in self._threads:
            t.join()

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next progress report; its worker removes the folder."""
        self._cancel.add(job_id)

    def _loop(self) -> None:
        background()  # encoder threads too: the event loop keeps answering while jobs run
        while True:
            with self._wake:
                if self._stopping:
                    return
            job = self.store.claim()
            if job is None:
                with self._wake:
                    if not self._stopping:
                        self._wake.wait(timeout=1.0)
                continue
            self._run(job)

    def fail(self, job: Job, folder: Path, message: str) -> None:
        self.store.clean(job.id)
        self.store.update(job.id, state="failed", error=public_error(message, job.name, folder))

    def _run(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        last = [0.0]

        def progress(fraction: float | None) -> None:
            if job.id in self._cancel or self._stopping:
                raise Cancelled()
            now = time.monotonic()
            if fraction is not None and now - last[0] > 0.5:  # a few database writes per second at most
                last[0] = now
                self.store.update(job.id, progress=min(1.0, max(0.0, float(fraction))))

        self.store.clean(job.id)  # a previous attempt's leftovers
        src = self.store.input_path(job.id)
        try:
            if src is None:
                raise VqpError("input file missing")
            output, stats = self.encode(src, folder, job.options, progress)
        except Cancelled:
            if job.id in self._cancel:
                self._cancel.discard(job.id)
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self.store.update(job.id, state="queued", attempts=job.attempts - 1, progress=0,
                                  note="interrupted by a shutdown; resumes on the next start")
            return
        except VqpError as e:
            self.fail(job, folder, str(e))
            return
        except Exception as e:  # a bug must fail the job with a reason, not kill the worker
            log.exception("job %s failed", job.id)
            self.fail(job, folder, f"internal error: {type(e).__name__}: {e}")
            return
        if job.id in self._cancel:  # deleted while its last frames were encoded
            self._cancel.discard(job.id)
            shutil.rmtree(folder, ignore_errors=True)
            return
        self.store.update(job.id, state="done", progress=1.0, result=stats, output=output)


class Sweeper:
    """A thread that removes jobs ``ttl`` seconds after they finished or failed, every ``ttl / 4``
    (between 0.05 s and 10 minutes); the service also sweeps once at start-up."""

    def __init__(self, store: JobStore, ttl: float):
        self.store, self.ttl = store, ttl
        self.every = min(600.0, max(0.05, ttl / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vqp-sweeper", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if gone := self.store.sweep(self.ttl):
                    log.info("vqp: removed %d jobs older than %g s", len(gone), self.ttl)
            except Exception:  # a failed sweep is retried at the next one
                log.exception("job sweep failed")
