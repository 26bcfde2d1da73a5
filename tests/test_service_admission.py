"""Admission control (issue 11): work the service cannot start in time is refused at once with 503 and
Retry-After; an accepted request finishes; 504 answers only the client's own deadline.

The app runs in this process with the real detector behind a gate the test opens, so which request
waits where is decided by events, not by timing.
"""
from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from service_live import Gated, Live
from vqp.service import Settings, create_app


@pytest.fixture(scope="module")
def small_bus(bus_path) -> bytes:
    buf = io.BytesIO()
    Image.open(bus_path).reduce(4).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def live(tmp_path, detector, **settings) -> tuple[Live, Gated]:
    gate = Gated(detector)
    return Live(create_app(Settings(jobs_dir=tmp_path / "jobs", **settings), gate)), gate


def post(client, route: str, body: bytes, **params):
    return client.post(route, content=body, params=params, headers={"Content-Type": "image/jpeg"})


def wait_for(check, what: str):
    """Poll a condition on the server's state (each poll is a request to it); no time limit."""
    while not check():
        time.sleep(0.005)  # a poll interval; ``what`` names the awaited event for a reader


def test_full_jpeg_stage_is_refused_at_once(tmp_path, detector, small_bus):
    """One JPEG slot and no waiting place: while one request holds it, the next is a 503 with Retry-After."""
    server, gate = live(tmp_path, detector, encode_workers=1, jpeg_queue=0)
    with server, ThreadPoolExecutor(2) as pool:
        gate.close()
        first = pool.submit(post, server.client, "/v1/jpeg", small_bus, quality=75)
        assert gate.entered.wait()  # the first request was admitted and waits for the detector
        r = post(server.client, "/v1/jpeg", small_bus, quality=75)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1 and "jpeg stage is full" in r.json()["error"]
        assert server.metric('vqp_rejected_total{reason="jpeg_full"}') == 1
        detect = pool.submit(post, server.client, "/v1/detect", small_bus)  # needs no JPEG place: admitted
        wait_for(lambda: server.metric("vqp_detect_queue_depth") == 1, "the detect request queued")
        gate.open.set()
        assert first.result().status_code == 200  # the accepted request finishes
        assert detect.result().status_code == 200
        assert post(server.client, "/v1/jpeg", small_bus, quality=75).status_code == 200  # the place came back
        assert server.metric("vqp_stage_admitted") == 0 and server.metric("vqp_detect_queue_depth") == 0


def test_full_detection_queue_is_refused_at_once(tmp_path, detector, small_bus):
    """One place in the detection queue: with the detector busy and one frame queued, the next is a 503."""
    server, gate = live(tmp_path, detector, queue_size=1, max_batch=1)
    with server, ThreadPoolExecutor(2) as pool:
        gate.close()
        first = pool.submit(post, server.client, "/v1/detect", small_bus)
        assert gate.entered.wait()  # the batcher took the first frame: its place is free again
        second = pool.submit(post, server.client, "/v1/detect", small_bus)
        wait_for(lambda: server.metric("vqp_detect_queue_depth") == 1, "the second request queued")
        r = post(server.client, "/v1/detect", small_bus)
        assert r.status_code == 503 and "detection queue is full" in r.json()["error"], r.text
        assert int(r.headers["retry-after"]) >= 1
        gate.open.set()
        assert first.result().status_code == 200 and second.result().status_code == 200


def test_request_that_cannot_start_before_its_deadline_is_refused(tmp_path, detector, small_bus):
    """The JPEG stage takes 100 s an image (as measured) and its one slot is taken: a client that waits
    5 s is told at once (503) and when to come back, instead of timing out."""
    server, gate = live(tmp_path, detector, encode_workers=1)
    with server, ThreadPoolExecutor(1) as pool:
        gate.close()
        first = pool.submit(post, server.client, "/v1/jpeg", small_bus, quality=75)
        assert gate.entered.wait()
        server.svc.stages["jpeg"].mean.add(100.0)
        r = post(server.client, "/v1/jpeg", small_bus, quality=75, timeout=5)
        assert r.status_code == 503 and "longer than its deadline of 5 s" in r.json()["error"], r.text
        assert int(r.headers["retry-after"]) >= 95
        assert server.metric('vqp_rejected_total{reason="deadline"}') == 1
        gate.open.set()
        assert first.result().status_code == 200


def test_client_deadline_is_a_504_and_counted(tmp_path, detector, small_bus):
    server, gate = live(tmp_path, detector)
    with server:
        gate.close()
        r = post(server.client, "/v1/detect", small_bus, timeout=0.2)  # the detector cannot answer before it
        assert r.status_code == 504 and "client's timeout of 0.2 s" in r.json()["error"], r.text
        assert server.metric("vqp_deadline_exceeded_total") == 1
        gate.open.set()
        assert post(server.client, "/v1/detect", small_bus).status_code == 200
        assert server.metric('vqp_requests_total{method="POST",route="/v1/detect",status="504"}') == 1


def test_load_config_every_answer_is_200_or_503(tmp_path, bus_path):
    """The load test (`python -m benchmarks CONFIG` with `kind: service`) on a real `vqp serve` with one
    JPEG worker and one waiting place: 16 clients at once all get an answer, each a 200 or a 503."""
    import json

    from benchmarks.__main__ import main

    cfg = tmp_path / "load.yaml"
    cfg.write_text(f"kind: service\nimage: {bus_path}\nserver: {{encode_workers: 1, jpeg_queue: 1}}\nruns:\n"
                   "  - {endpoint: jpeg, clients: 16, params: {quality: 60}, honour_retry_after: false}\n")
    assert main([str(cfg), "--out", str(tmp_path / "out")]) == 0
    (row,) = json.loads((tmp_path / "out" / "load.json").read_text())["rows"]
    assert row["ok"] + row["busy"] == 16 and row["ok"] >= 2, row
    assert row["timeout"] == row["lost"] == row["other"] == row["server_504"] == 0, row
