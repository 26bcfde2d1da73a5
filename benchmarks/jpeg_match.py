"""Issue 2 measurement: vqp JPEG at ``match_quality=Q`` against the plain encoder at Q.

For every image: bytes ratio (must be <= 1), PSNR-Y and MS-SSIM inside objects, outside them and
over the full frame. Objects are ground-truth boxes on coco128 (halved) and detector boxes on
Kodak (which has no ground truth; boxes at confidence >= 0.25, a circular measure since the detector
also chose where the bits go). Prints a Markdown table and writes JSON.

    python -m benchmarks.jpeg_match --dataset coco --q 30 50 75 --encoder pillow jpegli
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time

os.environ.setdefault("YOLO_OFFLINE", "true")

import numpy as np
from PIL import Image
from tqdm import tqdm

from vqp.detect import load_detector
from vqp.imageio import Picture
from vqp.jpeg import BACKGROUND_WEIGHT, get_encoder, save_jpeg
from vqp.roi import ROI_CONF
from vqp.metrics import region_scores

from . import datasets


METRIC_CONF = 0.25  # detector boxes that count as objects for the metric where no ground truth exists


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _mean(xs):
    xs = [x for x in xs if not (math.isnan(x) or math.isinf(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def run(dataset: str, qualities, encoders, limit=None, model=None, background_weight=BACKGROUND_WEIGHT) -> list[dict]:
    samples = datasets.coco(limit) if dataset == "coco" else datasets.kodak(limit)
    det = load_detector(model, conf=ROI_CONF)
    dets = [det([s.rgb])[0] for s in tqdm(samples, desc="detect", leave=False)]
    rows = []
    for enc_name in encoders:
        enc = get_encoder(enc_name)
        for q in qualities:
            for s, d in tqdm(list(zip(samples, dets)), desc=f"{enc_name} q{q}", leave=False):
                boxes = s.boxes or [(b.x1, b.y1, b.x2, b.y2) for b in d.boxes if b.conf >= METRIC_CONF]
                plain = enc.encode(s.rgb, q)
                t0 = time.perf_counter()
                r = save_jpeg(Picture(s.rgb), match_quality=q, encoder=enc_name, detections=d,
                              background_weight=background_weight)
                dt = time.perf_counter() - t0
                sp, sv = region_scores(s.rgb, _decode(plain), boxes), region_scores(s.rgb, _decode(r.data), boxes)
                rows.append({"image": s.name, "encoder": enc_name, "q": q, "plain_bytes": len(plain),
                             "vqp_bytes": r.size, "vqp_quality": r.quality,
                             "strength": r.params.strength if r.params else 1, "detections": len(d),
                             "seconds": dt, **{f"plain_{k}": v for k, v in sp.items()},
                             **{f"vqp_{k}": v for k, v in sv.items()}})
    return rows


def summarize(rows) -> list[dict]:
    out = []
    for key in sorted({(r["encoder"], r["q"]) for r in rows}, key=lambda k: (k[0], k[1])):
        rs = [r for r in rows if (r["encoder"], r["q"]) == key]
        g = lambda m: _mean([r[f"vqp_{m}"] - r[f"plain_{m}"] for r in rs])
        out.append({"encoder": key[0], "q": key[1], "images": len(rs),
                    "bytes_ratio_mean": _mean([r["vqp_bytes"] / r["plain_bytes"] for r in rs]),
                    "bytes_ratio_max": max(r["vqp_bytes"] / r["plain_bytes"] for r in rs),
                    "d_psnr_obj": g("psnr_obj"), "d_msssim_obj": g("msssim_obj"),
                    "d_psnr_bg": g("psnr_bg"), "d_msssim_bg": g("msssim_bg"),
                    "d_psnr_full": g("psnr_full"), "d_msssim_full": g("msssim_full"),
                    "plain_msssim_full": _mean([r["plain_msssim_full"] for r in rs]),
                    "vqp_msssim_full": _mean([r["vqp_msssim_full"] for r in rs]),
                    "passthrough": sum(r["strength"] == 1 for r in rs),
                    "seconds_per_image": _mean([r["seconds"] for r in rs])})
    return out


def markdown(summary) -> str:
    head = ("| encoder | Q | images | bytes ratio mean / max | ΔPSNR-Y obj | ΔMS-SSIM obj | ΔPSNR-Y bg | "
            "ΔMS-SSIM bg | MS-SSIM full plain → vqp | plain kept | s/img |\n|" + "---|" * 11)
    lines = [head]
    for s in summary:
        lines.append(f"| {s['encoder']} | {s['q']} | {s['images']} | {s['bytes_ratio_mean']:.3f} / {s['bytes_ratio_max']:.3f} "
                     f"| {s['d_psnr_obj']:+.2f} dB | {s['d_msssim_obj']:+.4f} | {s['d_psnr_bg']:+.2f} dB "
                     f"| {s['d_msssim_bg']:+.4f} | {s['plain_msssim_full']:.4f} → {s['vqp_msssim_full']:.4f} "
                     f"| {s['passthrough']} | {s['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["coco", "kodak"], default="coco")
    ap.add_argument("--q", type=int, nargs="+", default=[30, 50, 75])
    ap.add_argument("--encoder", nargs="+", default=["pillow", "jpegli"])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--model")
    ap.add_argument("--background-weight", type=float, default=BACKGROUND_WEIGHT)
    ap.add_argument("--out", help="JSON file for per-image rows and the summary")
    a = ap.parse_args()
    rows = run(a.dataset, a.q, a.encoder, a.limit, a.model, a.background_weight)
    summary = summarize(rows)
    print(markdown(summary))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
