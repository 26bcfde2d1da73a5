"""y4m reading and writing speed and peak memory: vqp.y4m against PyAV's yuv4mpegpipe demuxer and muxer.

    python -m benchmarks.y4m_speed --frames 300 --size 1920x1080

The source is the PETS2009 clip scaled to ``--size``, written once as y4m by the ffmpeg CLI. Each
reader turns the file into av.VideoFrames (what `vqp filter` hands its pipeline); each writer turns
those frames back into y4m on a pipe drained by cat, and only the writing is timed. Every case runs
in a fresh process, so its peak memory (VmHWM over the resident size after imports) is its own.
A script rather than a `python -m benchmarks CONFIG` run: that harness measures encodes, not I/O.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from benchmarks.datasets import DATA
from vqp.video.io import planes, to_frame
from vqp.y4m import Y4mHeader, read_frames, read_header, write_frame

CASES = ("read vqp", "read pyav", "write vqp", "write pyav")


def rss(field: str) -> int:
    """A VmRSS / VmHWM figure of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def vqp_frames(f):
    h = read_header(f)
    for i, p in enumerate(read_frames(f, h)):
        yield to_frame(p, h.fmt, h.width, h.height, i, 1 / h.rate)


def pyav_frames(f):
    with av.open(f, format="yuv4mpegpipe") as c:
        yield from c.decode(video=0)


def vqp_writer(out, first: av.VideoFrame):
    out.write(Y4mHeader(first.width, first.height, first.format.name, 1 / first.time_base, []).encode())
    return lambda fr: write_frame(out, planes(fr, fr.format.name, fr.width, fr.height)), lambda: None


def pyav_writer(out, first: av.VideoFrame):
    c = av.open(out, "w", format="yuv4mpegpipe")
    s = c.add_stream("wrapped_avframe", rate=1 / first.time_base)
    s.width, s.height, s.pix_fmt = first.width, first.height, first.format.name

    def close():
        c.mux(s.encode())
        c.close()
    return lambda fr: c.mux(s.encode(fr)), close


def run_case(case: str, src: Path) -> dict:
    """One case in this process: seconds spent in the measured part, frames, bytes and peak memory."""
    base = rss("VmRSS")
    kind, who = case.split()
    sink = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, bufsize=1 << 20)  # as `vqp filter`
    with open(src, "rb") as f, sink.stdin as out:
        t0 = time.perf_counter()
        frames = (vqp_frames if who == "vqp" or kind == "write" else pyav_frames)(f)
        n, spent = 0, 0.0
        put = close = None
        for fr in frames:
            n += 1
            if kind == "read":
                continue
            t = time.perf_counter()
            if put is None:
                put, close = (vqp_writer if who == "vqp" else pyav_writer)(out, fr)
            put(fr)
            spent += time.perf_counter() - t
        if kind == "write":
            t = time.perf_counter()
            close()
            spent += time.perf_counter() - t
        else:
            spent = time.perf_counter() - t0
    sink.wait()
    return {"case": case, "seconds": spent, "frames": n, "bytes": src.stat().st_size,
            "peak_mb": (rss("VmHWM") - base) / 2**20}


def make_source(dst: Path, frames: int, size: str) -> Path:
    w, h = size.split("x")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i",
                    str(DATA / "video" / "vtest_pets2009_480x360.avi"), "-vf", f"scale={w}:{h}", "-frames:v",
                    str(frames), "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", str(dst)], check=True)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case; the fastest is reported")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child process
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.src)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = make_source(Path(tmp) / "src.y4m", a.frames, a.size)
        print(f"{a.frames} frames of {a.size} yuv420p, {src.stat().st_size / 2**20:.0f} MiB; best of {a.repeat}; "
              f"load average {os.getloadavg()[0]:.1f}")
        runs: dict[str, list[dict]] = {c: [] for c in CASES}
        for _ in range(a.repeat):  # the cases take turns, so a change in the machine's load hits them all
            for case in CASES:
                runs[case].append(json.loads(subprocess.run(
                    [sys.executable, "-m", "benchmarks.y4m_speed", "--case", case, "--src", str(src)],
                    check=True, capture_output=True, text=True).stdout))
        for case, rs in runs.items():
            r = min(rs, key=lambda r: r["seconds"])
            print(f"{case:11s} {r['bytes'] / r['seconds'] / 2**20:7.0f} MiB/s {r['frames'] / r['seconds']:7.1f} "
                  f"frames/s  peak +{max(x['peak_mb'] for x in rs):.0f} MiB")


if __name__ == "__main__":
    main()
