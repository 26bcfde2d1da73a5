"""Load generator for ``vqp serve``: requests/s and p50/p99 latency, with and without micro-batching.

    python -m benchmarks.service --endpoint detect jpeg --concurrency 1 8 32 --max-batch 1 8

Starts one server per --max-batch value (max batch 1 = no micro-batching) and, for each endpoint
and concurrency, runs the servers back to back on the same requests: 640x480 JPEG crops of the
Kodak images. Besides latency it reads where the time went from each response's Server-Timing
header (decode, detect = queue wait + detector, encode) and the batch sizes from /metrics.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from .datasets import kodak

ROOT = Path(__file__).resolve().parent.parent


def images(n: int = 24) -> list[bytes]:
    """Centre 640x480 crops of the Kodak images (portrait ones rotated), as JPEG q95."""
    out = []
    for item in kodak(n):
        im = Image.fromarray(item.rgb)
        if im.height > im.width:
            im = im.transpose(Image.Transpose.ROTATE_90)
        left, top = (im.width - 640) // 2, (im.height - 480) // 2
        buf = io.BytesIO()
        im.crop((left, top, left + 640, top + 480)).save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


class Server:
    def __init__(self, max_batch: int, max_wait_ms: float, jobs: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true", "YOLO_VERBOSE": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "vqp", "serve", "--port", str(self.port),
                                      "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                                      "--queue-size", "256", "--jobs-dir", str(jobs)],
                                     env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start; see {log}")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics").text
        out = {}
        for name in ("vqp_detect_batch_size", "vqp_detect_batch_seconds", "vqp_detect_queue_wait_seconds"):
            for part in ("sum", "count"):
                m = re.search(rf"^{name}_{part} (\S+)$", text, re.M)
                out[f"{name}_{part}"] = float(m.group(1)) if m else 0.0
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def load(url: str, endpoint: str, bodies: list[bytes], concurrency: int, requests: int, params: dict) -> dict:
    """``requests`` POSTs from ``concurrency`` clients; returns throughput, latency and stage means."""
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    errors = 0
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def worker():
            nonlocal errors
            for i in todo:
                t = time.perf_counter()
                r = await client.post(f"/v1/{endpoint}", content=bodies[i % len(bodies)], params=params,
                                      headers={"Content-Type": "image/jpeg"})
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors += 1
                    continue
                for k, v in re.findall(r"(\w+);dur=([\d.]+)", r.headers.get("server-timing", "")):
                    stages.setdefault(k, []).append(float(v))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {"requests": requests, "errors": errors, "seconds": round(wall, 2), "rps": round(requests / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            **{f"{k}_ms": round(float(np.mean(v)), 1) for k, v in stages.items()}}


def scaling(bodies: list[bytes], sizes=(1, 2, 4, 8, 16, 32), frames: int = 32) -> list[dict]:
    """In-process, no HTTP: detector ms per frame by batch size, and save_jpeg's search per image."""
    from vqp.detect import load_detector
    from vqp.imageio import load_image
    from vqp.jpeg import save_jpeg

    pics = [load_image(b) for b in bodies]
    det = load_detector(batch=max(sizes))
    det([p.rgb for p in pics[:2]])  # warm up
    rows = []
    for n in sizes:
        t = time.perf_counter()
        for i in range(0, frames, n):
            det([pics[(i + k) % len(pics)].rgb for k in range(n)])
        rows.append({"batch": n, "detector_ms_per_frame": round(1000 * (time.perf_counter() - t) / frames, 1)})
    dets = det([p.rgb for p in pics[:8]])
    for kw in ({"match_quality": 75}, {"quality": 75}):
        t = time.perf_counter()
        for p, d in zip(pics[:8], dets):
            save_jpeg(p, detections=d, **kw)
        rows.append({"save_jpeg": kw, "ms_per_image": round(1000 * (time.perf_counter() - t) / 8, 1)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", nargs="+", default=["detect", "jpeg"], choices=["detect", "jpeg"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--max-batch", nargs="+", type=int, default=[1, 8], help="one server per value; 1 = no batching")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--requests", type=int, default=96, help="requests per run (at least 4 per client)")
    p.add_argument("--jpeg-params", default="match_quality=75", help="query string for /v1/jpeg")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "service.json")
    p.add_argument("--scaling", action="store_true", help="only time the detector by batch size and save_jpeg, in process")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    bodies = images()
    if a.scaling:
        for row in scaling(bodies):
            print(json.dumps(row), flush=True)
        return 0
    jpeg_params = dict(kv.split("=", 1) for kv in a.jpeg_params.split("&") if kv)
    tmp = Path(tempfile.mkdtemp(prefix="vqp-bench-"))
    servers = {b: Server(b, a.max_wait_ms, tmp / f"jobs{b}", tmp / f"server{b}.log") for b in a.max_batch}
    rows = []
    try:
        for ep in a.endpoint:
            params = jpeg_params if ep == "jpeg" else {}
            for c in a.concurrency:
                n = max(a.requests, 4 * c)
                for b, s in servers.items():  # back to back on the same inputs
                    asyncio.run(load(s.url, ep, bodies, min(c, 4), min(c, 4) * 2, params))  # warm up
                    before = s.metrics()
                    r = asyncio.run(load(s.url, ep, bodies, c, n, params))
                    after = s.metrics()
                    d = {k: after[k] - before[k] for k in after}
                    calls = d["vqp_detect_batch_size_count"] or 1
                    r.update(endpoint=ep, concurrency=c, max_batch=b,
                             mean_batch=round(d["vqp_detect_batch_size_sum"] / calls, 2),
                             detector_ms_per_frame=round(1000 * d["vqp_detect_batch_seconds_sum"]
                                                         / max(1, d["vqp_detect_batch_size_sum"]), 1),
                             queue_wait_ms=round(1000 * d["vqp_detect_queue_wait_seconds_sum"]
                                                 / max(1, d["vqp_detect_queue_wait_seconds_count"]), 1))
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    finally:
        for s in servers.values():
            s.stop()
    a.out.write_text(json.dumps({"command": " ".join(["python -m benchmarks.service", *(argv or sys.argv[1:])]),
                                 "rows": rows}, indent=1))
    print("\n| endpoint | clients | max batch | req/s | p50 ms | p99 ms | mean batch | detector ms/frame | "
          "queue wait ms | decode ms | detect ms | encode ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['endpoint']} | {r['concurrency']} | {r['max_batch']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} "
              f"| {r['mean_batch']} | {r['detector_ms_per_frame']} | {r['queue_wait_ms']} | {r.get('decode_ms', '')} "
              f"| {r.get('detect_ms', '')} | {r.get('encode_ms', '')} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
