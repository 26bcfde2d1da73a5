"""vqp batch: planning, manifest and resume, in-process and on Ray (local, a worker killed, two nodes).

One tiny mixed folder serves every test: three small images (two of them both named ``a``), a
10-frame clip, a damaged image and an audio-only file. The in-process run is the reference that
every Ray run must match byte for byte.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import DATA, FAST, MODELS, make_clip

ray = pytest.importorskip("ray")

MODEL = str(MODELS / "yolo11n_coco_dq.pt")
FLAGS = ["--model", MODEL, "--preset", FAST["preset"]]
OUTPUTS = ["a.jpg", "a.png.jpg", "sub/b.jpg", "sub/clip.mp4"]
FAILED = {"broken.png": "not an image Pillow can read", "sound.mp4": "no video stream"}


def settings(*flags):
    from vqp.cli import build_parser
    from vqp.cli.batch import settings_from_args

    return settings_from_args(build_parser().parse_args(["batch", "x", "-o", "y", *FLAGS, *flags]))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, kodak):
    d = tmp_path_factory.mktemp("batch") / "in"
    (d / "sub").mkdir(parents=True)
    im = Image.open(kodak / "kodim05.png")
    im.crop((0, 0, 256, 192)).save(d / "a.png")
    im.crop((256, 0, 512, 192)).save(d / "a.jpg", quality=95)
    Image.open(kodak / "kodim20.png").crop((100, 100, 356, 292)).save(d / "sub" / "b.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with av.open(str(DATA / "video" / "vtest_pets2009_480x360.avi")) as c:
        frames = [np.asarray(f.to_image().resize((160, 120))) for _, f in zip(range(10), c.decode(video=0))]
    make_clip(d / "sub" / "clip.mp4", frames, options={"crf": "12", **FAST})
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=0.5", "-c:a", "aac",
                    str(d / "sound.mp4")], check=True)
    return d


def manifest(out: Path) -> dict[str, dict]:
    """The manifest's last line about each input, by the input's file name."""
    from vqp.batch import read_manifest

    return {Path(r["input"]).name: r for r in read_manifest(out / "manifest.jsonl").values()}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The in-process run through the CLI: the bytes every other run must give."""
    from vqp.cli import main

    out = tmp_path_factory.mktemp("reference")
    assert main(["batch", str(inputs), "-o", str(out), *FLAGS]) == 2  # two inputs fail
    return out


def check_outputs(out: Path, reference: Path) -> None:
    """Every output byte-identical to the reference, the bad inputs failed, and no temp file left."""
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    recs = manifest(out)
    done = {n: r["status"].replace("skipped", "ok") for n, r in recs.items()}
    assert done == {"a.jpg": "ok", "a.png": "ok", "b.png": "ok", "clip.mp4": "ok", **{n: "failed" for n in FAILED}}
    for name, why in FAILED.items():
        assert why in recs[name]["error"] and "\n" not in recs[name]["error"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(OUTPUTS + ["manifest.jsonl"])


def test_import_vqp_does_not_import_ray():
    code = "import sys, vqp, vqp.batch, vqp.cli; vqp.cli.build_parser(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_outputs_mirror_the_tree_without_clashes(tmp_path):
    """a.jpg and a.png in one folder do not both become a.jpg; folders are mirrored; outputs are never inputs."""
    from vqp.batch import Settings, gather

    src = tmp_path / "in"
    for name in ["a.jpg", "a.png", "c.png", "x/a.png", "v/clip.avi", "v/clip.mp4", "v/notes.txt", "out/old.jpg"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    items, bad = gather([str(src), str(tmp_path / "missing.png")], src / "out", Settings())
    out = {Path(i.src).relative_to(src).as_posix(): Path(i.dst).relative_to(src / "out").as_posix() for i in items}
    assert out == {"a.jpg": "a.jpg", "a.png": "a.png.jpg", "c.png": "c.jpg", "x/a.png": "x/a.jpg",
                   "v/clip.avi": "v/clip.avi.mp4", "v/clip.mp4": "v/clip.mp4"}
    assert bad == [(str(tmp_path / "missing.png"), f"{tmp_path / 'missing.png'}: no such file or folder")]
    items, _ = gather([str(src / "x" / "a.png"), str(src / "c.png")], tmp_path / "o", Settings())
    assert [Path(i.dst).relative_to(tmp_path / "o").as_posix() for i in items] == ["x/a.jpg", "c.jpg"]


def test_in_process_batch_records_every_input(reference):
    recs = manifest(reference)
    check_outputs(reference, reference)
    for name in ("a.jpg", "a.png", "b.png"):
        r = recs[name]
        assert r["kind"] == "image" and r["bytes"] == (reference / r["output"]).stat().st_size
        assert 0 < r["bytes"] <= r["plain_bytes"] and r["seconds"] > 0
    assert recs["clip.mp4"]["frames"] == 10


def test_resume_skips_what_is_done(inputs, reference, tmp_path):
    """After a batch that stopped half-way (two lines written, one cut short, temp files left), a
    re-run skips the finished inputs, leaves their files alone, does the rest and removes the temp
    files; other options redo everything."""
    from vqp.batch import Batch

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    keep = [line for line in lines if Path(json.loads(line)["input"]).name in ("a.jpg", "a.png")]
    (out / "manifest.jsonl").write_text("\n".join(keep) + "\n" + lines[0][:30])
    for name in ("sub/b.jpg", "sub/clip.mp4"):
        (out / name).unlink()
    before = {n: (out / n).stat().st_mtime_ns for n in ("a.jpg", "a.png.jpg")}
    # what a killed run leaves: temp outputs and x264's stats files, beside a skipped and a redone output
    for name in (".a.jpg.k1ll3d_x.part", "sub/.clip.mp4.k1ll3d_x.part.mp4", "sub/.clip.mp4.k1ll3d_y.part.mp4.mbtree.temp"):
        (out / name).write_bytes(b"half")
    s = settings()
    redo = Batch([str(inputs)], out, settings("--quality", "60")).units  # other options: nothing is skipped
    assert sorted(Path(i.src).name for u in redo for i in u.items) == sorted(["a.jpg", "a.png", "b.png", "clip.mp4",
                                                                              *FAILED])
    Batch([str(inputs)], out, s).run()
    check_outputs(out, reference)
    status = {n: r["status"] for n, r in manifest(out).items()}
    assert status == {"a.jpg": "skipped", "a.png": "skipped", "b.png": "ok", "clip.mp4": "ok",
                      **{n: "failed" for n in FAILED}}
    assert before == {n: (out / n).stat().st_mtime_ns for n in ("a.jpg", "a.png.jpg")}


def test_local_ray_matches_in_process(inputs, reference, tmp_path):
    """`vqp batch --ray` starts a local Ray, runs the folder on two actors and stops Ray again."""
    from vqp.cli import main

    assert not ray.is_initialized()
    assert main(["batch", str(inputs), "-o", str(tmp_path), *FLAGS, "--images-per-task", "1", "--ray",
                 "--actors", "2"]) == 2
    check_outputs(tmp_path, reference)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine, and a runner with one actor per node."""
    from ray.cluster_utils import Cluster

    from vqp.distributed import RayRunner

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    runner = RayRunner(actors=2)
    yield runner
    runner.close()
    ray.shutdown()
    c.shutdown()


def test_two_node_cluster_survives_a_killed_worker(inputs, reference, cluster, tmp_path):
    """Both nodes take work; the process of the actor that wrote the first manifest line is killed
    while it still has work queued (the runner queues the next unit before reporting a line); Ray
    restarts it, retries that work, and the batch ends as if nothing had happened."""
    from vqp.batch import Batch

    def pids():
        return {ray.get(a.ready.remote())["pid"] for a in cluster.actors}  # also: both actors are up

    killed = []

    def kill_first(rec):
        if not killed:
            killed.append(rec["pid"])
            os.kill(rec["pid"], signal.SIGKILL)

    before = pids()
    records = Batch([str(inputs)], tmp_path, settings(), images_per_unit=1).run(cluster, kill_first)
    check_outputs(tmp_path, reference)
    assert len({r["node"] for r in records if "node" in r}) == 2
    new = pids() - before
    assert killed[0] in before and len(new) == 1
    assert new & {r["pid"] for r in records}  # the restarted actor did the work the killed one had queued
