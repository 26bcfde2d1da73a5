"""The HTTP service, run for real: `python -m vqp serve` on a free loopback port, driven with httpx."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import DATA, MODELS, ROOT

class Server:
    """One `vqp serve` subprocess; its log goes to a file so a failure can show it."""

    def __init__(self, tmp: Path, *flags: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true", "YOLO_VERBOSE": "false",
               "OMP_NUM_THREADS": "2"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vqp", "serve", "--port", str(self.port), "--model",
                 str(MODELS / "yolo11n_coco_dq.pt"), *flags], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        # no time limits anywhere: each wait ends on an event (ready, an answer, the process exiting),
        # so a loaded machine makes the tests slower, never wrong
        self.client = httpx.Client(base_url=self.url, timeout=None)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # a poll interval, not a deadline

    def stop(self, kill: bool = False) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait()

    def metric(self, name: str) -> float:
        text = self.client.get("/metrics").text
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    s = Server(tmp, "--max-batch", "16", "--max-wait-ms", "50", "--queue-size", "128", "--jobs-dir", str(tmp / "jobs"),
               "--max-image-bytes", "1000000", "--max-pixels", "4000000", "--max-video-bytes", "20000000")
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


def test_jpeg_endpoint(server, bus_path):
    r = server.client.post("/v1/jpeg", params={"match_quality": 50}, content=bus_path.read_bytes(),
                           headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (810, 1080) and r.headers["x-vqp-size"] == "810x1080"
    assert int(r.headers["x-vqp-bytes"]) == len(r.content) <= int(r.headers["x-vqp-plain-bytes"])
    assert int(r.headers["x-vqp-quality"]) >= 50 and r.headers["x-vqp-reference-quality"] == "50"
    names = [b["name"] for b in json.loads(r.headers["x-vqp-detections"])]
    assert "bus" in names and "person" in names and int(r.headers["x-vqp-detection-count"]) == len(names)
    assert "detect;dur=" in r.headers["server-timing"]

    # multipart, a class filter and a size target; the client's file name (with path parts) is ignored
    r = server.client.post("/v1/jpeg", params={"target_size": 60000, "classes": "person"},
                           files={"file": ("../../etc/passwd", bus_path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert len(r.content) <= 60000
    assert {b["name"] for b in json.loads(r.headers["x-vqp-detections"])} == {"person"}


def test_detect_endpoint(server, zidane_path):
    r = server.client.post("/v1/detect", files={"file": ("zidane.jpg", zidane_path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["width"], d["height"]) == (1280, 720)
    assert sum(b["name"] == "person" for b in d["boxes"]) >= 2
    assert d["model"].endswith("yolo11n_coco_dq.pt")


def test_concurrent_requests_are_batched_and_not_mixed_up(server, bus_path, zidane_path):
    """64 parallel requests, each a different size of bus.jpg or zidane.jpg: every answer must be its own."""
    bus, zidane = Image.open(bus_path).convert("RGB"), Image.open(zidane_path).convert("RGB")
    cases = []
    for i in range(64):
        src = bus if i % 2 == 0 else zidane
        w = 320 + 4 * i
        size = (w, round(w * src.height / src.width))
        cases.append((size, i % 2 == 0, jpeg_bytes(src.resize(size))))
    batches_before = server.metric("vqp_detect_batch_size_count")
    frames_before = server.metric("vqp_detect_batch_size_sum")

    def post(case):
        return server.client.post("/v1/detect", content=case[2], headers={"Content-Type": "image/jpeg"})

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(post, cases))
    for (size, is_bus, _), r in zip(cases, answers):
        assert r.status_code == 200, r.text
        d = r.json()
        assert (d["width"], d["height"]) == size
        names = {b["name"] for b in d["boxes"]}
        assert ("bus" in names) == is_bus and "person" in names
        assert all(0 <= b["x1"] <= b["x2"] <= size[0] and 0 <= b["y1"] <= b["y2"] <= size[1] for b in d["boxes"])
    batches = server.metric("vqp_detect_batch_size_count") - batches_before
    frames = server.metric("vqp_detect_batch_size_sum") - frames_before
    assert frames == 64
    assert batches < 64  # several requests shared a detector call


def test_bad_input(server, bus_path):
    c = server.client

    def check(r, status, words):
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert words in r.json()["error"] and r.json()["status"] == status

    check(c.post("/v1/jpeg", content=b"this is not an image", headers={"Content-Type": "image/png"}), 422,
          "not an image")
    check(c.post("/v1/detect", content=bus_path.read_bytes(), headers={"Content-Type": "text/plain"}), 415,
          "content type")
    check(c.post("/v1/detect", content=bus_path.read_bytes()), 415, "content type")
    check(c.post("/v1/detect", content=b"\0" * 1_500_000, headers={"Content-Type": "image/png"}), 413,
          "over the limit")
    chunks = iter([b"\0" * 400_000] * 4)  # no Content-Length: counted while it streams in
    check(c.post("/v1/detect", content=chunks, headers={"Content-Type": "image/png"}), 413, "over the limit")
    big = jpeg_bytes(Image.new("RGB", (2500, 2000), (90, 120, 200)), 50)  # 5 Mpx in a small file
    assert len(big) < 1_000_000
    check(c.post("/v1/detect", content=big, headers={"Content-Type": "image/jpeg"}), 413, "pixels")
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno closing boundary"
    check(c.post("/v1/detect", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400,
          "")
    check(c.post("/v1/detect", content=b"garbage", headers={"Content-Type": "multipart/form-data"}), 400, "")
    check(c.post("/v1/detect", files={"other": ("a.jpg", b"x", "image/jpeg")}), 400, "'file'")
    check(c.post("/v1/jpeg", params={"quality": 500}, content=b"x", headers={"Content-Type": "image/jpeg"}), 422,
          "quality")
    check(c.post("/v1/jpeg", params={"quality": 50, "match_quality": 50}, content=b"x",
                 headers={"Content-Type": "image/jpeg"}), 422, "only one")
    check(c.post("/v1/jpeg", params={"classes": "unicorn"}, content=b"x", headers={"Content-Type": "image/jpeg"}),
          422, "unknown class")
    check(c.post("/v1/jpeg", params={"target_size": 200}, content=bus_path.read_bytes(),
                 headers={"Content-Type": "image/jpeg"}), 422, "cannot fit")
    check(c.get("/v1/nothing"), 404, "Not Found")
    check(c.get("/v1/jobs/../../etc/passwd"), 404, "")
    check(c.get("/v1/jobs/0123456789abcdef0123456789abcdef"), 404, "no job")
    assert c.get("/healthz").status_code == 200  # still serving


def test_health_metrics_openapi(server):
    c = server.client
    # one start-up line without -v: where, which model, which device
    (line,) = [ln for ln in server.log.read_text().splitlines() if ln.startswith("vqp: serving on")]
    assert line.startswith(f"vqp: serving on {server.url} (model ") and "yolo11n_coco_dq.pt, device cpu" in line
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json()["status"] == "ready"
    text = c.get("/metrics").text
    for name in ("vqp_requests_total", "vqp_request_seconds_bucket", "vqp_detect_batch_size_bucket",
                 "vqp_detect_queue_depth", "vqp_stage_seconds_bucket", "vqp_jobs"):
        assert name in text
    assert 'route="/v1/jobs/{job_id}"' in text  # job ids are not labels
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/jpeg", "/v1/detect", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result",
            "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/jpeg"]["post"]["requestBody"]["content"]
    assert c.get("/docs").status_code == 200


def make_clip(path: Path, frames: int) -> Path:
    """The first ``frames`` frames of the PETS2009 clip (pedestrians, 480x360) as a small H.264 MP4."""
    import av

    with av.open(str(DATA / "video" / "vtest_pets2009_480x360.avi")) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream("libx264", rate=10)
        out.width, out.height, out.pix_fmt = 480, 360, "yuv420p"
        out.options = {"preset": "ultrafast"}
        for i, f in enumerate(src.decode(video=0)):
            if i == frames:
                break
            dst.mux(out.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")))
        dst.mux(out.encode(None))
    return path


def frame_count(data: bytes) -> tuple[int, tuple[int, int]]:
    import av

    with av.open(io.BytesIO(data)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), (frames[0].width, frames[0].height)


def wait_job(client: httpx.Client, job_id: str, states=("done", "failed")) -> dict:
    """Poll until the job reaches one of ``states`` (a dead server fails the request instead)."""
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in states:
        time.sleep(0.1)
    return job


def wait_started(client: httpx.Client, job_id: str) -> dict:
    """Wait until the job runs and has reported progress."""
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] in ("queued", "running"), job
        if job["progress"] > 0:
            return job
        time.sleep(0.05)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "pets.mp4", 24)


def test_video_job_lifecycle(server, clip, tmp_path):
    c = server.client
    r = c.post("/v1/jobs", params={"crf": 30, "detect_every": 4, "filename": "../../evil name.mp4"},
               content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["name"] == "evil name.mp4" and job["options"] == {"crf": 30.0, "detect_every": 4}
    job = wait_job(c, job["id"])
    assert job["state"] == "done", job
    assert job["progress"] == 1 and job["result"]["frames"] == 24 and job["result"]["frames_with_detections"] > 0
    r = c.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 200 and "evil%20name.vqp.mp4" in r.headers["content-disposition"]
    assert frame_count(r.content) == (24, (480, 360))
    jobs_dir = Path(server.proc.args[server.proc.args.index("--jobs-dir") + 1])
    assert sorted(p.name for p in (jobs_dir / job["id"]).iterdir()) == ["input.mp4", "output.mp4", "preview.png"]
    r = c.get(f"/v1/jobs/{job['id']}/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert not list(jobs_dir.parent.rglob("evil*"))  # the client's name never became a path

    assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert c.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert not (jobs_dir / job["id"]).exists()

    # multipart upload of something that is not a video: accepted, then failed with the reason
    r = c.post("/v1/jobs", files={"file": ("..\\..\\x.mp4", b"not a video at all", "video/mp4")})
    assert r.status_code == 202 and r.json()["name"] == "x.mp4"
    bad = wait_job(c, r.json()["id"])
    assert bad["state"] == "failed" and "not a media file" in bad["error"]
    r = c.get(f"/v1/jobs/{bad['id']}/result")
    assert r.status_code == 409 and "failed" in r.json()["error"]

    for params, words in (({"nonsense": 1}, "unknown video option"), ({"crf": "abc"}, "not a valid float"),
                          ({"codec": "divx"}, "unknown codec")):
        r = c.post("/v1/jobs", params=params, content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 422 and words in r.json()["error"], r.text
    r = c.post("/v1/jobs", content=clip.read_bytes(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = c.post("/v1/jobs", content=b"", headers={"Content-Type": "video/mp4"})
    assert r.status_code == 422 and "empty" in r.json()["error"]


def test_jobs_survive_restart_and_limits(tmp_path, clip):
    """Jobs left running by a crash resume (or fail with the reason); a killed server loses no job."""
    from vqp.service.jobs import JobStore

    jobs = tmp_path / "jobs"
    store = JobStore(jobs, max_attempts=3)
    ids = {}
    for key in ("resume", "give_up", "lost"):
        job_id, folder = store.new_folder()
        (folder / "input.mp4").write_bytes(clip.read_bytes())
        store.add(job_id, f"{key}.mp4", {"detect_every": 4}, max_active=10)
        ids[key] = job_id
    assert store.claim().id == ids["resume"]  # a server took it, then died
    store.claim()
    store.update(ids["give_up"], attempts=3)  # already started three times
    (store.folder(ids["lost"]) / "input.mp4").unlink()
    orphan, _ = store.new_folder()  # an upload cut off by the crash
    store.db.close()

    flags = ("--jobs-dir", str(jobs), "--max-batch", "1", "--queue-size", "1", "--max-jobs", "1")
    s = Server(tmp_path, *flags)
    try:
        c = s.client
        give_up, lost = c.get(f"/v1/jobs/{ids['give_up']}").json(), c.get(f"/v1/jobs/{ids['lost']}").json()
        assert give_up["state"] == "failed" and "after 3 attempts" in give_up["error"]
        assert lost["state"] == "failed" and "input file missing" in lost["error"]
        assert not (jobs / orphan).exists()
        resumed = wait_job(c, ids["resume"])
        assert resumed["state"] == "done" and resumed["attempts"] == 2 and "resumed after a restart" in resumed["note"]

        # kill -9 in the middle of a job: the next server runs it again
        long_clip = make_clip(tmp_path / "long.mp4", 40).read_bytes()
        job_id = c.post("/v1/jobs", params={"detect_every": 1}, content=long_clip,
                        headers={"Content-Type": "video/mp4"}).json()["id"]
        assert 0 < wait_started(c, job_id)["progress"] < 1
        r = c.post("/v1/jobs", content=long_clip, headers={"Content-Type": "video/mp4"})
        assert r.status_code == 503 and r.headers["retry-after"] == "10" and "jobs are queued or running" in r.text
    finally:
        s.stop(kill=True)
    s = Server(tmp_path, *flags)
    try:
        c = s.client
        job = wait_job(c, job_id)
        assert job["state"] == "done" and job["attempts"] == 2 and "resumed" in job["note"], job
        assert frame_count(c.get(f"/v1/jobs/{job_id}/result").content) == (40, (480, 360))

        # deleting a running job stops it and removes its files
        job_id = c.post("/v1/jobs", params={"detect_every": 1}, content=long_clip,
                        headers={"Content-Type": "video/mp4"}).json()["id"]
        wait_started(c, job_id)
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404
        while (jobs / job_id).exists():  # the worker notices the deletion and removes the folder
            time.sleep(0.1)
        assert c.get("/readyz").status_code == 200
    finally:
        s.stop()
