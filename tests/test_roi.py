from vqp.roi import RoiConfig, roi_map, to_grid
from vqp.types import Box, Detections


def _dets(*boxes, h=128, w=256):
    return Detections([Box(*b, 0.9, 0, "person") for b in boxes], h, w)


def test_box_blocks_are_one_and_feather_falls_off():
    r = roi_map([_dets((64, 32, 96, 64))], config=RoiConfig(margin=0, feather=32))
    imp = r.importance[0]
    assert imp.shape == (16, 32)
    assert (imp[4:8, 8:12] == 1).all()
    row = imp[5, 12:20]
    assert (row[:-1] >= row[1:]).all() and row[0] < 1 and row[-1] == 0
    assert imp[15, 31] == 0


def test_no_boxes_is_all_zero_and_batched():
    r = roi_map([_dets(), _dets((0, 0, 10, 10))])
    assert r.importance.shape[0] == 2
    assert r.active.tolist() == [False, True]


def test_confidence_and_priority_weighting():
    d = Detections([Box(0, 0, 16, 16, 0.25, 2, "car"), Box(200, 100, 250, 120, 0.9, 0, "person")], 128, 256)
    r = roi_map([d], config=RoiConfig(conf_full=0.5, priority={"person": 0.5}, feather=1))
    assert abs(r.importance[0, 0, 0].item() - 0.5) < 1e-6
    assert abs(r.importance[0, 13, 26].item() - 0.5) < 1e-6


def test_macroblock_grid_resamples_to_dct_grid():
    r = roi_map([_dets((0, 0, 20, 20), h=40, w=40)], block=16, config=RoiConfig(margin=0, feather=1))
    g = to_grid(r, 8)
    assert g.shape == (1, 5, 5)
    assert (g[0, :4, :4] == 1).all() and g[0, 4, 4] == 0


def test_parse_priority():
    import pytest

    from vqp.errors import VqpError
    from vqp.roi import parse_priority

    assert parse_priority("person=1, car=0.5,") == {"person": 1.0, "car": 0.5}
    assert parse_priority("") == {}
    for bad, msg in (("garbage", "CLASS=W"), ("=1", "CLASS=W"), ("car=fast", "CLASS=W"), ("car=2", r"\[0, 1\]"),
                     ("car=nan", r"\[0, 1\]"), ("car=-0.5", r"\[0, 1\]")):
        with pytest.raises(VqpError, match=msg):
            parse_priority(bad)


def test_detections_above_keeps_the_frame_size():
    d = Detections([Box(0, 0, 4, 4, 0.1, 0, "person"), Box(0, 0, 4, 4, 0.25, 0, "person")], 10, 20)
    hi = d.above(0.25)
    assert [b.conf for b in hi.boxes] == [0.25] and (hi.height, hi.width) == (10, 20)
