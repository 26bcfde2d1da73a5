"""Robustness benchmark and repair: metric arithmetic, degradations, block ranking, frozen blocks, CLI."""
import copy
import json

import numpy as np
import pytest
import torch

from conftest import DATA, MODELS
from vqp.cli import main
from vqp.errors import VqpError
from vqp.repair import corruptions as C
from vqp.repair.augment import HSV_GAINS, Policy, augmix, fda, jitter
from vqp.repair.finetune import blend, feature_gap, finetune, neck, pseudo_labels, save_checkpoint
from vqp.repair.localize import rank_blocks, top_k
from vqp.repair.robustness import Sample, load_model, load_yolo, mpc, rpc, score, split, to_tensor

MODEL = str(MODELS / "yolo11n_coco_dq.pt")
COCO = DATA / "coco"
IMGSZ = 160


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)[0]


@pytest.fixture(scope="module")
def samples():
    return load_yolo(COCO, IMGSZ, limit=4)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A 4-image YOLO-layout set: symlinks to coco128 images and labels."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for f in sorted((COCO / "images" / "train2017").glob("*.jpg"))[:4]:
        (root / "images" / f.name).symlink_to(f)
        lab = COCO / "labels" / "train2017" / (f.stem + ".txt")
        if lab.exists():
            (root / "labels" / lab.name).symlink_to(lab)
    return root


def test_mpc_rpc_arithmetic():
    cells = {"fog": {1: 0.4, 3: 0.2}, "noise": {1: 0.3, 3: 0.1}}
    assert mpc(cells) == pytest.approx(0.25)
    assert rpc(0.5, cells) == pytest.approx(0.5)


def test_score_perfect_and_empty(samples):
    s = [x for x in samples if len(x.cls)][:2]
    perfect = [np.concatenate([x.boxes, np.ones((len(x.cls), 1)), x.cls[:, None]], 1).astype(np.float32) for x in s]
    assert score(perfect, s, 80)["map"] == pytest.approx(1.0, abs=0.01)
    assert score([np.zeros((0, 6), np.float32)] * len(s), s, 80)["map"] == 0.0


def test_split_is_disjoint_and_by_id():
    fake = [Sample(f"{i:03d}", np.zeros((8, 8, 3), np.uint8)) for i in (5, 1, 4, 2, 3, 0)]
    rep, ev = split(fake, "repair"), split(fake, "eval")
    assert [s.name for s in rep] == ["000", "001", "002"] and [s.name for s in ev] == ["003", "004", "005"]


def test_degradations_shape_seed_and_codecs(samples):
    rgb = samples[0].rgb
    for name in ("gaussian_noise", "speckle_noise", "jpeg_low", "h264"):
        out = C.degrade(rgb, name, 3, seed=1)
        assert out.shape == rgb.shape and out.dtype == np.uint8 and not np.array_equal(out, rgb)
    assert np.array_equal(C.degrade(rgb, "shot_noise", 2, seed=7), C.degrade(rgb, "shot_noise", 2, seed=7))
    from vqp.types import Box, Detections

    h, w = rgb.shape[:2]
    none = C.degrade(rgb, "vqp_background", 5, detections=Detections([], h, w))
    assert np.array_equal(none, rgb)  # no detection: vqp passes the frame through
    obj = C.degrade(rgb, "vqp_background", 5, detections=Detections([Box(0, 0, 64, 64, 0.9, 0, "person")], h, w))
    assert np.array_equal(obj[:64, :64], rgb[:64, :64]) and not np.array_equal(obj, rgb)
    with pytest.raises(VqpError):
        C.check(["fog", "nope"], [1])
    with pytest.raises(VqpError):
        C.check(["fog"], [6])


def test_policy_follows_failures_and_fda_keeps_layout():
    p = Policy.from_failures(0.5, {"fog": {3: 0.45}, "gaussian_noise": {3: 0.05}}, floor=0.0, p_clean=1.0)
    w = dict(zip(p.choices, p.weights))
    assert w[("gaussian_noise", 3)] == pytest.approx(0.9) and w[("fog", 3)] == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    out = fda(a, np.full((32, 32, 3), 200, np.uint8))
    assert out.shape == a.shape and abs(float(out.mean()) - 200) < abs(float(a.mean()) - 200)
    s = Sample("x", a, np.array([[10, 5, 30, 20]], np.float32), np.array([0]))
    flips = [p(s, np.random.default_rng(i)) for i in range(8)]  # p_clean=1: only the flip applies
    assert {tuple(f.boxes[0]) for f in flips} == {(10, 5, 30, 20), (50, 5, 70, 20)}


def test_clusters_count_and_sampling_follows_failure_mass(model, samples):
    from vqp.repair.cluster import describe, embed, kmeans
    from vqp.repair.robustness import Failure

    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.1, (5, 4)) for c in (0.0, 5.0, 10.0)])
    labels = kmeans(blobs, 3)
    assert len(set(labels)) == 3 and all(len(set(labels[i:i + 5])) == 1 for i in (0, 5, 10))
    assert len(set(kmeans(blobs[:2], 5))) == 2  # never more clusters than samples
    emb = embed(model, [s.rgb for s in samples[:3]], IMGSZ)
    assert emb.shape[0] == 3 and np.isfinite(emb).all()
    img = np.zeros((8, 8, 3), np.uint8)
    fails = [Failure("a", "fog", 3, 6, img), Failure("b", "fog", 3, 3, img), Failure("c", "gaussian_noise", 5, 1, img)]
    lab = np.array([0, 0, 1])
    p = Policy.from_failures(0.5, {"fog": {3: 0.4}}, fails, lab)
    assert p.group_weights == pytest.approx([0.9, 0.1])
    picks = np.array([p.pick(rng) for _ in range(4000)])
    assert (picks == 2).mean() == pytest.approx(0.1, abs=0.02)  # cluster share = its share of the objects lost
    rows = describe(fails, lab)
    assert [r["missed"] for r in rows] == [9, 1] and rows[0]["degradations"] == {"fog s3": 2}


def test_block_ranking_covers_all_blocks(model, samples):
    clean = [s.rgb for s in samples[:2]]
    bad = [C.degrade(x, "gaussian_noise", 5) for x in clean]
    rows = rank_blocks(model, clean, bad, pseudo_labels(model, samples[:2], IMGSZ), IMGSZ)
    assert [r["index"] for r in rows] == list(range(len(model.model)))
    ranked = [r for r in rows if "rank" in r]
    assert len(ranked) == sum(1 for m in model.model if any(True for _ in m.parameters()))
    assert sorted(r["rank"] for r in ranked) == list(range(1, len(ranked) + 1))
    assert all(r["drift"] > 0 for r in rows[:3])
    assert len(top_k(rows, 3)) == 3


def test_topk_finetune_freezes_the_rest_and_checkpoint_loads(model, samples, tmp_path, bus_path):
    train = pseudo_labels(model, samples, IMGSZ)
    policy = Policy.from_failures(0.5, {"gaussian_noise": {1: 0.3}})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, losses = finetune(model, train, policy, blocks=[0, 2], steps=2, imgsz=IMGSZ, batch=2, lr=1e-3)
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = tuned.state_dict()
    for k, v in before.items():
        block = int(k.split(".")[1])
        if block in (0, 2):
            continue
        assert torch.equal(after[k], v), f"frozen {k} changed"
    assert not torch.equal(after["model.0.conv.weight"], before["model.0.conv.weight"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the original is untouched
    dest = tmp_path / "repaired.pt"
    save_checkpoint(tuned, MODEL, dest, {"blocks": [0, 2]})
    from vqp.detect import load_detector
    from vqp.imageio import load_image

    det = load_detector(str(dest))
    assert any(b.name == "person" for b in det([load_image(bus_path).rgb])[0].boxes)


def test_blend_interpolates_every_weight_and_refuses_other_architectures(model):
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    a, b = model.state_dict(), tuned.state_dict()
    for alpha, want in ((0.0, a), (1.0, b)):
        got = blend(model, tuned, alpha).state_dict()
        assert all(torch.allclose(got[k].float(), want[k].float()) for k in a)
    half = blend(model, tuned, 0.25).state_dict()
    w = "model.0.conv.weight"
    assert torch.allclose(half[w], a[w] + 0.25) and half[w].dtype == a[w].dtype
    assert torch.equal(model.state_dict()[w], a[w])  # the inputs are untouched
    other = copy.deepcopy(model)
    other.model[0].conv = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(VqpError, match="different architectures"):
        blend(model, other, 0.5)
    with pytest.raises(VqpError, match="between 0 and 1"):
        blend(model, tuned, 1.5)


def test_augmix_changes_tones_only_and_the_teacher_sees_the_image_before_it(samples):
    """augmix is seeded, keeps the shape and the layout (it is a mix with the image), and changes
    the pixels; with mix = 1 every training image is mixed while Policy.pair's clean image (the
    teacher's input) is not, and with mix = 0 the stream is the old one."""
    rgb = np.ascontiguousarray(samples[0].rgb)
    out = augmix(rgb, np.random.default_rng(1))
    assert out.shape == rgb.shape and out.dtype == np.uint8 and not np.array_equal(out, rgb)
    assert np.array_equal(out, augmix(rgb, np.random.default_rng(1)))
    g = lambda x: x.astype(np.float64).mean(2)  # noqa: E731
    assert np.corrcoef(g(out).ravel(), g(rgb).ravel())[0, 1] > 0.5

    mixed = Policy.from_failures(0.5, {"fog": {3: 0.3}}, floor=0.0, p_clean=1.0, mix=1.0)
    off = Policy.from_failures(0.5, {"fog": {3: 0.3}}, floor=0.0, p_clean=1.0)
    for i in range(4):
        clean, d = mixed.pair(samples[0], np.random.default_rng(i))
        assert (np.array_equal(clean, rgb) or np.array_equal(clean, rgb[:, ::-1])) and not np.array_equal(clean, d.rgb)
        clean, d = off.pair(samples[0], np.random.default_rng(i))
        assert np.array_equal(clean, d.rgb)


def test_colour_jitter_is_ultralytics_hsv_and_the_teacher_sees_it(samples, monkeypatch):
    """jitter equals Ultralytics' RandomHSV for the gains our generator draws; with colour > 0 the
    clean image of Policy.pair (the teacher's input) is the jittered one, with colour 0 the
    stream is the old one."""
    import cv2
    from ultralytics.data.augment import RandomHSV

    rgb = np.ascontiguousarray(samples[0].rgb)
    gains = np.random.default_rng(3).uniform(-1, 1, 3)
    monkeypatch.setattr(np.random, "uniform", lambda *a, **k: gains.copy())
    ref = RandomHSV(*HSV_GAINS).apply_image({"img": cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)})["img"]
    out = jitter(rgb, np.random.default_rng(3))
    assert np.array_equal(out, cv2.cvtColor(ref, cv2.COLOR_BGR2RGB)) and not np.array_equal(out, rgb)
    monkeypatch.undo()

    jit = Policy.from_failures(0.5, {"fog": {3: 0.3}}, floor=0.0, p_clean=1.0, colour=1.0)
    off = Policy.from_failures(0.5, {"fog": {3: 0.3}}, floor=0.0, p_clean=1.0)
    for i in range(4):
        clean, d = jit.pair(samples[0], np.random.default_rng(i))
        assert np.array_equal(clean, d.rgb) and not np.array_equal(clean, samples[0].rgb[:, ::-1]) \
            and not np.array_equal(clean, samples[0].rgb)
        clean, d = off.pair(samples[0], np.random.default_rng(i))
        assert np.array_equal(clean, d.rgb) and (np.array_equal(clean, samples[0].rgb)
                                                 or np.array_equal(clean, samples[0].rgb[:, ::-1]))


def test_scale_downscales_the_image_and_its_boxes_alike(samples):
    """With scale > 0 the teacher's image and the training image are one downscaled view, boxes
    shrunk by the same factor within [1 - scale, 1]; with scale 0 the stream is the old one."""
    s = next(x for x in samples if len(x.boxes))
    h, w = s.rgb.shape[:2]
    small = Policy.from_failures(0.5, {"fog": {3: 0.3}}, floor=0.0, p_clean=1.0, scale=0.5)
    off = Policy.from_failures(0.5, {"fog": {3: 0.3}}, floor=0.0, p_clean=1.0)
    sizes = set()
    for i in range(6):
        clean, d = small.pair(s, np.random.default_rng(i))
        f = d.rgb.shape[1] / w
        assert np.array_equal(clean, d.rgb) and 0.49 <= f <= 1 and d.rgb.shape[0] == pytest.approx(h * f, abs=1)
        widths = d.boxes[:, 2] - d.boxes[:, 0]
        assert widths == pytest.approx(f * (s.boxes[:, 2] - s.boxes[:, 0]), rel=0.02, abs=0.5)
        sizes.add(d.rgb.shape)
        clean, d = off.pair(s, np.random.default_rng(i))
        assert d.rgb.shape == s.rgb.shape
    assert len(sizes) > 2


def test_distillation_pairs_the_clean_image_and_pulls_features_toward_the_original(model, samples):
    """Policy.pair gives the clean image flipped like the degraded sample; fine-tuning with the
    original as teacher (and a weight that drowns the box loss) closes the feature gap between
    the model on degraded images and the original on the clean ones."""
    p = Policy.from_failures(0.5, {"contrast": {3: 0.3}}, floor=0.0, p_clean=0.0)
    for i in range(6):
        clean, d = p.pair(samples[0], np.random.default_rng(i))
        assert np.array_equal(C.degrade(np.ascontiguousarray(clean), "contrast", 3, seed=0), d.rgb)
    batch = [p.pair(s, np.random.default_rng(0)) for s in samples]

    def feats(m, images):
        with torch.no_grad(), neck(m) as f:
            m(to_tensor(images, IMGSZ))
        return f[0]

    goal = feats(model, [c for c, _ in batch])
    assert float(feature_gap(goal, goal)) == 0.0

    def gap(m):
        return float(feature_gap(feats(m, [s.rgb for _, s in batch]), goal))

    train = pseudo_labels(model, samples, IMGSZ)
    tuned, _ = finetune(model, train, p, blocks=[0, 1, 2], steps=4, imgsz=IMGSZ, batch=4, lr=1e-3, distill=100.0)
    plain, _ = finetune(model, train, p, blocks=[0, 1, 2], steps=4, imgsz=IMGSZ, batch=4, lr=1e-3)
    assert gap(tuned) < 0.8 * gap(model) and gap(tuned) < gap(plain)


def test_without_labels_only_the_feature_gap_trains(model, samples):
    """With the pseudo-label loss off, clean samples against the original as teacher give no loss
    (the features agree to rounding), where the same steps with the labels on do."""
    p = Policy.from_failures(0.5, {"contrast": {3: 0.3}}, floor=0.0, p_clean=1.0)
    train = pseudo_labels(model, samples, IMGSZ)
    assert sum(len(s.boxes) for s in train)
    kw = dict(blocks=[0, 1], steps=2, imgsz=IMGSZ, batch=4, lr=1e-3, distill=1.0)
    _, quiet = finetune(model, train, p, labels=0.0, **kw)
    _, loud = finetune(model, train, p, **kw)
    assert quiet[0] == 0.0 and max(quiet) < 1e-6 < min(loud)


def test_low_rank_repair_changes_the_tuned_blocks_by_that_rank(model, samples):
    """--rank: the same first loss as tuning the weights (the change starts at zero), a plain
    network afterwards, and each tuned convolution changed by a matrix of at most that rank."""
    p = Policy.from_failures(0.5, {"contrast": {3: 0.3}}, floor=0.0, p_clean=0.0)
    train = pseudo_labels(model, samples, IMGSZ)
    kw = dict(blocks=[1, 4], steps=3, imgsz=IMGSZ, batch=4, lr=1e-2, distill=1.0)
    tuned, losses = finetune(model, train, p, rank=2, **kw)
    _, plain = finetune(model, train, p, **kw)
    assert losses[0] == pytest.approx(plain[0], rel=1e-5)
    a, b = model.state_dict(), tuned.state_dict()
    assert a.keys() == b.keys() and not any(p.requires_grad for p in tuned.parameters())
    changed = {k for k in a if not torch.equal(a[k].float(), b[k])}
    convs = {f"model.{i}.{n}.weight" for i in (1, 4) for n, m in model.model[i].named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    assert changed == convs  # not BatchNorm, not another block
    for k in convs:
        d = (b[k] - a[k].float()).flatten(1)
        assert torch.linalg.matrix_rank(d) <= 2 < min(d.shape)


def test_cli_robustness_and_errors(tiny_set, tmp_path, capsys):
    out = tmp_path / "rb"
    rc = main(["robustness", str(tiny_set), "--model", MODEL, "--imgsz", str(IMGSZ), "--corruptions", "fog",
               "--held-out", "", "--codecs", "jpeg_low", "--severities", "2", "-o", str(out), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["images"] == 4 and 0 < rep["clean_map"] <= 1 and 0 <= rep["rpc_common"]
    assert rep["mpc_common"] == pytest.approx(rep["cells"]["common"]["fog"]["2"], abs=1e-4)
    assert (out / "robustness.png").stat().st_size > 1000
    assert main(["robustness", str(tiny_set), "--severities", "7"]) == 2
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "r"), "--corruptions", "spatter"]) == 2
    assert "held-out corruption spatter" in capsys.readouterr().err
    assert main(["robustness", str(tmp_path / "missing")]) == 2
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "r"), "--model", MODEL, "--imgsz", str(IMGSZ),
                 "--corruptions", "fog", "--held-out", "", "--codecs", "", "--severities", "1", "--blocks", "11"]) == 2
    assert "block 11 has no parameters" in capsys.readouterr().err
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "d"), "--distill", "-1"]) == 2
    assert "distill must be 0 or more" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "l"), "--labels", "-1"]) == 2
    assert "labels must be 0 or more" in capsys.readouterr().err and not (tmp_path / "l").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "l"), "--labels", "0", "--distill", "0"]) == 2
    assert "labels and distill cannot both be 0" in capsys.readouterr().err and not (tmp_path / "l").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "c"), "--colour", "2"]) == 2
    assert "colour must be between 0 and 1.4" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "m"), "--augmix", "1.5"]) == 2
    assert "augmix must be between 0 and 1" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "b"), "--blend", "0.5"]) == 2
    assert "blend needs --no-search" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "b"), "--blend", "0", "--no-search"]) == 2
    assert "blend must be above 0" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "k"), "--rank", "4"]) == 2
    assert "rank needs --no-search" in capsys.readouterr().err and not (tmp_path / "k").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "k"), "--scale", "1"]) == 2
    assert "scale must be at least 0 and below 1" in capsys.readouterr().err and not (tmp_path / "k").exists()
    assert main(["repair", str(tiny_set), "-o", str(tmp_path / "k"), "--rank", "-1", "--no-search"]) == 2
    assert "rank must be 0 or more" in capsys.readouterr().err and not (tmp_path / "k").exists()


def test_cli_repair_end_to_end(tiny_set, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["repair", str(tiny_set), "-o", str(out), "--model", MODEL, "--imgsz", str(IMGSZ), "--corruptions",
               "gaussian_noise", "--held-out", "spatter", "--codecs", "", "--severities", "3", "--steps", "1",
               "--batch", "2", "--top-k", "2", "--distill", "1", "--colour", "0.5", "--augmix", "0.5",
               "--unlabelled", str(tiny_set / "images"), str(DATA / "kodak" / "kodim01.png"), "--device", "cpu"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert not set(rep["split"]["repair"]) & set(rep["split"]["eval"])
    assert rep["split"]["unlabelled"] == 1  # the labelled set's own images are left out, Kodak is in
    assert set(rep["results"]) == {"original", "block", "search", "whole"} and len(rep["top_k"]) == 2
    assert rep["saved"] == "search" and {a["chosen"] for a in rep["architecture"]} <= {"original", "bn", "se", "conv1x1"}
    assert rep["tuned_blocks"] == rep["top_k"] and rep["budget"]["distill"] == 1.0 and rep["budget"]["colour"] == 0.5
    assert rep["budget"]["augmix"] == 0.5
    assert rep["budget"]["trainable_params"]["block"] < rep["budget"]["trainable_params"]["whole"]
    assert {"mpc_common", "rpc_common", "mpc_held_out", "clean_map"} <= set(rep["results"]["block"])
    assert (out / "heatmap.png").exists() and (out / "blocks.png").exists()
    assert len(list((out / "failures").glob("*.png"))) == len({tuple(f.values()) for f in rep["failure_analysis"]["samples"]})
    cl = rep["failure_analysis"]["clusters"]
    assert cl and sum(c["size"] for c in cl) == len(rep["failure_analysis"]["samples"])
    assert all((out / c["thumbnails"]).stat().st_size > 100 for c in cl)
    capsys.readouterr()
    assert main(["image", str(tiny_set / "images" / "000000000009.jpg"), str(tmp_path / "o.jpg"),
                 "--model", str(out / "repaired.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detections"]
    assert main(["detect", str(tiny_set / "images" / "000000000009.jpg"), "--model", str(out / "repaired.pt"),
                 "--imgsz", str(IMGSZ)]) == 0 and capsys.readouterr().out.strip()


def test_cli_repair_blend_saves_the_blend_of_the_tuned_weights(tiny_set, tmp_path, capsys):
    """--blend A saves original + A x (tuned - original): two seeded runs, A = 1 and A = 0.5."""
    base = ["repair", str(tiny_set), "--model", MODEL, "--imgsz", str(IMGSZ), "--corruptions", "gaussian_noise",
            "--held-out", "", "--codecs", "", "--severities", "3", "--steps", "1", "--batch", "2", "--blocks", "2",
            "--no-search", "--no-compare", "--analysis-limit", "2", "--device", "cpu"]
    assert main(base + ["-o", str(tmp_path / "full")]) == 0
    assert main(base + ["-o", str(tmp_path / "half"), "--blend", "0.5"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "half" / "report.json").read_text())["budget"]["blend"] == 0.5
    orig = load_model(MODEL)[0].state_dict()
    full, half = (load_model(str(tmp_path / d / "repaired.pt"))[0].state_dict() for d in ("full", "half"))
    w = "model.2.cv1.conv.weight"
    assert not torch.equal(full[w], orig[w])
    # the checkpoints are fp16, so the midpoint holds to fp16 rounding
    assert torch.allclose(half[w], (orig[w] + full[w]) / 2, atol=2e-3)
    assert all(torch.equal(half[k], orig[k]) for k in orig if not k.startswith("model.2."))


def test_cli_repair_rank_and_scale_reach_the_tuning(tiny_set, tmp_path, capsys):
    """--rank and --scale go through Settings to the tuning: the report records them and the
    number of low-rank factors trained, and the checkpoint changes only the tuned block's
    convolution weights (its BatchNorm, which a weight tuning also trains, stays)."""
    from vqp.repair.finetune import low_rank_size

    out = tmp_path / "k"
    assert main(["repair", str(tiny_set), "--model", MODEL, "--imgsz", str(IMGSZ), "--corruptions", "gaussian_noise",
                 "--held-out", "", "--codecs", "", "--severities", "3", "--steps", "2", "--batch", "2", "--blocks", "2",
                 "--no-search", "--no-compare", "--analysis-limit", "2", "--device", "cpu", "--lr", "1e-2",
                 "--rank", "2", "--scale", "0.3", "-o", str(out)]) == 0
    capsys.readouterr()
    budget = json.loads((out / "report.json").read_text())["budget"]
    orig_model = load_model(MODEL)[0]
    assert budget["rank"] == 2 and budget["scale"] == 0.3
    assert budget["trainable_params"]["block"] == low_rank_size(orig_model.float(), {2}, 2) < 1000
    orig, got = orig_model.state_dict(), load_model(str(out / "repaired.pt"))[0].state_dict()
    changed = {k for k in orig if not torch.equal(orig[k].half(), got[k])}
    assert changed and all(k.startswith("model.2.") and k.endswith("conv.weight") for k in changed)


def test_unlabelled_images_and_video_frames(tmp_path, samples):
    import av
    from PIL import Image

    from vqp.repair.pipeline import load_unlabelled

    Image.fromarray(samples[0].rgb).save(tmp_path / "a.png")
    with av.open(str(tmp_path / "clip.mp4"), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(6):
            frame = np.full((64, 96, 3), 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    got = load_unlabelled([str(tmp_path)], IMGSZ, frame_step=3)
    assert sorted(s.name for s in got) == ["a", "clip#0", "clip#3"]
    assert all(max(s.rgb.shape[:2]) <= IMGSZ and not len(s.cls) for s in got)
    assert [s.name for s in load_unlabelled([str(tmp_path / "clip.mp4")], IMGSZ, frame_step=1, limit=3)] == \
        ["clip#0", "clip#2", "clip#5"]  # evenly spaced over every frame
    assert "a" not in {s.name for s in load_unlabelled([str(tmp_path)], IMGSZ, 3, exclude=["a"])}
    with pytest.raises(VqpError):
        load_unlabelled([str(tmp_path / "missing")], IMGSZ, 3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VqpError):
        load_unlabelled([str(tmp_path / "bad.png")], IMGSZ, 3)


def test_repair_follows_the_model_device(tmp_path, capsys):
    """No CPU pin: the model lands on the device asked for and inputs and targets follow it."""
    from vqp.repair.finetune import targets
    from vqp.repair.robustness import device_of, resolve_device, to_tensor

    m, _ = load_model(MODEL, device=torch.device("meta"))  # a device that is not the CPU, available everywhere
    assert device_of(m).type == "meta" and all(p.device.type == "meta" for p in m.parameters())
    x = to_tensor([np.zeros((8, 8, 3), np.uint8)], 32, device_of(m))
    assert x.device.type == "meta" and x.shape == (1, 3, 32, 32)
    t = targets([Sample("a", np.zeros((8, 8, 3), np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([1]))],
                32, "meta")
    assert {v.device.type for v in t.values()} == {"meta"}
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(VqpError, match="CUDA"):
            resolve_device("cuda")
        assert main(["robustness", str(tmp_path), "--device", "cuda"]) == 2
        assert "CUDA" in capsys.readouterr().err


def test_relaxed_block_matches_original_and_discretised_checkpoint_loads(model, samples, tmp_path, bus_path, capsys):
    from ultralytics import YOLO

    from vqp.repair.archsearch import CANDIDATES, Relaxed, discretise, output_stats, relax, search
    from vqp.repair.robustness import to_tensor

    x = to_tensor([s.rgb for s in samples[:2]], IMGSZ)
    with torch.no_grad():
        ref = model(x)[0]
    m = relax(copy.deepcopy(model), output_stats(model, [s.rgb for s in samples[:2]], IMGSZ, [2, 6]))
    blocks = [b for b in m.model if isinstance(b, Relaxed)]
    assert len(blocks) == 2 and blocks[0].names == list(CANDIDATES)
    with torch.no_grad():
        for b in blocks:
            b.alpha.copy_(torch.tensor([0.0, -1e9, -1e9, -1e9]))  # the original's weight is 1
        assert torch.equal(m(x)[0], ref)
        for b in blocks:  # every tail starts at (nearly) the identity, so the mixture starts near the original
            b.alpha.zero_()
        assert torch.allclose(m(x)[0], ref, rtol=0.05, atol=0.5)
        blocks[0].alpha.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))   # se wins on block 2
        blocks[1].alpha.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))   # conv1x1 wins on block 6
    assert [c["chosen"] for c in discretise(m)] == ["se", "conv1x1"]
    assert not any(isinstance(b, Relaxed) for b in m.model)
    dest = tmp_path / "searched.pt"
    save_checkpoint(m, MODEL, dest, {"search": True})
    import zipfile

    with zipfile.ZipFile(dest) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"vqp.repair" not in pkl  # plain torch and Ultralytics classes only: no vqp needed to load it
    plain, orig = YOLO(str(dest)), YOLO(MODEL)
    a, b = (y.predict(str(bus_path), imgsz=IMGSZ, device="cpu", verbose=False)[0] for y in (plain, orig))
    assert a.orig_shape == b.orig_shape and a.boxes.data.shape[1] == b.boxes.data.shape[1] == 6
    assert len(a.boxes) and a.names == b.names
    capsys.readouterr()
    assert main(["detect", str(bus_path), "--model", str(dest), "--imgsz", str(IMGSZ)]) == 0
    assert "person" in capsys.readouterr().out
    train = pseudo_labels(model, samples, IMGSZ)
    tuned, losses, chosen = search(model, train, Policy.from_failures(0.5, {"fog": {1: 0.3}}), blocks=[2, 23],
                                   steps=2, imgsz=IMGSZ, batch=2)
    assert len(losses) == 2 and [c["block"] for c in chosen] == [2]  # the Detect head is tuned, not relaxed
    assert sum(chosen[0]["weights"].values()) == pytest.approx(1.0, abs=1e-3)
