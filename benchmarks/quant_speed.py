"""Quantizer throughput in megapixels/s on a batch of 1920x1080 frames (CPU, and CUDA if present).

    python -m benchmarks.quant_speed --batch 8 --repeat 5 [--lam 16]

``--lam`` measures the rate-distortion background (the JPEG image ladder's kind of setting) instead
of the step multiplier the video pixel method uses.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.datasets import kodak
from vqp.quant import QuantParams, annex_k_tables, quantize


def frames(batch: int) -> torch.Tensor:
    """Real content: Kodak images resized to 1080p, with half of each frame marked as object."""
    out = []
    for p in kodak(batch):
        x = torch.from_numpy(p.rgb.copy()).permute(2, 0, 1)[None].float()
        x = x if x.shape[-1] > x.shape[-2] else x.transpose(-1, -2)  # portraits on their side
        out.append(torch.nn.functional.interpolate(x, size=(1080, 1920), mode="bilinear"))
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8)


def measure(x: torch.Tensor, device: str, repeat: int, params: QuantParams) -> float:
    x = x.to(device)
    imp = torch.zeros(x.shape[0], 135, 240, device=device)
    imp[:, 30:100, 60:180] = 1
    t = annex_k_tables(75)
    quantize(x, imp, t, params)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        quantize(x, imp, t, params)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return x.shape[0] * 1920 * 1080 * repeat / (time.perf_counter() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--lam", type=float, default=0.0, help="rate-distortion background (0: step multiplier 8, keep 6)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = frames(a.batch)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    params = QuantParams(1, 64, 1, a.lam) if a.lam else QuantParams(8, 6)
    for d in devices:
        print(f"{d}: {measure(x, d, a.repeat, params):.1f} MP/s  (batch {a.batch} x 1920x1080, {a.threads} threads, "
              f"{params})")


if __name__ == "__main__":
    main()
