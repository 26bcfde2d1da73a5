"""Benchmark harness: outputs, resume from cache, BD-rate sign, mAP scoring and config errors."""
import copy
import csv
import json
import math

import pytest
import torch

from benchmarks import datasets, harness
from benchmarks.__main__ import main
from conftest import MODELS
from vqp.errors import VqpError

TINY = """
name: tiny
datasets:
  - {name: coco, kind: coco, scale: 2, limit: 2}
grid:
  image: [20, 60]
codecs:
  - {name: plain, encoder: pillow}
  - {name: vqp, encoder: pillow, vqp: true, equal_bytes: plain, anchors: [plain]}
"""


@pytest.fixture()
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def test_run_writes_every_output_and_resumes(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([str(tiny), "--out", str(out), "--no-progress"]) == 0
    for f in ("points.json", "points.csv", "summary.json", "summary.csv", "summary.md", "rd_coco.png", "cache.jsonl"):
        assert (out / f).stat().st_size > 0, f
    points = json.loads((out / "points.json").read_text())
    enc = [p for p in points if p["codec"] != "original"]
    assert len(enc) == 2 * 2 * 2 and len(points) == len(enc) + 2
    by = {(p["item"], p["codec"], p["value"]): p for p in enc}
    for (item, codec, v), p in by.items():
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / p["pixels"])
        assert {"psnr_obj_gt", "msssim_obj_gt", "psnr_obj_det", "psnr_bg_gt", "msssim_full"} <= set(p)
        if codec == "vqp":  # equal bytes: never larger than the plain file at the same grid point
            assert p["bytes"] <= by[(item, "plain", v)]["bytes"]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["codec"] for r in rows} == {"original", "plain", "vqp"}
    assert all(0 <= float(r["map"]) <= 1 for r in rows)
    assert (out / "rd_coco.png").read_bytes()[:4] == b"\x89PNG"
    assert "| vqp | 20 |" in (out / "summary.md").read_text()

    # a second run takes every point from the cache: nothing is encoded or detected again
    lines = (out / "cache.jsonl").read_text()
    monkeypatch.setattr(harness, "encode_image", lambda *a, **k: pytest.fail("re-encoded a cached point"))
    with (out / "cache.jsonl").open("a") as f:
        f.write('{"key": "cut short by a kil')  # an interrupted write must not break the resume
    assert main([str(tiny), "--out", str(out), "--no-progress"]) == 0
    assert (out / "cache.jsonl").read_text().startswith(lines)
    assert json.loads((out / "points.json").read_text()) == points


def test_codec_with_its_own_steering_detector(tmp_path):
    """A vqp image codec's ``detector`` runs its own detector (here a smaller input and a higher
    threshold), times it per image, and keys its points apart from the default's."""
    p = tmp_path / "steer.yaml"
    p.write_text(TINY.replace("limit: 2", "limit: 1").replace("[20, 60]", "[50]")
                 + "  - {name: small, encoder: pillow, vqp: true, equal_bytes: plain, detector: {imgsz: 320, conf: 0.3}}\n")
    out = tmp_path / "run"
    assert main([str(p), "--out", str(out), "--no-progress"]) == 0
    points = {q["codec"]: q for q in json.loads((out / "points.json").read_text())}
    assert points["small"]["detect_seconds"] > 0 and "detect_seconds" not in points["vqp"]
    assert points["small"]["key"] != points["vqp"]["key"] and points["small"]["bytes"] <= points["plain"]["bytes"]


def test_codec_steered_by_the_ground_truth(tmp_path, monkeypatch):
    """``detector: {oracle: true}`` hands vqp the labelled boxes (confidence 1), not the detector's."""
    p = tmp_path / "oracle.yaml"
    p.write_text(TINY.replace("limit: 2", "limit: 1").replace("[20, 60]", "[50]")
                 + "  - {name: oracle, encoder: pillow, vqp: true, equal_bytes: plain, detector: {oracle: true}}\n")
    seen = []
    encode = harness.encode_image
    monkeypatch.setattr(harness, "encode_image", lambda c, rgb, v, steer, budget: (
        seen.append((c.name, steer)), encode(c, rgb, v, steer, budget))[1])
    assert main([str(p), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    gt = datasets.coco(1, 2)[0]
    steer = dict((n, d) for n, d in seen if n != "plain")
    boxes = [(b.x1, b.y1, b.x2, b.y2) for b in steer["oracle"].boxes]
    assert boxes == [tuple(b) for b in gt.boxes] and all(b.conf == 1 for b in steer["oracle"].boxes)
    assert boxes != [(b.x1, b.y1, b.x2, b.y2) for b in steer["vqp"].boxes]


def test_bd_rate_sign():
    anchor = [(r, 30 + 4 * i) for i, r in enumerate((0.5, 1.0, 1.5, 2.0))]
    cheaper = [(r * 0.8, q) for r, q in anchor]  # same quality for 20% fewer bits
    assert harness.bd_rate_safe(anchor, cheaper) == pytest.approx(-20, abs=0.5)
    assert harness.bd_rate_safe(cheaper, anchor) == pytest.approx(25, abs=0.5)
    assert harness.bd_rate_safe(anchor[:2], cheaper[:2]) is None  # too few points
    assert harness.bd_rate_safe(anchor, [(1, 33), (2, 32), (3, 31), (4, 30)]) is None  # no front to compare
    # a point beaten by a cheaper one is dropped (Pareto front), the rest still compares
    assert harness.envelope([(1, 30), (2, 29), (3, 31), (4, 32)]) == [(1, 30), (3, 31), (4, 32)]
    assert harness.bd_rate_safe(anchor, cheaper + [(1.0, 29)]) == pytest.approx(-20, abs=0.5)


def test_coco_map_perfect_and_empty():
    gt = {"a": ([(10, 10, 50, 60), (60, 20, 90, 90)], [0, 2], 100, 100)}
    perfect = {"a": [[10, 10, 50, 60, 0.9, 0], [60, 20, 90, 90, 0.8, 2]]}
    assert harness.coco_map(gt, perfect) == pytest.approx((1.0, 1.0))
    wrong_class = {"a": [[10, 10, 50, 60, 0.9, 1]]}
    assert harness.coco_map(gt, wrong_class) == (0.0, 0.0)
    assert harness.coco_map(gt, {}) == (0.0, 0.0)


@pytest.mark.parametrize("text, msg", [
    ("datasets: []\ncodecs: []", "needs 'datasets' and 'codecs'"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: webp, grid: [1]}]", "unknown encoder 'webp'"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow, grid: [1], anchors: [b]}]", "unknown codec 'b'"),
    ("datasets: [{kind: mnist}]\ncodecs: [{name: a, encoder: pillow, grid: [1]}]", "kind must be one of"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow}]", "no grid"),
    ("datasets: [\n", "not valid YAML"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow, grid: [1], detector: {imgsz: 320}}]",
     "'detector' takes"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow, grid: [1], vqp: true, detector: {oracle: true, imgsz: 320}}]",
     "or only oracle"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow, grid: [1], detector: {oracle: true}}]",
     "for a vqp image codec"),
    ("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow, grid: [1]}]\nthreds: 2", "unknown keys threds"),
    ("base: nope.yaml\ncodecs: [{name: a, model: m.pt}]", "nope.yaml: no such config file"),
    ("base: bad.yaml\ndatasets: [{kind: kodak}]", "base bad.yaml includes itself"),
])
def test_bad_config(tmp_path, capsys, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(VqpError, match=msg):
        harness.load_config(p)
    assert main([str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks: error:") and "Traceback" not in err


def test_config_base_is_folded_in(tmp_path):
    """A variant takes its base's datasets and grid, updates the codecs it names key by key, appends
    new ones, and keeps its own name (hence its own run folder)."""
    (tmp_path / "b.yaml").write_text("""
name: b
out: somewhere
datasets: [{kind: clips, only: [akiyo_cif], frames: 6}]
grid: {video: [30, 44]}
codecs:
  - {name: plain, encoder: libx264}
  - {name: v, encoder: libx264, vqp: true, model: a.pt, anchors: [plain]}
""")
    (tmp_path / "v.yaml").write_text("""
base: b.yaml
codecs:
  - {name: v, model: b.pt}
  - {name: w, encoder: libx264, vqp: true, anchors: [plain]}
""")
    cfg = harness.load_config(tmp_path / "v.yaml")
    assert cfg.name == "v" and cfg.out.name == "v"
    assert cfg.datasets == [{"kind": "clips", "only": ["akiyo_cif"], "frames": 6}]
    assert [(c.name, c.model, c.anchors, c.grid) for c in cfg.codecs] == [
        ("plain", None, (), (30, 44)), ("v", "b.pt", ("plain",), (30, 44)), ("w", None, ("plain",), (30, 44))]
    assert harness.load_config(tmp_path / "b.yaml").codecs[1].model == "a.pt"
    (tmp_path / "d.yaml").write_text("datasets: [{kind: kodak}]\ncodecs: [{name: a, encoder: pillow, grid: [1]}, "
                                     "{name: a, encoder: jpegli, grid: [1]}]\n")
    (tmp_path / "v.yaml").write_text("base: d.yaml\n")
    with pytest.raises(VqpError, match="codec names must be unique"):  # as when loading the base itself
        harness.load_config(tmp_path / "v.yaml")
    (tmp_path / "l.yaml").write_text("- 1\n")
    (tmp_path / "v.yaml").write_text("base: l.yaml\n")
    with pytest.raises(VqpError, match="a base config must be a mapping"):
        harness.load_config(tmp_path / "v.yaml")


def test_missing_config(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_clip_points(tmp_path):
    """Clips: a lossless excerpt is encoded by vqp.video, decoded with PyAV and measured per frame."""
    p = tmp_path / "clip.yaml"
    p.write_text("""
datasets:
  - {name: clips, kind: clips, only: [akiyo_cif], frames: 6, every: 3}
grid:
  video: [30, 44]
codecs:
  - {name: x264, encoder: libx264}
  - {name: vqp+x264, encoder: libx264, vqp: true, anchors: [x264]}
""")
    cfg = harness.load_config(p, tmp_path / "run")
    runner = harness.Runner(cfg, progress=False)
    recs = runner.run()
    assert len(recs) == 4 and {r["group"] for r in recs} == {"clips/akiyo_cif"}
    for r in recs:
        assert r["frames"] == 6 and r["kbps"] == pytest.approx(r["bytes"] * 8 / (6 / 25) / 1000)
        assert 20 < r["psnr_full"] < 60 and 0 < r["msssim_obj_det"] <= 1
    plain = {r["value"]: r for r in recs if r["codec"] == "x264"}
    assert plain[30]["bytes"] > plain[44]["bytes"] and plain[30]["psnr_full"] > plain[44]["psnr_full"]
    rows = harness.summarize(recs, runner.gt)
    bd = harness.bd_rates(rows, cfg.codecs)
    assert [b["psnr_full"] for b in bd] == [None, None]  # 2 points per curve: no BD-rate, not a made-up one


def test_compare_counts_groups_and_ties(tmp_path, capsys):
    from benchmarks import compare

    cols = ["group", "codec", "anchor", *compare.METRICS]
    rows = [["fog/a", "orig", "x264", "-10", "-5", "", "1"], ["fog/a", "rep", "x264", "-20", "-4.97", "", "2"],
            ["fog/b", "orig", "x264", "5", "", "-1", "0"], ["fog/b", "rep", "x264", "-5", "-3", "-2", "-1"],
            ["fog (mean)", "orig", "x264", "0", "0", "0", "0"], ["fog (mean)", "rep", "x264", "-99", "-99", "-99", "-99"],
            ["fog/a", "rep", "orig", "-9", "-9", "-9", "-9"]]
    with open(tmp_path / "bdrate.csv", "w", newline="") as f:
        csv.writer(f).writerows([cols, *rows])
    assert compare.main([str(tmp_path), "orig", "rep"]) == 0
    out = capsys.readouterr().out
    assert "| fog/a | -10.0 / -20.0 ✓ | -5.0 / -5.0 | n/a / n/a | +1.0 / +2.0 |" in out  # -4.97: a tie
    assert "| psnr_obj_det | 2/2 | -2.5 -> -12.5 | -10.0 |" in out
    assert "| msssim_obj_det | 0/1 |" in out and "| psnr_obj_det_input | 1/1 |" in out and "(mean)" not in out
    assert compare.main([str(tmp_path), "orig", "nope"]) == 0 and "nope better" in capsys.readouterr().out
    assert compare.main([str(tmp_path), "orig", "rep", "--anchor", "x265"]) == 2
    assert "no per-group rows for orig and rep against x265" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "missing"), "orig", "rep"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_block_swap_takes_one_block_and_prints_scores(capsys):
    """benchmarks.block_swap: each swapped model differs from the original in its one block only;
    swapping in blocks of an identical checkpoint leaves every score as the original's."""
    from benchmarks import block_swap
    from vqp.repair.robustness import load_model

    orig = load_model(None)[0]
    rep = copy.deepcopy(orig)
    for p in rep.parameters():
        p.data.add_(1.0)
    models = block_swap.swapped(orig, rep, [0, 4])
    assert list(models) == ["original", "repaired", "block 0", "block 4"]
    for k, m in enumerate(models["block 4"].model):
        src = rep if k == 4 else orig
        assert all(torch.equal(a, b) for a, b in zip(m.parameters(), src.model[k].parameters()))
    with pytest.raises(VqpError, match="block 99 is out of range"):
        block_swap.swapped(orig, rep, [99])

    assert block_swap.main([str(MODELS / "yolo11n_coco_dq.pt"), "--blocks", "0,1", "--corruptions", "saturate",
                            "--imgsz", "160", "--limit", "3", "--threads", "1"]) == 0
    rows = [r.split("|")[2:4] for r in capsys.readouterr().out.splitlines()[2:]]
    assert len(rows) == 4 and len(set(map(tuple, rows))) == 1
    assert block_swap.main(["nope.pt", "--blocks", "0"]) == 2
    assert capsys.readouterr().err.startswith("block_swap: error:")


def test_blend_scores_the_blends_between_the_two_checkpoints(capsys, tmp_path):
    """benchmarks.blend: one row per model; blending a checkpoint with itself changes no score."""
    from benchmarks import blend

    ckpt = str(MODELS / "yolo11n_coco_dq.pt")
    assert blend.main([ckpt, "--alphas", "0.5", "--corruptions", "fog", "--imgsz", "160", "--limit", "3",
                       "--threads", "1"]) == 0
    rows = [r.split("|")[1:-1] for r in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0].strip() for r in rows] == ["original", "repaired", "blend 0.5"]
    assert len({tuple(r[1:]) for r in rows}) == 1
    assert blend.main([ckpt, "--alphas", "2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert blend.main(["nope.pt", "--alphas", "0.5"]) == 2
    assert capsys.readouterr().err.startswith("blend: error:")
    assert blend.main([ckpt, "--alphas", "0.5,1", "--save", str(tmp_path / "b.pt")]) == 2
    assert "one alpha" in capsys.readouterr().err and not (tmp_path / "b.pt").exists()
    assert blend.main([ckpt, "--alphas", "0.5", "--save", str(tmp_path / "b.pt")]) == 0
    from vqp.detect import load_detector

    assert load_detector(str(tmp_path / "b.pt")).source == str(tmp_path / "b.pt")


def test_the_halves_are_the_repair_split_and_do_not_overlap():
    """--half repair scores the images vqp repair trains on, --half eval (the default) the others."""
    from benchmarks.checkpoints import coco_half
    from vqp.cli.repair import DEFAULT_DATA
    from vqp.repair.robustness import load_yolo, split

    ev, rep = coco_half(160, 64), coco_half(160, 5, "repair")
    assert [s.name for s in rep] == [s.name for s in split(load_yolo(DEFAULT_DATA, 160), "repair")[:5]]
    assert len(ev) == 64 and not {s.name for s in ev} & {s.name for s in rep}


def test_paired_bootstrap_brackets_the_change_and_counts_the_losing_draws(capsys):
    """benchmarks.paired: identical predictions change nothing in any draw; dropping the detections
    on one image of five is a loss on every draw that contains it, and the interval covers it."""
    import numpy as np

    from benchmarks import paired
    from vqp.repair.robustness import Sample

    boxes = np.array([[10, 10, 50, 50], [60, 20, 90, 70]], np.float32)
    samples = [Sample(str(i), np.zeros((100, 100, 3), np.uint8), boxes, np.array([0, 1])) for i in range(5)]
    hit = [np.array([[10, 10, 50, 50, 0.9, 0], [60, 20, 90, 70, 0.8, 1]], np.float32)] * 5
    same = paired.paired({"original": hit, "repaired": hit}, samples, 2, draws=20)
    assert same == {"original": 1.0, "delta": 0.0, "p5": 0.0, "p95": 0.0, "loses": 0.0}
    worse = paired.paired({"original": hit, "repaired": hit[:4] + [np.zeros((0, 6), np.float32)]}, samples, 2, draws=50)
    assert worse["delta"] < 0 and worse["p5"] <= worse["delta"] <= worse["p95"] <= 0
    assert 0.6 < worse["loses"] < 1  # a draw without the last image (about 1 in 3) loses nothing

    ckpt = str(MODELS / "yolo11n_coco_dq.pt")
    assert paired.main([ckpt, "--corruptions", "saturate", "--imgsz", "160", "--limit", "3", "--draws", "5",
                        "--threads", "1"]) == 0
    rows = [r.split("|")[1:-1] for r in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0].strip() for r in rows] == ["clean", "saturate"]
    assert all(r[3].strip() == "+0.0" and r[5].strip() == "0 %" for r in rows)
    assert paired.main([ckpt, "--corruptions", "rain"]) == 2
    assert "unknown corruption 'rain'" in capsys.readouterr().err
    assert paired.main([ckpt, "--draws", "0"]) == 2
    assert "draws must be at least 1, got 0" in capsys.readouterr().err
    assert paired.main(["nope.pt"]) == 2
    assert capsys.readouterr().err.startswith("paired: error:")


def test_merge_follows_the_fisher_trims_and_sums_task_vectors(capsys):
    """benchmarks.merge: a Fisher merge takes each weight from the model whose Fisher is larger,
    a trim keeps only the largest changes, a sum adds the changes; merging a checkpoint with
    itself, any way, changes no score."""
    from benchmarks import merge
    from vqp.repair.robustness import load_model

    orig = load_model(None)[0]
    rep = copy.deepcopy(orig)
    gen = torch.Generator().manual_seed(0)
    for p in rep.parameters():
        p.data.add_(torch.randn(p.shape, generator=gen) * 0.01)
    zero = {n: torch.zeros_like(p) for n, p in orig.named_parameters()}
    one = {n: torch.ones_like(p) for n, p in orig.named_parameters()}
    pairs = lambda m: zip(m.parameters(), orig.parameters(), rep.parameters())  # noqa: E731
    assert all(torch.equal(m, r) for m, _, r in pairs(merge.fisher_merge(orig, rep, zero, one, 0.5)))
    assert all(torch.allclose(m, o) for m, o, _ in pairs(merge.fisher_merge(orig, rep, one, zero, 0.5)))
    assert all(torch.allclose(m, (o + r) / 2) for m, o, r in pairs(merge.fisher_merge(orig, rep, zero, zero, 0.5)))
    assert all(torch.equal(m, r) for m, _, r in pairs(merge.trim(orig, rep, 1.0)))
    for m, o, r in pairs(merge.trim(orig, rep, 0.25)):
        kept = m != o
        assert int(kept.sum()) == math.ceil(0.25 * o.numel()) and torch.equal(m[kept], r[kept])
        if not kept.all():
            assert (r - o).abs()[kept].min() >= (r - o).abs()[~kept].max()
    assert all(torch.allclose(m, r, atol=1e-6) for m, _, r in pairs(merge.task_sum(orig, [rep, rep], [0.5, 0.5])))
    with pytest.raises(VqpError, match="between 0 and 1"):
        merge.fisher_merge(orig, rep, zero, one, 2)
    other = copy.deepcopy(orig)
    other.model[0].conv = torch.nn.Conv2d(3, 8, 3)
    for make in (lambda: merge.fisher_merge(orig, other, zero, one, 0.5), lambda: merge.trim(orig, other, 0.5),
                 lambda: merge.task_sum(orig, [rep, other], [0.5, 0.5])):
        with pytest.raises(VqpError, match="different architectures"):
            make()

    ckpt = str(MODELS / "yolo11n_coco_dq.pt")
    assert merge.main([ckpt, "--fisher", "0.5", "--fisher-images", "2", "--trim", "0.5", "--other", ckpt,
                       "--sums", "0.5/0.5", "--corruptions", "fog", "--imgsz", "160", "--limit", "3",
                       "--threads", "1"]) == 0
    rows = [r.split("|")[1:-1] for r in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0].strip() for r in rows] == ["original", "repaired", "fisher 0.5", "trim 0.5", "sum 0.5/0.5"]
    assert len({tuple(r[1:]) for r in rows}) == 1
    assert merge.main([ckpt, "--sums", "0.5/0.5"]) == 2
    assert "needs --other" in capsys.readouterr().err
    assert merge.main([ckpt, "--trim", "0"]) == 2
    assert capsys.readouterr().err.startswith("merge: error: --trim must be above 0")
    assert merge.main([ckpt, "--fisher", "1.5", "--fisher-images", "2"]) == 2
    assert capsys.readouterr().err.startswith("merge: error: --fisher must be between 0 and 1")
