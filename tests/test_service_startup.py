"""`vqp serve` start-up (issue 10): bad flags and environments are one-line errors, and one line says
where it serves, with which model and device."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT
from service_live import Live
from vqp.detect import OpenCVDetector
from vqp.service import Settings, create_app


def serve(*flags: str, env: dict | None = None, user: int | None = None) -> subprocess.CompletedProcess:
    """`vqp serve` expected to stop at start-up (each case fails before it listens)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vqp", "serve", *flags], env=env, capture_output=True, text=True,
                          user=user, cwd=tempfile.gettempdir())


def one_line_error(r: subprocess.CompletedProcess, words: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqp: error: ") and words in lines[0], r.stderr


def test_port_out_of_range(tmp_path):
    one_line_error(serve("--port", "99999", "--jobs-dir", str(tmp_path)), "--port must be between 0 and 65535")


def test_port_taken(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        one_line_error(serve("--port", str(s.getsockname()[1]), "--jobs-dir", str(tmp_path)), "cannot listen")


def test_required_model_missing_is_a_startup_error(tmp_path):
    env = {"VQP_REQUIRE_MODEL": "1", "VQP_MODEL_DIR": str(tmp_path / "no-models")}
    one_line_error(serve("--port", "0", "--jobs-dir", str(tmp_path), env=env),
                   "a detector model is required (VQP_REQUIRE_MODEL) but no model file found")
    one_line_error(serve("--jobs-dir", str(tmp_path), env={"VQP_REQUIRE_MODEL": "maybe"}), "VQP_REQUIRE_MODEL='maybe'")


def test_readyz_is_not_ready_on_the_fallback_when_a_model_is_required(tmp_path):
    with Live(create_app(Settings(jobs_dir=tmp_path / "a", require_model=True), OpenCVDetector())) as live:
        r = live.client.get("/readyz")
        assert r.status_code == 503 and r.json()["model"] == "opencv" and "fallback" in r.json()["reason"]
    with Live(create_app(Settings(jobs_dir=tmp_path / "b"), OpenCVDetector())) as live:
        assert live.client.get("/readyz").status_code == 200


def open_store_as(uid: int, path: Path) -> str:
    """JobStore(path) in a child process running as ``uid`` (forked: no interpreter to find); its error."""
    import multiprocessing

    def child(q):
        from vqp.errors import VqpError
        from vqp.service.jobs import JobStore

        os.setgid(uid)
        os.setuid(uid)
        try:
            JobStore(path)
            q.put("opened")
        except VqpError as e:
            q.put(str(e))

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=child, args=(q,))
    proc.start()
    proc.join()
    return q.get()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to open the store as another user")
def test_job_folder_of_another_user_says_how_to_fix_it():
    """A /data volume owned by root and a server running as uid 10001, as in the Docker image."""
    import shutil

    top = Path(tempfile.mkdtemp())  # pytest's own folders are private to root
    try:
        top.chmod(0o755)
        (top / "data").mkdir(mode=0o755)
        if not all(os.stat(p).st_mode & 0o001 for p in top.parents):
            pytest.skip(f"{top} is not reachable by other users")
        msg = open_store_as(10001, top / "data" / "jobs")
    finally:
        shutil.rmtree(top)
    assert msg.startswith(f"cannot write the job store in {top / 'data' / 'jobs'}: permission denied for "
                          "user id 10001 (the folder is owned by user id 0)"), msg
    assert "chown -R 10001" in msg and "docker run --user 0" in msg and "\n" not in msg


def test_settings_take_units_and_name_a_bad_value(monkeypatch):
    from vqp.errors import VqpError

    monkeypatch.setenv("VQP_JOBS_QUOTA", "2GiB")
    monkeypatch.setenv("VQP_JOB_TTL", "12h")
    s = Settings.from_env(max_batch=4, jobs_dir="elsewhere")
    assert (s.jobs_quota, s.job_ttl, s.max_batch, s.jobs_dir) == (2 << 30, 43200, 4, Path("elsewhere"))
    monkeypatch.setenv("VQP_JOBS_QUOTA", "lots")
    with pytest.raises(VqpError, match=r"^VQP_JOBS_QUOTA='lots': not a size such as"):
        Settings.from_env()
    monkeypatch.delenv("VQP_JOBS_QUOTA")
    with pytest.raises(VqpError, match=r"^--timeout 0: Input should be greater than 0$"):
        Settings.from_env(timeout_s=0)


def test_connections_on_the_listening_socket_send_without_delay():
    """asyncio turns Nagle off only on TCP-protocol sockets; without it a response written in two
    parts (headers, body) waited on the client's delayed ACK: 40 ms a request."""
    import asyncio
    import socket

    from vqp.cli.serve import listen

    async def accepted_nodelay() -> int:
        got = asyncio.get_running_loop().create_future()

        def connected(reader, writer):
            got.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.start_server(connected, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await got
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
