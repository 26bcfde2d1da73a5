import io

import numpy as np
import pytest
import torch
from PIL import Image

from vqp.jpegsize import rd_levels, scan_bits, zigzag
from vqp.quant import QuantParams, annex_k_tables, dct2, blockify, prepare, quantize


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].contiguous()


def _jpeg_size(a: np.ndarray, q: int) -> int:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=q)
    return b.tell()


@pytest.mark.parametrize("q", [1, 10, 30, 50, 75, 90, 100])
def test_annex_k_tables_match_pillow(q):
    b = io.BytesIO()
    Image.new("RGB", (16, 16)).save(b, "JPEG", quality=q)
    tables = Image.open(b).quantization
    ours = annex_k_tables(q)
    assert ours[0].flatten().int().tolist() == list(tables[0])
    assert ours[1].flatten().int().tolist() == list(tables[1])


def test_dct_is_jpeg_dct():
    import cv2

    x = np.random.default_rng(0).uniform(-128, 127, (8, 8)).astype(np.float32)
    ours = dct2(torch.from_numpy(x)[None, None, None, None]).reshape(8, 8).numpy()
    assert np.allclose(ours, cv2.dct(x), atol=1e-3)


def test_no_importance_is_bit_identical(astronaut):
    x = _tensor(astronaut)
    out = quantize(x, torch.zeros(1, 64, 64), annex_k_tables(50))
    assert torch.equal(out, x)


def test_objects_untouched_background_cheaper(astronaut):
    x = _tensor(astronaut)
    imp = torch.zeros(1, 64, 64)
    imp[:, 4:20, 20:40] = 1  # object: pixel rows 32..160, cols 160..320 (whole MCUs)
    out = quantize(x, imp, annex_k_tables(50), QuantParams(6, 10))
    assert torch.equal(out[..., 32:160, 160:320], x[..., 32:160, 160:320])
    assert not torch.equal(out[..., 300:, :], x[..., 300:, :])
    a = out[0].permute(1, 2, 0).numpy()
    assert _jpeg_size(a, 50) < 0.8 * _jpeg_size(astronaut, 50)


def test_background_lands_on_encoder_steps(astronaut):
    """Requantized luma coefficients are multiples of strength x the encoder's step (up to pixel rounding)."""
    x = _tensor(astronaut)
    imp = torch.zeros(1, 64, 64)
    imp[:, 0, 0] = 1
    t = annex_k_tables(50)
    out = quantize(x, imp, t, QuantParams(4, 64, dc_strength=4))
    c = prepare(out).coef_y[0, 0, 8:, 8:]  # far from the object
    k = c / (t[0] * 4)
    assert (k - k.round()).abs().mean() < 0.06


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (17, 33), (250, 129)])
def test_any_size(h, w):
    a = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    imp = torch.zeros(1, -(-h // 8), -(-w // 8))
    imp[..., -1] = 1
    out = quantize(_tensor(a), imp, annex_k_tables(30), QuantParams(8, 6))
    assert out.shape == (1, 3, h, w) and out.dtype == torch.uint8


def test_batch_matches_single(astronaut):
    x = _tensor(astronaut)
    xs = torch.cat([x, x.flip(-1)])
    imp = torch.rand(2, 64, 64).round()
    both = quantize(xs, imp, annex_k_tables(50))
    assert torch.equal(both[1:], quantize(xs[1:], imp[1:], annex_k_tables(50)))
    assert torch.equal(both[:1], quantize(xs[:1], imp[:1], annex_k_tables(50)))


def test_444_grid(astronaut):
    x = _tensor(astronaut)
    imp = torch.zeros(1, 64, 64)
    imp[:, 10:12, 10:12] = 1
    out = quantize(x, imp, annex_k_tables(50), subsampling="4:4:4")
    assert torch.equal(out[..., 80:96, 80:96], x[..., 80:96, 80:96])


def _scan_coef(a: np.ndarray, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Luma coefficients of an image in units of the Q step, zigzag scan order, (M, 64)."""
    t = zigzag(annex_k_tables(q))[0]
    return (zigzag(prepare(_tensor(a)).coef_y)[0, 0] / t).flatten(0, 1).flatten(-2), t


def _bits(levels: torch.Tensor, hb: int) -> float:
    return scan_bits([levels.reshape(hb, -1, 64).to(torch.int32)], adaptive=False)


def test_rd_levels_zero_lambda_is_plain_rounding(astronaut):
    u, _ = _scan_coef(astronaut, 50)
    assert torch.equal(rd_levels(u, torch.zeros(len(u), 1)), torch.round(u))


def test_rd_levels_trade_bits_for_error(astronaut):
    """A larger lambda spends fewer bits (as the Huffman coder counts them) for more error, and the
    DC never moves."""
    u, _ = _scan_coef(astronaut, 75)
    hb = 64
    last = (_bits(torch.round(u), hb), 0.0)
    for lam in (1, 4, 16, 64):
        v = rd_levels(u, torch.full((len(u), 1), float(lam)))
        assert torch.equal(v[:, 0], torch.round(u[:, 0]))
        now = (_bits(v, hb), float(((v - u) ** 2).sum()))
        assert now[0] < last[0] and now[1] > last[1]
        last = now


def test_rd_levels_beat_a_coarser_step(astronaut):
    """The point of rate-distortion levels: at no more bits than rounding to a multiple of the step
    (the old background), the error (in pixels, since the DCT is orthonormal) is lower."""
    u, t = _scan_coef(astronaut, 75)
    for m in (3, 4, 8):
        coarse = torch.cat([torch.round(u[:, :1]), torch.round(u[:, 1:] / m) * m], 1)  # the DC alike
        bits = _bits(coarse, 64)
        err_coarse = float((((coarse - u) * t.flatten()) ** 2).sum())
        lam = next(lam for lam in 2.0 ** torch.arange(-4, 12, 0.5) if _bits(rd_levels(u, torch.full((len(u), 1), float(lam))), 64) <= bits)
        v = rd_levels(u, torch.full((len(u), 1), float(lam)))
        assert float((((v - u) * t.flatten()) ** 2).sum()) < 0.8 * err_coarse


def test_rd_background_keeps_objects(astronaut):
    x = _tensor(astronaut)
    imp = torch.zeros(1, 64, 64)
    imp[:, 4:20, 20:40] = 1
    out = quantize(x, imp, annex_k_tables(50), QuantParams(1, 64, 1, 16))
    assert torch.equal(out[..., 32:160, 160:320], x[..., 32:160, 160:320])
    a = out[0].permute(1, 2, 0).numpy()
    assert _jpeg_size(a, 50) < 0.8 * _jpeg_size(astronaut, 50)


def test_chunks_do_not_change_the_result(astronaut, monkeypatch):
    """Large photos are requantized a bounded number of MCUs (and blocks) at a time; the output is
    the same as in one piece."""
    import vqp.jpegsize
    import vqp.quant

    x = _tensor(astronaut)
    imp = torch.zeros(1, 64, 64)
    imp[:, 4:20, 20:40] = 1
    imp[:, 20:22, 20:40] = 0.5
    whole = [quantize(x, imp, annex_k_tables(50), p) for p in (QuantParams(1, 64, 2, 16), QuantParams(8, 6))]
    monkeypatch.setattr(vqp.quant, "CHUNK", 37)
    monkeypatch.setattr(vqp.jpegsize, "CHUNK", 53)
    assert all(torch.equal(w, quantize(x, imp, annex_k_tables(50), p))
               for w, p in zip(whole, (QuantParams(1, 64, 2, 16), QuantParams(8, 6))))
