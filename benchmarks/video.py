"""Video benchmark (issue 3): vqp encode against plain encodes of the same clips.

quality: for each clip excerpt and bitrate, plain x264 and vqp x264 at the same target bitrate
(both through vqp.video.encode_video, two-pass unless --abr), then MJPEG at matched size (vqp at
the best qscale whose size is no larger than plain at --mjpeg-q). PSNR-Y and MS-SSIM of the luma
plane inside the detector's boxes on the ORIGINAL frames, outside them and over the full frame.
speed: wall time of `vqp encode` with default settings against a plain encode, back to back.

    python benchmarks/video.py quality --frames 120 --json benchmarks/video_quality.json
    python benchmarks/video.py match --frames 120 --crf 23 28 --json benchmarks/video_match.json
    python benchmarks/video.py speed --frames 120 --json benchmarks/video_speed.json
    python benchmarks/video.py table benchmarks/video_quality.json benchmarks/video_speed.json
    python benchmarks/video.py plot benchmarks/video_quality.json --png benchmarks/video_quality.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.datasets import clips  # noqa: E402
from vqp.detect import load_detector  # noqa: E402
from vqp.metrics import box_mask, msssim, psnr  # noqa: E402
from vqp.video import DETECT_SIZE, VideoOptions, detect_clip, encode_video  # noqa: E402


START = {"car-detection": 60}  # its first 60 frames show an empty parking lot: nothing to detect


def excerpt(src: Path, frames: int, folder: Path) -> Path:
    """``frames`` frames from START (default 0), nearly lossless (x264 crf 10), so every encoder sees the same input."""
    start = START.get(src.stem, 0)
    dst = folder / f"{src.stem}_{start}_{frames}.mp4"
    with av.open(str(src)) as ic, av.open(str(dst), "w") as oc:
        vs = ic.streams.video[0]
        rate = vs.average_rate or 25
        os_ = oc.add_stream("libx264", rate=rate)
        os_.width, os_.height, os_.pix_fmt = vs.width - vs.width % 2, vs.height - vs.height % 2, "yuv420p"
        os_.options = {"crf": "10", "preset": "veryfast"}
        for i, f in enumerate(ic.decode(vs)):
            if i < start:
                continue
            if i >= start + frames:
                break
            g = f.reformat(width=os_.width, height=os_.height, format="yuv420p")
            g.pts, g.time_base = i - start, 1 / Fraction(rate)
            for p in os_.encode(g):
                oc.mux(p)
        for p in os_.encode():
            oc.mux(p)
    return dst


def luma(path: Path) -> list[torch.Tensor]:
    with av.open(str(path)) as c:
        return [torch.from_numpy(f.to_ndarray(format="gray")) for f in c.decode(video=0)]


def scores(ref: list[torch.Tensor], out: list[torch.Tensor], dets, msssim_every: int = 2) -> dict[str, float]:
    """Per-frame PSNR-Y averaged over frames, inside/outside the original frames' boxes; MS-SSIM on every k-th."""
    acc: dict[str, list[float]] = {}
    for i, (a, b, d) in enumerate(zip(ref, out, dets)):
        boxes = [(x.x1, x.y1, x.x2, x.y2) for x in d.boxes]
        m = box_mask(boxes, *a.shape)
        vals = {"psnr_full": psnr(a, b)}
        if m.any():
            vals["psnr_obj"] = psnr(a, b, m)
        if (~m).any():
            vals["psnr_bg"] = psnr(a, b, ~m)
        if i % msssim_every == 0:
            vals["msssim_full"] = msssim(a, b)
            objs = [(msssim(a[int(y1):math.ceil(y2), int(x1):math.ceil(x2)], b[int(y1):math.ceil(y2), int(x1):math.ceil(x2)]),
                     (x2 - x1) * (y2 - y1)) for x1, y1, x2, y2 in boxes if x2 - x1 >= 2 and y2 - y1 >= 2]
            objs = [(s, w) for s, w in objs if not math.isnan(s)]
            if objs:
                vals["msssim_obj"] = sum(s * w for s, w in objs) / sum(w for _, w in objs)
            if (~m).any():
                vals["msssim_bg"] = msssim(a, torch.where(m, a, b))
        for k, v in vals.items():
            if not math.isinf(v):
                acc.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def selected_clips(args) -> list:
    """The shared clips whose names contain one of the --clips keys (all when none given)."""
    return [c for c in clips() if not args.clips or any(k in c.name for k in args.clips.split(","))]


def run_quality(args) -> list[dict]:
    det = load_detector(imgsz=args.imgsz)
    measure = load_detector(imgsz=args.measure_imgsz)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="vqp-bench-"))
    base = VideoOptions(**json.loads(args.set or "{}"))
    for clip in selected_clips(args):
        src = excerpt(clip, args.frames, tmp)
        ref = luma(src)
        dets = detect_clip(src, measure)  # the object region: boxes on the original frames, every frame
        with av.open(str(src)) as c:
            s = c.streams.video[0]
            pix_rate = s.width * s.height * float(s.average_rate)
        for bpp in args.bpp:
            bitrate = int(bpp * pix_rate)
            row = {"clip": clip.stem, "frames": len(ref), "codec": "libx264", "target_kbps": bitrate / 1000}
            for name, o in (("plain", replace(base, preprocess=False)), ("vqp", base)):
                o = replace(o, bitrate=bitrate, two_pass=not args.abr, crf=None)
                out = tmp / f"{clip.stem}_{bpp}_{name}.mp4"
                st = encode_video(src, out, o, detector=det)
                row[name] = {"kbps": st.bitrate / 1000, **scores(ref, luma(out), dets)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not args.mjpeg:
            continue
        # MJPEG at matched size: plain at quality Q; vqp at the best quality whose file is no larger
        plain = encode_video(src, tmp / "mj_plain.avi", replace(base, codec="mjpeg", preprocess=False,
                                                                 mjpeg_quality=args.mjpeg_q), detector=det)
        best = None
        for q in range(args.mjpeg_q, 101, 2):
            st = encode_video(src, tmp / "mj_vqp.avi", replace(base, codec="mjpeg", mjpeg_quality=q), detector=det)
            if st.bytes > plain.bytes:
                break
            best = (q, st, scores(ref, luma(tmp / "mj_vqp.avi"), dets))
        row = {"clip": clip.stem, "frames": len(ref), "codec": "mjpeg", "plain_quality": args.mjpeg_q,
               "plain": {"kbps": plain.bitrate / 1000, **scores(ref, luma(tmp / "mj_plain.avi"), dets)}}
        if best:
            row["vqp_quality"] = best[0]
            row["vqp"] = {"kbps": best[1].bitrate / 1000, **best[2]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_match(args) -> list[dict]:
    """`--match-crf C` against plain x264 at CRF C: both sizes, the CRF found, object and background quality."""
    det = load_detector(imgsz=args.imgsz)
    measure = load_detector(imgsz=args.measure_imgsz)
    tmp = Path(tempfile.mkdtemp(prefix="vqp-bench-"))
    base = VideoOptions(**json.loads(args.set or "{}"))
    rows = []
    for clip in selected_clips(args):
        src = excerpt(clip, args.frames, tmp)
        ref, dets = luma(src), detect_clip(src, measure)
        for c in args.crf:
            plain = encode_video(src, tmp / "plain.mp4", replace(base, preprocess=False, crf=c), detector=det)
            st = encode_video(src, tmp / "vqp.mp4", replace(base, match_crf=c), detector=det)
            row = {"clip": clip.stem, "frames": st.frames, "codec": "libx264", "match_crf": c, "vqp_crf": st.crf,
                   "plain": {"kbps": plain.bitrate / 1000, "bytes": plain.bytes, **scores(ref, luma(tmp / "plain.mp4"), dets)},
                   "vqp": {"kbps": st.bitrate / 1000, "bytes": st.bytes, **scores(ref, luma(tmp / "vqp.mp4"), dets)}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_speed(args) -> list[dict]:
    """Wall time of `vqp encode` (default settings unless --set) and of a plain encode through the same
    path (same codec and preset, no detector, no quantizer), alternated; the best of --repeat runs."""
    det = load_detector(imgsz=args.imgsz)
    tmp = Path(tempfile.mkdtemp(prefix="vqp-bench-"))
    base = VideoOptions(**json.loads(args.set or "{}"))
    rows = []
    for clip in selected_clips(args):
        src = excerpt(clip, args.frames, tmp)
        encode_video(src, tmp / "warm.mp4", base, detector=det)  # model warm-up, not timed
        t = {"plain": [], "vqp": []}
        for _ in range(args.repeat):
            for name, o in (("plain", replace(base, preprocess=False)), ("vqp", base)):
                t0 = time.perf_counter()
                st = encode_video(src, tmp / f"{name}.mp4", o, detector=det)
                t[name].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in t.items()}
        row = {"clip": clip.stem, "frames": st.frames, "plain_s": best["plain"], "vqp_s": best["vqp"],
               "plain_fps": st.frames / best["plain"], "vqp_fps": st.frames / best["vqp"],
               "ratio": best["vqp"] / best["plain"], "device": "cuda" if torch.cuda.is_available() else "cpu"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(paths: list[str]) -> str:
    """Markdown tables from the JSON rows of earlier quality or speed runs."""
    out = []
    for path in paths:
        rows = json.loads(Path(path).read_text())
        if "ratio" in rows[0]:
            out += ["| clip | frames | plain s | vqp s | plain fps | vqp fps | vqp / plain |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['clip']} | {r['frames']} | {r['plain_s']:.2f} | {r['vqp_s']:.2f} | {r['plain_fps']:.0f} | "
                    f"{r['vqp_fps']:.0f} | {r['ratio']:.2f}x |" for r in rows]
        else:
            out += ["| clip | codec | kb/s plain / vqp | PSNR-Y obj | PSNR-Y bg | PSNR-Y full | MS-SSIM obj | MS-SSIM bg | MS-SSIM full |",
                    "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                p, v = r["plain"], r.get("vqp")
                if v is None:
                    out.append(f"| {r['clip']} | {r['codec']} | no vqp point fits | | | | | | |")
                    continue
                cell = lambda k, f: f"{p[k]:{f}} / {v[k]:{f}} ({v[k] - p[k]:+{f}})" if k in p and k in v else "n/a"
                codec = r["codec"] + (f" q{r['plain_quality']} / q{r['vqp_quality']}" if r["codec"] == "mjpeg" else "")
                if "match_crf" in r:
                    codec += f" crf {r['match_crf']:g} / {r['vqp_crf']:g}"
                out.append(f"| {r['clip']} | {codec} | {p['kbps']:.0f} / {v['kbps']:.0f} | {cell('psnr_obj', '.2f')} | "
                           f"{cell('psnr_bg', '.2f')} | {cell('psnr_full', '.2f')} | {cell('msssim_obj', '.4f')} | "
                           f"{cell('msssim_bg', '.4f')} | {cell('msssim_full', '.4f')} |")
        out.append("")
    return "\n".join(out)


def plot(paths: list[str], out: str) -> None:
    """Bars of vqp - plain PSNR-Y (objects, background) per clip and bitrate, from quality runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for path in paths for r in json.loads(Path(path).read_text()) if r["codec"] == "libx264"]
    labels = [f"{r['clip'].split('_')[0]}\n{r['target_kbps']:.0f} kb/s" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
    for off, key, name in ((-0.2, "psnr_obj", "objects"), (0.2, "psnr_bg", "background")):
        ax.bar(x + off, [r["vqp"][key] - r["plain"][key] for r in rows], 0.4, label=name)
    ax.axhline(1.0, color="k", ls=":", lw=1, label="+1 dB target (objects)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("PSNR-Y, vqp - plain x264 (dB)")
    ax.set_title("Equal bitrate, x264 medium two-pass, 120-frame excerpts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["quality", "match", "speed", "table", "plot"])
    p.add_argument("files", nargs="*", help="table/plot: JSON files written by --json")
    p.add_argument("--png", default="benchmarks/video_quality.png", help="plot: output file")
    p.add_argument("--frames", type=int, default=120, help="excerpt length per clip (default 120)")
    p.add_argument("--clips", help="comma-separated name parts to select clips (default: all 4)")
    p.add_argument("--bpp", type=float, nargs="+", default=[0.04, 0.1], help="target bits per pixel (default 0.04 0.1)")
    p.add_argument("--crf", type=float, nargs="+", default=[23.0], help="match: plain CRFs to match (default 23)")
    p.add_argument("--abr", action="store_true", help="one-pass ABR instead of two-pass")
    p.add_argument("--no-mjpeg", dest="mjpeg", action="store_false", help="skip the MJPEG comparison")
    p.add_argument("--mjpeg-q", type=int, default=50, help="plain MJPEG quality for the matched-size comparison")
    p.add_argument("--imgsz", type=int, default=DETECT_SIZE, help=f"vqp's detector input size (default {DETECT_SIZE})")
    p.add_argument("--measure-imgsz", type=int, default=640, help="input size of the detector that marks objects for the metrics")
    p.add_argument("--repeat", type=int, default=3, help="speed: timed runs of each (best kept)")
    p.add_argument("--set", help='VideoOptions overrides as JSON, e.g. \'{"strength": 6}\'')
    p.add_argument("--json", help="write all rows to this file")
    args = p.parse_args()
    if args.what == "table":
        print(table(args.files))
        return
    if args.what == "plot":
        plot(args.files, args.png)
        return
    torch.set_num_threads(int(os.environ.get("VQP_THREADS", 2)))
    rows = {"quality": run_quality, "match": run_match, "speed": run_speed}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
