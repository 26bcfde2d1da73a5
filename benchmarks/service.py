"""Load generator for ``vqp serve``: requests/s and p50/p99 latency, with and without micro-batching,
and the admission-control load test (issue 11).

    python -m benchmarks.service --endpoint detect jpeg --concurrency 1 8 32 --max-batch 1 8
    python -m benchmarks benchmarks/configs/service_load.yaml      # a declared load test (run_config)

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
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

from vqp.errors import VqpError

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
    """One ``vqp serve`` on a free loopback port, with the given flags."""

    def __init__(self, flags: list[str], jobs: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "true", "YOLO_VERBOSE": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "vqp", "serve", "--port", str(self.port),
                                      "--jobs-dir", str(jobs), *flags],
                                     env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log}")
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

    def counters(self, name: str) -> dict[str, float]:
        """Samples of one counter by label set."""
        text = httpx.get(self.url + "/metrics").text
        return {labels: float(v) for labels, v in re.findall(rf"^{name}({{[^}}]*}})? (\S+)$", text, re.M)}

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


async def burst(url: str, endpoint: str, body: bytes, clients: int, rounds: int, params: dict,
                honour_retry_after: bool) -> dict:
    """``clients`` concurrent clients, each sending ``rounds`` requests one after another (after a 503,
    waiting its Retry-After first when ``honour_retry_after``). Counts answers by status and times them;
    a request without an answer (connection error, client timeout) counts as lost."""
    codes: Counter = Counter()
    lat: dict[int, list[float]] = {}
    retry_after: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        async def one_client():
            for _ in range(rounds):
                t = time.perf_counter()
                try:
                    r = await client.post(f"/v1/{endpoint}", content=body, params=params,
                                          headers={"Content-Type": "image/jpeg"})
                except httpx.HTTPError:
                    codes["lost"] += 1
                    continue
                lat.setdefault(r.status_code, []).append(time.perf_counter() - t)
                codes[r.status_code] += 1
                if r.status_code == 503:
                    retry_after.append(int(r.headers.get("retry-after", "0")))
                    if honour_retry_after:
                        await asyncio.sleep(retry_after[-1])

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start

    def pct(status, q):
        return round(1000 * float(np.percentile(lat[status], q)), 1) if lat.get(status) else None

    return {"endpoint": endpoint, "clients": clients, "rounds": rounds, "params": params, "seconds": round(wall, 1),
            "ok": codes[200], "busy": codes[503], "timeout": codes[504], "lost": codes["lost"],
            "other": sum(n for k, n in codes.items() if k not in (200, 503, 504, "lost")),
            "ok_p50_ms": pct(200, 50), "ok_p99_ms": pct(200, 99), "ok_max_ms": pct(200, 100),
            "busy_p50_ms": pct(503, 50), "busy_max_ms": pct(503, 100),
            "retry_after_s": sorted(set(retry_after))}


LOAD_KEYS = {"kind", "name", "out", "image", "server", "runs"}


def table(rows: list[dict], columns: dict) -> None:
    """Print rows as a markdown table; each column is a row key or a function of the row."""
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(c(r) if callable(c) else r[c]) for c in columns.values()) + " |")


def load_config(path: Path) -> dict:
    """A load-test declaration (``kind: service``; see benchmarks/configs/service_load.yaml)."""
    d = yaml.safe_load(path.read_text())
    unknown = set(d) - LOAD_KEYS
    if unknown or not d.get("runs"):
        raise VqpError(f"{path}: needs 'runs'; known keys: {', '.join(sorted(LOAD_KEYS))}")
    return d


def is_load_config(path: Path) -> bool:
    try:
        d = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and d.get("kind") == "service"


def run_config(path: Path, out: str | Path | None = None) -> int:
    """Each declared run against a fresh ``vqp serve`` (so one run's load does not leak into the next);
    writes ``load.json`` and prints a table."""
    import ultralytics

    d = load_config(Path(path))
    name = d.get("name", Path(path).stem)
    out = Path(out or d.get("out") or ROOT / "out" / "bench" / name)
    out.mkdir(parents=True, exist_ok=True)
    image = Path(d.get("image", "bus.jpg"))
    if not image.is_file():
        image = Path(ultralytics.__file__).parent / "assets" / image
    body = image.read_bytes()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in (d.get("server") or {}).items()]
    rows = []
    for i, run in enumerate(d["runs"]):
        parts = run.get("together") or [run]  # bursts sent at the same time to one server

        async def bursts(url):
            return await asyncio.gather(*(burst(url, p["endpoint"], body, p.get("clients", 64), p.get("rounds", 1),
                                                p.get("params") or {}, p.get("honour_retry_after", True))
                                          for p in parts))

        s = Server(flags, out / f"jobs{i}", out / f"server{i}.log")
        try:
            found = asyncio.run(bursts(s.url))
            rejected = {k: v for k, v in s.counters("vqp_rejected_total").items() if v}
            late = sum(s.counters("vqp_deadline_exceeded_total").values())
        finally:
            s.stop()
        for row in found:
            row.update(run=i, server_rejected=rejected, server_504=late)
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "load.json").write_text(json.dumps({"config": str(path), "server": flags, "image": str(image),
                                               "rows": rows}, indent=1))
    table(rows, {"run": "run", "endpoint": lambda r: f"/v1/{r['endpoint']}",
                 "params": lambda r: "&".join(f"{k}={v}" for k, v in r["params"].items()),
                 "clients x rounds": lambda r: f"{r['clients']} x {r['rounds']}", "200": "ok", "503": "busy",
                 "504": "timeout", "lost": "lost", "200 p50 ms": "ok_p50_ms", "200 p99 ms": "ok_p99_ms",
                 "503 p50 ms": "busy_p50_ms", "503 max ms": "busy_max_ms", "seconds": "seconds"})
    return 0


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
    servers = {b: Server(["--max-batch", str(b), "--max-wait-ms", str(a.max_wait_ms), "--queue-size", "256"],
                         tmp / f"jobs{b}", tmp / f"server{b}.log") for b in a.max_batch}
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
    table(rows, {"endpoint": "endpoint", "clients": "concurrency", "max batch": "max_batch", "req/s": "rps",
                 "p50 ms": "p50_ms", "p99 ms": "p99_ms", "mean batch": "mean_batch",
                 "detector ms/frame": "detector_ms_per_frame", "queue wait ms": "queue_wait_ms",
                 "decode ms": lambda r: r.get("decode_ms", ""), "detect ms": lambda r: r.get("detect_ms", ""),
                 "encode ms": lambda r: r.get("encode_ms", ""), "errors": "errors"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
