"""Video jobs over HTTP (issues 10 and 11): options as the CLI takes them, refusals at upload, error
messages without the server's paths; retention, quota and listing."""
from __future__ import annotations

import pytest

from service_live import Live, wait_job
from vqp.service import Settings, create_app


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
