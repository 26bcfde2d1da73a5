"""The service app in this process, on uvicorn in a thread on a free loopback port, for tests that
need to reach inside it (a detector that waits for the test, the app's own objects)."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


class Live:
    """``with Live(create_app(settings, detector)) as live: live.client.get(...)``."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # as uvicorn's own
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=None)  # answers are awaited, never timed

    def __enter__(self) -> "Live":
        self.thread.start()
        while not self.server.started:  # set once the lifespan ran and the socket listens
            if not self.thread.is_alive():
                raise RuntimeError("the server thread ended before it started")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()

    @property
    def svc(self):
        return self.app.state.svc

    def metric(self, name: str) -> float:
        import re

        text = self.client.get("/metrics").text
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


class Gated:
    """A detector that, once closed, holds each call until the test opens it: deterministic waiting."""

    def __init__(self, detector):
        self.detector = detector
        self.names, self.source = detector.names, getattr(detector, "source", "")
        self.entered = threading.Event()  # a call is waiting at the gate
        self.open = threading.Event()
        self.open.set()

    def close(self) -> None:
        self.entered.clear()
        self.open.clear()

    def __call__(self, frames):
        if not self.open.is_set():
            self.entered.set()
            self.open.wait()
        return self.detector(frames)


def wait_job(client: httpx.Client, job_id: str, states=("done", "failed")) -> dict:
    """Poll a job until it reaches one of ``states`` (the cap only ends a hung test)."""
    for _ in range(20000):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']}")
