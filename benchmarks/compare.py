"""Two codecs of one benchmark run, group by group: which one's BD-rate against the anchor is lower.

    python -m benchmarks.compare out/bench/repair_clips_640 vqp-roi vqp-roi-repaired [--anchor x264]

Reads the run's ``bdrate.csv`` (percent bitrate at equal quality against the anchor: lower is
better) and prints Markdown: one row per group (``corruption/clip``; the per-corruption means are
left out) and, per metric, in how many groups the second codec is better, the two means and the
median difference. A difference under 0.05 points is a tie: the tables print one decimal. The
issue 14 clip comparisons in RESULTS.md ("Degraded clips (item 6)") come from it.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

METRICS = ("psnr_obj_det", "msssim_obj_det", "psnr_obj_det_input", "msssim_obj_det_input")
TIE = 0.05


def load(run: Path, anchor: str, codecs: tuple[str, str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{group: {codec: {metric: BD-rate or None}}} for the per-clip groups of ``run``."""
    out: dict = {}
    with open(run / "bdrate.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["anchor"] == anchor and r["codec"] in codecs and "/" in r["group"]:
                out.setdefault(r["group"], {})[r["codec"]] = {m: float(r[m]) if r.get(m) else None for m in METRICS}
    return out


def better(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and b < a - TIE


def markdown(table: dict, codecs: tuple[str, str]) -> str:
    a, b = codecs
    fmt = lambda v: "n/a" if v is None else f"{v:+.1f}"  # noqa: E731
    lines = ["| group | " + " | ".join(f"{m}: {a} / {b}" for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for g in sorted(table, key=lambda g: g.split("/")):
        x, y = table[g].get(a, {}), table[g].get(b, {})
        lines.append(f"| {g} | " + " | ".join(f"{fmt(x.get(m))} / {fmt(y.get(m))}" + (" ✓" if better(x.get(m), y.get(m)) else "")
                                             for m in METRICS) + " |")
    lines += ["", f"| metric | {b} better | mean, {a} -> {b} | median difference |", "|---|---|---|---|"]
    for m in METRICS:
        pairs = [(t[a][m], t[b][m]) for t in table.values() if a in t and b in t and None not in (t[a][m], t[b][m])]
        if pairs:
            lines.append(f"| {m} | {sum(better(x, y) for x, y in pairs)}/{len(pairs)} | "
                         f"{statistics.mean(x for x, _ in pairs):+.1f} -> {statistics.mean(y for _, y in pairs):+.1f} | "
                         f"{statistics.median(y - x for x, y in pairs):+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a benchmark run's output folder (holds bdrate.csv)")
    ap.add_argument("codecs", nargs=2, help="the baseline codec, then the one compared with it")
    ap.add_argument("--anchor", default="x264", help="the BD-rate anchor both codecs are measured against")
    a = ap.parse_args(argv)
    try:
        table = load(a.run, a.anchor, tuple(a.codecs))
    except OSError as e:
        print(f"compare: cannot read {a.run / 'bdrate.csv'}: {e.strerror}", file=sys.stderr)
        return 2
    if not table:
        print(f"compare: no per-group rows for {' and '.join(a.codecs)} against {a.anchor}", file=sys.stderr)
        return 2
    print(markdown(table, tuple(a.codecs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
