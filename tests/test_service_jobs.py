"""Video jobs over HTTP (issues 10 and 11): options as the CLI takes them, refusals at upload, error
messages without the server's paths; retention, quota and listing."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from service_live import Live, wait_job
from vqp.service import Settings, create_app
from vqp.service.jobs import JobStore


@pytest.fixture(scope="module")
def live(tmp_path_factory, detector):
    jobs = tmp_path_factory.mktemp("svc") / "jobs"
    with Live(create_app(Settings(jobs_dir=jobs), detector)) as live:
        yield live


def upload(client, body: bytes, **params):
    return client.post("/v1/jobs", content=body, params=params, headers={"Content-Type": "video/mp4"})


def test_bitrate_is_taken_as_the_cli_takes_it(live, bus_clip):
    r = upload(live.client, bus_clip.read_bytes(), bitrate="300k", detect_every=4, preset="ultrafast")
    assert r.status_code == 202, r.text
    assert r.json()["options"]["bitrate"] == 300_000
    job = wait_job(live.client, r.json()["id"])
    assert job["state"] == "done" and job["result"]["bitrate"] > 0, job
    r = upload(live.client, bus_clip.read_bytes(), bitrate="fast")
    assert r.status_code == 422 and "bitrate='fast' is not a bitrate such as 800k" in r.json()["error"]


def test_unknown_class_is_refused_at_upload(live, bus_clip):
    before = sorted(p.name for p in live.svc.store.root.iterdir())
    r = upload(live.client, bus_clip.read_bytes(), classes="person,nosuch")
    assert r.status_code == 422 and "unknown class 'nosuch'" in r.json()["error"], r.text
    assert sorted(p.name for p in live.svc.store.root.iterdir()) == before  # no job, no folder


def test_job_error_names_the_upload_not_the_server_path(live):
    r = upload(live.client, b"not a video at all", filename="holiday.mp4")
    job = wait_job(live.client, r.json()["id"])
    assert job["state"] == "failed" and job["error"].startswith("holiday.mp4: not a media file"), job
    root = live.svc.store.root
    for path in (str(root), str(root.resolve()), job["id"], "input."):
        assert path not in job["error"], job["error"]


def seed(jobs: Path, specs: dict[str, dict], clip: bytes) -> dict[str, str]:
    """Jobs in a store that no server runs yet: name -> {state, age (s since they ended), input, files, attempts}."""
    store = JobStore(jobs, max_attempts=3)
    ids = {}
    for name, spec in specs.items():
        job_id, folder = store.new_folder()
        (folder / "input.mp4").write_bytes(spec.get("input", clip))
        for f in spec.get("files", ()):
            (folder / f).write_bytes(b"partial")
        store.add(job_id, f"{name}.mp4", {"detect_every": 4, "preset": "ultrafast"}, max_active=100)
        store.update(job_id, state=spec.get("state", "queued"), attempts=spec.get("attempts", 0))
        store.db.execute("UPDATE jobs SET updated=?, created=? WHERE id=?",
                         (time.time() - spec.get("age", 0), time.time() - spec.get("age", 0), job_id))
        ids[name] = job_id
    store.db.close()
    return ids


PARTIAL = ("output.mp4.part.k3x9", "x264_2pass.log", "x264_2pass.log.mbtree.temp", "ffmpeg.temp", "preview.png")


def test_partial_files_go_when_a_job_resumes_or_fails(tmp_path, detector, bus_clip):
    jobs = tmp_path / "jobs"
    ids = seed(jobs, {"resumed": {"state": "running", "attempts": 1, "files": PARTIAL},
                      "gave_up": {"state": "running", "attempts": 3, "files": PARTIAL},
                      "broken": {"input": b"not a video", "files": PARTIAL}}, bus_clip.read_bytes())
    with Live(create_app(Settings(jobs_dir=jobs), detector)) as live:
        gave_up = live.client.get(f"/v1/jobs/{ids['gave_up']}").json()
        assert gave_up["state"] == "failed" and "after 3 attempts" in gave_up["error"]
        assert wait_job(live.client, ids["resumed"])["state"] == "done"
        assert wait_job(live.client, ids["broken"])["state"] == "failed"
    files = {k: sorted(p.name for p in (jobs / v).iterdir()) for k, v in ids.items()}
    assert files == {"resumed": ["input.mp4", "output.mp4", "preview.png"], "gave_up": ["input.mp4"],
                     "broken": ["input.mp4"]}


def test_finished_jobs_expire(tmp_path, detector, bus_clip):
    """At start-up, jobs that ended over VQP_JOB_TTL ago go (rows and files); then a sweep every TTL/4."""
    jobs = tmp_path / "jobs"
    day = 86400
    ids = seed(jobs, {"old_done": {"state": "done", "age": 2 * day}, "old_failed": {"state": "failed", "age": 2 * day},
                      "new_done": {"state": "done", "age": day / 2}}, bus_clip.read_bytes())
    with Live(create_app(Settings(jobs_dir=jobs, job_ttl=day), detector)) as live:
        states = {k: live.client.get(f"/v1/jobs/{v}").status_code for k, v in ids.items()}
        assert states == {"old_done": 404, "old_failed": 404, "new_done": 200}
        assert sorted(p.name for p in jobs.iterdir() if p.is_dir()) == [ids["new_done"]]
    with Live(create_app(Settings(jobs_dir=jobs, job_ttl=0.2), detector)) as live:
        r = upload(live.client, b"not a video")
        job = wait_job(live.client, r.json()["id"])
        assert job["state"] == "failed"
        while live.client.get(f"/v1/jobs/{job['id']}").status_code != 404:  # the sweeper runs every 0.05 s here
            time.sleep(0.01)
        assert not (jobs / job["id"]).exists()


def test_uploads_over_the_quota_are_refused(tmp_path, detector, bus_clip):
    jobs = tmp_path / "jobs"
    body = bus_clip.read_bytes()
    with Live(create_app(Settings(jobs_dir=jobs, jobs_quota=len(body) // 2), detector)) as live:
        c = live.client
        r = upload(c, body)  # told its size: refused before it is read
        assert r.status_code == 507 and "quota" in r.json()["error"], r.text
        r = c.post("/v1/jobs", content=iter([body[:1000], body[1000:]]), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 507, r.text  # streamed: refused once it passes the quota
        r = c.post("/v1/jobs", files={"file": ("a.mp4", body, "video/mp4")})
        assert r.status_code == 507, r.text
        assert c.get("/v1/jobs").json()["total"] == 0
        assert not [p for p in jobs.iterdir() if p.is_dir()]  # nothing of them kept
        assert live.metric('vqp_rejected_total{reason="quota"}') == 3


def test_list_jobs(tmp_path, detector, bus_clip):
    jobs = tmp_path / "jobs"
    ids = seed(jobs, {f"j{i}": {"state": "failed" if i % 2 else "done", "age": 100 - i} for i in range(5)},
               bus_clip.read_bytes())
    with Live(create_app(Settings(jobs_dir=jobs), detector)) as live:
        c = live.client
        page = c.get("/v1/jobs", params={"limit": 2}).json()
        assert page["total"] == 5 and [j["id"] for j in page["jobs"]] == [ids["j4"], ids["j3"]]
        page = c.get("/v1/jobs", params={"limit": 2, "offset": 4}).json()
        assert [j["name"] for j in page["jobs"]] == ["j0.mp4"]
        page = c.get("/v1/jobs", params={"state": "failed"}).json()
        assert page["total"] == 2 and {j["name"] for j in page["jobs"]} == {"j1.mp4", "j3.mp4"}
        for params in ({"limit": 0}, {"limit": 5000}, {"offset": -1}, {"state": "lost"}):
            assert c.get("/v1/jobs", params=params).status_code == 422
