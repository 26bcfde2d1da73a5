"""Quantizer stage: blockwise 8x8 DCT re-quantization on the encoder's own grid and tables.

Works on a batch of RGB frames as torch tensors (CPU or CUDA, no per-block Python loops):
JFIF YCbCr, chroma averaged 2x2 for 4:2:0 exactly like the encoder, orthonormal 8x8 DCT (the
JPEG FDCT), then each block's coefficients are rounded to multiples of the encoder's step times
a per-block multiplier that grows from 1 (object) to ``strength`` (background), and/or given
rate-distortion levels (``lam``: the zeros that save the most bits for the least error, see
vqp.jpegsize.rd_levels). Background blocks can also drop their high frequencies. Blocks of
importance 1 keep their original pixels, and a frame with no importance anywhere is returned
bit-identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .jpegsize import SCAN_RANK, ZIGZAG, ZZ, rd_levels, unzigzag, zigzag
from .types import RoiMap

# JPEG Annex K base tables (natural order) and libjpeg's quality scaling.
LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
          47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def annex_k_tables(quality: int) -> torch.Tensor:
    """The (2, 8, 8) luma/chroma tables libjpeg (and Pillow) writes at ``quality``."""
    q = min(max(int(quality), 1), 100)
    s = 5000 // q if q < 50 else 200 - 2 * q
    t = torch.tensor([LUMA, CHROMA], dtype=torch.float32)
    return torch.clamp(torch.floor((t * s + 50) / 100), 1, 255).reshape(2, 8, 8)


def _dct_matrix() -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float()


DCT = _dct_matrix()

# JFIF (full-range BT.601) colour conversion, as in libjpeg.
RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCC2RGB = torch.linalg.inv(RGB2YCC.double()).float()
LEVEL = 8 * 128.0  # JPEG's level shift of 128, as the DC of an orthonormal 8x8 DCT
CHROMA_FACTOR = {"4:2:0": 2, "4:4:4": 1}  # subsampling -> luma pixels per chroma sample, each way


@dataclass(frozen=True)
class QuantParams:
    """How hard the background is quantized.

    strength: step multiplier for importance-0 blocks (1 = the encoder's own step).
    keep: zigzag coefficients kept in importance-0 blocks (64 = all; 1 = DC only).
    dc_strength: step multiplier for the DC of importance-0 blocks; a coarse DC shows as block steps.
    lam: rate-distortion trade for importance-0 blocks (vqp.jpegsize.rd_levels): squared level
        error accepted per bit saved; 0 rounds every coefficient like the encoder.
    """

    strength: float = 4.0
    keep: int = 64
    dc_strength: float = 2.0
    lam: float = 0.0


def blockify(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/8, W/8, 8, 8)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)


# 2-D DCT of a row-major 8x8 block as one 64x64 matrix: a single GEMM for the whole batch.
DCT64 = torch.kron(DCT, DCT)


def dct2(b: torch.Tensor) -> torch.Tensor:
    return (b.reshape(-1, 64) @ DCT64.to(b.device).T).reshape(b.shape)


def idct2(c: torch.Tensor) -> torch.Tensor:
    return (c.reshape(-1, 64) @ DCT64.to(c.device)).reshape(c.shape)


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a (K, C) colour matrix to (N, C, H, W) as one batched matmul (no permute copies)."""
    return (m.to(x.device) @ x.flatten(2)).view(x.shape[0], m.shape[0], *x.shape[2:])


@dataclass
class Prepared:
    """A batch's blockwise DCT as the JPEG encoder computes it (JFIF YCbCr, 2x2 chroma average,
    level shift of 128), for modelling candidates without encoding them."""

    coef_y: torch.Tensor     # (N, 1, Hp/8, Wp/8, 8, 8), Hp and Wp padded to whole MCUs
    coef_c: torch.Tensor     # (N, 2, Hc/8, Wc/8, 8, 8)


def prepare(rgb: torch.Tensor, subsampling: str = "4:2:0") -> Prepared:
    """Convert (N, 3, H, W) uint8 RGB to padded YCbCr and its blockwise DCT."""
    if rgb.dtype != torch.uint8 or rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError("expected an (N, 3, H, W) uint8 RGB tensor")
    sub = CHROMA_FACTOR[subsampling]
    n, _, h, w = rgb.shape
    mcu = 8 * sub
    ph, pw = -h % mcu, -w % mcu
    x = rgb.float()
    if ph or pw:  # libjpeg pads by repeating the last row and column
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    ycc = _mix(RGB2YCC, x)  # chroma centred on 0; luma shifted below
    chroma = F.avg_pool2d(ycc[:, 1:], sub) if sub > 1 else ycc[:, 1:]
    return Prepared(dct2(blockify(ycc[:, :1] - 128)), dct2(blockify(chroma)))


def requantize_blocks(coef: torch.Tensor, table: torch.Tensor, imp: torch.Tensor, p: QuantParams,
                      scan: bool = False, chroma: bool = False) -> torch.Tensor:
    """Round coefficients (..., 8, 8) to per-block steps; imp is (N, Hb, Wb) on this plane's block
    grid. ``scan``: the coefficients (and the table) are laid out in zigzag scan order instead of
    natural order. ``chroma`` picks the Huffman table the rate-distortion levels are costed with."""
    bg = (1 - imp)[:, None, :, :, None, None]  # (N, 1, Hb, Wb, 1, 1)
    extra = torch.full((8, 8), p.strength - 1.0, device=coef.device)  # multiplier - 1 at importance 0
    extra[0, 0] = max(p.dc_strength, 1.0) - 1
    step = table.to(coef.device) * (1 + bg * (extra.flatten()[ZZ].view(8, 8) if scan else extra))
    if p.lam > 0:
        u = coef / step
        u = u if scan else zigzag(u)
        # geometric ramp: a half-important block gets sqrt(1 + lam) - 1, not lam / 2, so that weak
        # boxes keep some protection at the ladder's hardest settings
        lam = torch.pow(1 + p.lam, bg) - 1
        q = rd_levels(u.flatten(-2), lam.flatten(-2), chroma).unflatten(-1, (8, 8))
        q = (q if scan else unzigzag(q)) * step
    else:
        q = (coef / step).round_().mul_(step)
    if p.keep >= 64:
        return q
    keep = 64 - (64 - p.keep) * bg  # zigzag positions kept, ramping with importance
    rank = SCAN_RANK if scan else ZIGZAG
    return torch.where(rank.to(coef.device) < keep, q, 0.0)


def quantize(rgb: torch.Tensor, roi: RoiMap | torch.Tensor, tables: torch.Tensor,
             params: QuantParams = QuantParams(), subsampling: str = "4:2:0") -> torch.Tensor:
    """Quantize (N, 3, H, W) uint8 RGB frames with an importance map (N, ceil(H/8), ceil(W/8)) on
    the 8x8 luma grid.

    Only the MCUs (16x16 for 4:2:0) with a block below importance 1, in frames with any importance,
    are converted, transformed and written back; the rest of the output is the input, so the cost
    follows the background's area, not the frame's. A luma block of importance 1 keeps its pixels,
    and an MCU's chroma is as important as its best luma block.
    """
    if rgb.dtype != torch.uint8 or rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError("expected an (N, 3, H, W) uint8 RGB tensor")
    imp = roi.importance if isinstance(roi, RoiMap) else roi
    sub = CHROMA_FACTOR[subsampling]
    m = 8 * sub
    n, _, h, w = rgb.shape
    hm, wm = -(-h // m), -(-w // m)
    imp = imp.to(rgb.device, torch.float32)
    imp = F.pad(imp[:, None], (0, wm * sub - imp.shape[-1], 0, hm * sub - imp.shape[-2]), mode="replicate")[:, 0]
    blocks = imp.view(n, hm, sub, wm, sub).transpose(2, 3)  # (N, Hm, Wm, sub, sub): luma blocks per MCU
    active = imp.flatten(1).amax(1) > 0  # no detection: the frame passes through bit-identical
    todo = (blocks < 1).flatten(3).any(3) & active[:, None, None]
    if not bool(todo.any()):
        return rgb
    src = F.pad(rgb, (0, wm * m - w, 0, hm * m - h), mode="replicate") if (hm * m, wm * m) != (h, w) else rgb
    res = src.clone()
    grid, out = src.view(n, 3, hm, m, wm, m), res.view(n, 3, hm, m, wm, m)
    for ni, yi, xi in zip(*(i.split(CHUNK) for i in todo.nonzero(as_tuple=True))):  # bounded memory
        out[ni, :, yi, :, xi] = _mcus(grid[ni, :, yi, :, xi], blocks[ni, yi, xi], tables, params)
    return res[:, :, :h, :w] if res.shape[-2:] != (h, w) else res


# MCUs requantized at a time. Bounded memory (a 121 MP photo would otherwise hold several float
# copies of itself), and fast: temporaries of a few MB are reused from the heap, where chunks of
# 32k MCUs got fresh pages from the OS for every one of them (42 against 64-68 MP/s on 1080p).
CHUNK = 1 << 11


def _pool(f: torch.Tensor) -> torch.Tensor:
    """The encoder's 2x2 chroma average of (M, C, 16, 16) tiles, as two adds of contiguous halves
    (3x faster than avg_pool2d on CPU)."""
    m, c = f.shape[:2]
    rows = f.view(m, c, 8, 2, 16)
    rows = rows[:, :, :, 0] + rows[:, :, :, 1]  # (M, C, 8, 16)
    cols = rows.view(m, c, 8, 8, 2)
    return (cols[..., 0] + cols[..., 1]).mul_(0.25)


def _mcus(tiles: torch.Tensor, iy: torch.Tensor, tables: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """Requantize MCUs: tiles (M, 3, m, m) uint8 RGB, iy (M, sub, sub) their luma blocks' importance."""
    sub = iy.shape[-1]
    m = 8 * sub
    f = tiles.float()
    # The colour transform is linear: chroma is converted after the encoder's 2x2 average, at a quarter
    # of the pixels, and the 128 level shift is a DC offset of 8 * 128 (orthonormal DCT).
    y = _mix(RGB2YCC[:1], f).view(-1, sub, 8, sub, 8).transpose(2, 3)  # (M, sub, sub, 8, 8)
    c = _mix(RGB2YCC[1:], _pool(f) if sub > 1 else f)  # (M, 2, 8, 8), centred on 0
    ic = iy.flatten(1).amax(1)[:, None, None]
    cy = dct2(y)[:, None]
    cy[..., 0, 0] -= LEVEL
    qy = requantize_blocks(cy, tables[0], iy, params)
    qy[..., 0, 0] += LEVEL
    qc = requantize_blocks(dct2(c)[:, :, None, None], tables[1], ic, params, chroma=True)
    y = idct2(qy)[:, 0].transpose(2, 3).reshape(-1, 1, 8, sub, 8, sub)
    rgb_c = _mix(YCC2RGB[:, 1:], idct2(qc)[:, :, 0, 0])[:, :, :, None, :, None]  # each chroma sample, 2x2 luma
    # materialise the chroma at luma resolution, then add luma in place: a broadcast add over the
    # size-2 inner dims is 2x slower
    up = rgb_c.expand(-1, -1, -1, sub, -1, sub).contiguous()
    out = up.add_(y).round_().clamp_(0, 255).to(torch.uint8).view(-1, 3, m, m)  # in place: no extra float copies
    edge = (ic.view(-1) == 1).nonzero()[:, 0]  # MCUs with an important block keep their own chroma...
    if len(edge):
        own = y[edge].view(-1, 1, m, m) + _mix(YCC2RGB[:, 1:], _mix(RGB2YCC[1:], f[edge]))
        own = torch.clamp(torch.round(own), 0, 255).to(torch.uint8)
        keep = (iy[edge] == 1).view(-1, 1, sub, 1, sub, 1)  # ...and important luma blocks their pixels
        out[edge] = torch.where(keep, tiles[edge].view(-1, 3, sub, 8, sub, 8),
                                own.view(-1, 3, sub, 8, sub, 8)).view(-1, 3, m, m)
    return out


def quantize_planes(planes: list[torch.Tensor], importance: torch.Tensor, tables: torch.Tensor,
                    params: QuantParams, grid: int, todo: torch.Tensor | None = None,
                    depth: int = 8) -> list[torch.Tensor]:
    """Requantize a batch of YUV planes, each (N, H, W) on any device, uint8 for 8-bit samples
    (int16 for ``depth`` up to 15), with an importance map (N, Hg, Wg) on the encoder's ``grid``
    (16 for macroblocks, 8 for JPEG blocks).

    Luma 8x8 blocks inherit their grid cell's importance; a chroma block is as important as the
    best luma block it covers. Only the cells in ``todo`` (default: importance below 1 in frames
    with any importance) are transformed; every other block keeps its source pixels. Deeper
    samples are quantized in their own depth: the steps (8-bit tables) grow by 2 per extra bit,
    so a block loses what it would at 8 bits and keeps the finer levels elsewhere.
    """
    top, mid = (1 << depth) - 1, 1 << (depth - 1)
    n, h, w = planes[0].shape
    importance = importance.to(planes[0].device)
    if todo is None:
        todo = (importance < 1) & (importance.flatten(1).amax(1) > 0)[:, None, None]
    f = grid // 8
    imp8, todo8 = (x.repeat_interleave(f, 1).repeat_interleave(f, 2) for x in (importance.float(), todo.float()))
    tables = tables.to(planes[0].device) * (1 << (depth - 8))
    out = []
    for k, plane in enumerate(planes):
        sub = h // plane.shape[1]
        imp, sel = (x if sub == 1 else F.max_pool2d(x[:, None], sub, ceil_mode=True)[:, 0] for x in (imp8, todo8))
        sel = sel > 0
        hb, wb = imp.shape[1:]
        ph, pw = hb * 8 - plane.shape[1], wb * 8 - plane.shape[2]
        x = torch.cat([plane, plane[:, -1:].expand(-1, ph, -1)], 1) if ph > 0 else plane[:, : hb * 8]
        x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pw)], 2) if pw > 0 else x[:, :, : wb * 8]
        blocks = x.reshape(n, hb, 8, wb, 8).transpose(2, 3).clone()  # (N, hb, wb, 8, 8)
        coef = dct2(blocks[sel].float() - mid)[None, None, :, None]  # (1, 1, M, 1, 8, 8); M may be 0
        q = requantize_blocks(coef, tables[min(k, 1)], imp[sel][None, :, None], params, chroma=k > 0)
        blocks[sel] = torch.clamp(torch.round(idct2(q) + mid), 0, top).to(blocks.dtype)[0, 0, :, 0]
        out.append(blocks.transpose(2, 3).reshape(n, hb * 8, wb * 8)[:, : plane.shape[1], : plane.shape[2]])
    return out
