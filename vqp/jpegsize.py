"""JPEG size without encoding: the bits a baseline Huffman coder spends on quantized coefficients.

The equal-size search asks "how big is the file at (quality, background setting)?" dozens of times
per image. Encoding and decoding each candidate was the slow part, so the search counts what the
entropy coder would write instead, straight from the quantized DCT coefficients: per block the DC
difference's magnitude category, and per nonzero AC coefficient its zero run, magnitude category,
extra bits, ZRL codes for long runs and the end-of-block code. With libjpeg's standard Huffman
tables (what Pillow writes unless ``optimize``) this is nearly the real scan; for encoders that build
their own tables (jpegli, optimize, progressive) each symbol is charged its information content
from this image's own symbol counts, which is what an optimal Huffman code approaches. The caller
scales the count to real bytes with one real encode (``vqp.jpeg``), so only relative errors matter.
"""
from __future__ import annotations

import io
from functools import lru_cache

import torch
import torch.nn.functional as F
from PIL import Image



def _zigzag_rank() -> torch.Tensor:
    """Position of each natural-order coefficient in the JPEG zigzag scan, as an 8x8 tensor."""
    order = sorted(((u, v) for u in range(8) for v in range(8)),
                   key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 else p[0]))
    rank = torch.empty(8, 8)
    for i, (u, v) in enumerate(order):
        rank[u, v] = i
    return rank


ZIGZAG = _zigzag_rank()
# natural-order index of each zigzag position: coef.flatten(-2)[..., ZZ] is in scan order
ZZ = torch.argsort(ZIGZAG.flatten()).tolist()


@lru_cache(maxsize=None)
def standard_code_lengths() -> tuple[torch.Tensor, ...]:
    """(DC luma, AC luma, DC chroma, AC chroma) Huffman code lengths per symbol, read from the DHT
    segments Pillow's libjpeg writes (the standard tables of Annex K), so they are the encoder's own."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=75)
    data, pos, found = buf.getvalue(), 2, {}
    while pos < len(data) and data[pos + 1] != 0xDA:  # up to the start of scan
        n = int.from_bytes(data[pos + 2:pos + 4], "big")
        seg, pos = data[pos + 4:pos + 2 + n], pos + 2 + n
        if data[pos - 2 - n + 1] == 0xC4:  # DHT: one or more tables
            i = 0
            while i < len(seg):
                tc_th, counts = seg[i], seg[i + 1:i + 17]
                lengths = torch.full((256,), 16.0)  # symbols the table lacks: never used by the coder
                vals = seg[i + 17:i + 17 + sum(counts)]
                k = 0
                for length, c in enumerate(counts, 1):
                    for v in vals[k:k + c]:
                        lengths[v] = length
                    k += c
                found[(tc_th >> 4, tc_th & 15)] = lengths
                i += 17 + sum(counts)
    return found[(0, 0)], found[(1, 0)], found[(0, 1)], found[(1, 1)]


def _category(x: torch.Tensor) -> torch.Tensor:
    """JPEG magnitude category (bit length of |x|) of integer-valued floats; 0 for 0."""
    return torch.frexp(x.abs())[1].float()


def symbols(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symbols of blocks (M, 64) of integer quantized coefficients in zigzag order, blocks in scan
    order: (DC categories (M,), AC run/size symbols of the nonzero ACs, extra bits of all of them,
    [ZRL codes, EOB codes]). Only the nonzero ACs are visited after one pass to find them."""
    dc = k[:, 0]
    sdc = _category(torch.diff(dc, prepend=dc.new_zeros(1)).float())
    ac = k[:, 1:]
    r, c = ac.nonzero(as_tuple=True)  # row-major: each block's nonzero ACs in scan order
    prev = c.roll(1)
    if len(c):
        prev[torch.cat([r.new_ones(1, dtype=torch.bool), r[1:] != r[:-1]])] = -1  # a block's first AC follows DC
    run = c - prev - 1
    s = _category(ac[r, c].float())
    sym = (run & 15) * 16 + s.long()
    zrl = (run >> 4).sum()
    eob = len(k) - (ac[:, -1] != 0).sum()  # blocks whose last AC is zero end with EOB
    return sdc, sym, sdc.sum() + s.sum(), torch.stack([zrl, eob]).float()


def scan_bits(planes: list[torch.Tensor], adaptive: bool) -> float:
    """Estimated entropy-coded bits of quantized coefficient planes, each (Hb, Wb, 64) in zigzag
    order: luma first, then the chroma planes. Blocks are visited in raster order per plane (the
    interleaved MCU order differs only in which DC differences are taken)."""
    dcl, acl, dcc, acc = standard_code_lengths()
    total = 0.0
    groups = [(planes[:1], dcl, acl), (planes[1:], dcc, acc)]
    for group, dc_len, ac_len in groups:
        if not group:
            continue
        dc_hist = torch.zeros(16, device=group[0].device)
        ac_hist = torch.zeros(257, device=group[0].device)
        extra = torch.zeros(3, device=group[0].device)  # extra bits, ZRL codes, EOB codes
        for p in group:
            sdc, sym, bits, ze = symbols(p.reshape(-1, 64))
            dc_hist += torch.bincount(sdc.long(), minlength=16)[:16].float()
            ac_hist += torch.bincount(sym + 1, minlength=257)[:257].float()
            extra += torch.cat([bits[None], ze])
        ac_hist[0] = 0  # the 'no symbol' slot
        ac_hist[1 + 0xF0] += extra[1]  # ZRL
        ac_hist[1 + 0x00] += extra[2]  # EOB
        if adaptive:
            total += _information(dc_hist) + _information(ac_hist[1:])
        else:
            total += float((dc_hist * dc_len[:16].to(dc_hist.device)).sum()
                           + (ac_hist[1:] * ac_len.to(ac_hist.device)).sum())
        total += float(extra[0])
    return total


def _information(hist: torch.Tensor) -> float:
    """Bits of an optimal code for these symbol counts (Shannon), with 1 bit per symbol at least."""
    n = hist.sum()
    if n <= 0:
        return 0.0
    p = hist[hist > 0] / n
    return float((hist[hist > 0] * torch.clamp(-torch.log2(p), min=1.0)).sum())


def zigzag(x: torch.Tensor) -> torch.Tensor:
    """(..., 8, 8) in natural order -> (..., 8, 8) whose row-major order is the zigzag scan."""
    return x.flatten(-2)[..., ZZ].unflatten(-1, (8, 8))


def unzigzag(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``zigzag``."""
    return x.flatten(-2)[..., ZIGZAG.flatten().long()].unflatten(-1, (8, 8))


# the zigzag rank of each position of a block already in scan order (for vqp.quant.requantize_blocks)
SCAN_RANK = torch.arange(64.0).reshape(8, 8)


def rd_levels(u: torch.Tensor, lam: torch.Tensor, chroma: bool = False, passes: int = 2) -> torch.Tensor:
    """Rate-distortion-optimised levels: ``u`` (..., 64) are coefficients in units of their
    quantizer step, in zigzag scan order, and ``lam`` (broadcastable to (..., 1)) the squared
    level error a block accepts per bit saved (0: plain rounding, what the encoder does).

    Coarser steps cost JPEG dearly: a background coefficient rounded to a multiple m of the
    encoder's step is still coded with the magnitude bits of its multiple, so it pays in error
    without saving the bits. The bits go with the zeros. A nonzero AC costs its Huffman run/size
    code (standard tables) plus its extra bits, so each block is cut where error + lam * bits is
    least (everything after the cut goes, and the end-of-block code comes earlier); then each
    remaining AC stays, drops one magnitude category (one extra bit fewer) or goes to zero,
    whichever costs least, counting that a zero lengthens the next coefficient's run (a second
    cut after that changed nothing on coco128). The DC stays: its error shows as block steps.
    """
    v = torch.round(u)
    lam = lam.expand(*u.shape[:-1], 1).reshape(-1)
    flat = v.view(-1, 64)
    todo = (lam > 0) & (flat[:, 1:] != 0).any(1)  # blocks with nothing to trade are left alone
    bits, uf = _run_size_bits(chroma, str(u.device)), u.reshape(-1, 64)
    for part in todo.nonzero()[:, 0].split(CHUNK):  # bounded memory: a few dozen temporaries per block
        flat[part, 1:] = _rd_ac(uf[part, 1:], flat[part, 1:], lam[part, None], bits, passes)
    return v


CHUNK = 1 << 16  # blocks whose levels are decided at a time


@lru_cache(maxsize=None)
def _run_size_bits(chroma: bool, device: str) -> tuple[torch.Tensor, float]:
    """(bits of a (run, size) AC symbol indexed by run * 16 + size for runs 0..63, ZRL codes
    included; bits of the end-of-block code), from the standard Huffman tables."""
    lengths = standard_code_lengths()[3 if chroma else 1]
    run = torch.arange(64)[:, None]
    table = lengths[(run & 15) * 16 + torch.arange(16)] + lengths[0xF0] * (run >> 4)
    return table.flatten().to(device), float(lengths[0x00])


def _rd_ac(ua: torch.Tensor, a: torch.Tensor, lam: torch.Tensor, bits: tuple, passes: int) -> torch.Tensor:
    """rd_levels on the ACs (M, 63) of blocks that have some, starting from their rounded levels ``a``."""
    table, eob = bits
    pos = torch.arange(1, 64, device=ua.device, dtype=torch.int32)  # int32 throughout: half the memory traffic
    gone = ua * ua  # error of a coefficient that goes

    def code(run, size):  # index_select with int32 indices: several times faster than table[idx] on CPU
        idx = run * 16 + size
        return table.index_select(0, idx.flatten()).view(idx.shape)

    def runs(a):
        nz = a != 0
        prev = F.pad(torch.where(nz, pos, 0).cummax(-1).values[..., :-1], (1, 0))  # last nonzero before (0: DC)
        return nz, pos - prev - 1, torch.frexp(a)[1]  # frexp's exponent of an integer is its category

    def cut(a):  # keep ACs 1..k for the k with the least error + lam * bits
        nz, run, size = runs(a)
        paid = torch.where(nz, (ua - a) ** 2 - gone + lam * (code(run, size) + size), 0)
        cost = F.pad(torch.cumsum(paid, -1), (1, 0))
        cost[:, -1] -= lam[:, 0] * eob * nz[:, -1]  # a block coded to its last AC needs no end-of-block code
        k = torch.argmin(cost, -1, keepdim=True)
        return torch.where(pos <= k, a, 0.0)

    a = cut(a)
    for _ in range(passes - 1):
        nz, run, size = runs(a)
        after = F.pad(torch.where(nz, pos, 64).int().flip(-1).cummin(-1).values.flip(-1)[..., 1:], (0, 1), value=64)
        run_next = after - pos - 1
        size_next = size.gather(-1, (after - 1).clamp(max=62))
        own = code(run, size)
        longer = torch.where(after < 64, code(run + 1 + run_next, size_next) - code(run_next, size_next), 0)
        err = (ua - a) ** 2
        down = torch.sign(a) * (torch.exp2(size - 1) - 1)  # the largest level one category lower
        cost_zero = gone - err - lam * (own + size - longer)
        cost_down = torch.where(size >= 2, (ua - down) ** 2 - err - lam * (1 + own - code(run, (size - 1).clamp(min=0))),
                                torch.inf)
        a = torch.where(nz & (cost_zero < 0) & (cost_zero <= cost_down), 0.0,
                        torch.where(nz & (cost_down < 0) & (cost_down < cost_zero), down, a))
    return a


def header_bytes(meta_bytes: int = 0) -> int:
    """A baseline JFIF file's fixed part: markers, two tables, four Huffman tables (~620 bytes)."""
    return 620 + meta_bytes

