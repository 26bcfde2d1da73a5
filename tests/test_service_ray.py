"""`vqp serve --jobs ray` (issue 13): video jobs encoded on Ray actors, their state in the job store.

A local Ray on this machine stands in for a cluster (its workers share this filesystem, as a
cluster's nodes must share the jobs folder)."""
from __future__ import annotations

import sys

import av
import pytest

from conftest import MODELS
from service_live import Live, wait_job
from vqp.cli import main
from vqp.service import Settings, create_app
from vqp.service.jobs import JobStore

ray = pytest.importorskip("ray")
MODEL = str(MODELS / "yolo11n_coco_dq.pt")
OPTIONS = {"detect_every": 4, "preset": "ultrafast", "classes": "person,bus"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def upload(client, body: bytes) -> str:
    r = client.post("/v1/jobs", content=body, params=OPTIONS, headers={"Content-Type": "video/mp4"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def result(client, job_id: str) -> bytes:
    job = wait_job(client, job_id)
    assert job["state"] == "done" and job["attempts"] == 1, job
    r = client.get(f"/v1/jobs/{job_id}/result")
    assert r.status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/preview").headers["content-type"] == "image/png"
    return r.content


def frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_ray_jobs_resume_and_match_local_jobs(local_ray, tmp_path, bus_clip):
    body = bus_clip.read_bytes()
    jobs = tmp_path / "ray-jobs"
    store = JobStore(jobs)  # a job a previous service queued and never ran
    old, folder = store.new_folder()
    (folder / "input.mp4").write_bytes(body)
    store.add(old, "old.mp4", {**OPTIONS, "classes": ["person", "bus"]}, max_active=10)
    store.db.close()
    with Live(create_app(Settings(jobs_dir=jobs, model=MODEL, jobs="ray"))) as live:
        from vqp.service.remote import RayJobs

        assert isinstance(live.svc.runner.encode.__self__, RayJobs)
        assert not live.svc.runner.encode.__self__.runner.started  # it joined the Ray this test started
        new = upload(live.client, body)
        out = {job_id: result(live.client, job_id) for job_id in (old, new)}
        r = live.client.delete(f"/v1/jobs/{new}")
        assert r.status_code == 204 and not (jobs / new).exists()
    with Live(create_app(Settings(jobs_dir=tmp_path / "local-jobs", model=MODEL))) as live:
        local = result(live.client, upload(live.client, body))
    assert out[old] == out[new] == local  # same detector, same options: the same bytes
    (tmp_path / "out.mp4").write_bytes(local)
    assert frames(tmp_path / "out.mp4") == frames(bus_clip) == 16


def test_missing_ray_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "vqp.distributed", raising=False)
    assert main(["serve", "--port", "0", "--jobs", "ray", "--jobs-dir", str(tmp_path / "jobs")]) == 2
    assert capsys.readouterr().err == "vqp: error: this command needs ray: pip install 'vqp[ray]'\n"
