"""Run outputs: points and summary as JSON and CSV, BD-rate table, rate-distortion PNGs, Markdown."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from vqp.imageio import write_atomic

PANELS = (("psnr_obj", "object PSNR-Y (dB)"), ("msssim_obj", "object MS-SSIM"), ("psnr_full", "full PSNR-Y (dB)"),
          ("msssim_full", "full MS-SSIM"), ("psnr_bg", "background PSNR-Y (dB)"), ("map", "mAP50-95"))
BD_COLUMNS = ("psnr_obj_gt", "msssim_obj_gt", "psnr_obj_det", "msssim_obj_det", "psnr_full", "msssim_full",
              "psnr_bg_gt", "psnr_bg_det", "map50", "map", "time_ratio")


def _csv(rows: list[dict]) -> bytes:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def _metric(row: dict, m: str) -> str | None:
    """The column behind a panel: ground-truth region when the group has it, else the detector's."""
    for k in (f"{m}_gt", f"{m}_det", m):
        if row.get(k) is not None:
            return k
    return None


def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def plot(rows: list[dict], group: str, dest: Path) -> None:
    """One PNG per group: each panel is a metric against bits per pixel (or kbps for clips)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["group"] == group]
    rate = "kbps" if any("kbps" in r for r in rows) else "bpp"
    original = next((r for r in rows if r["codec"] == "original"), None)  # detector on the uncompressed input
    rows = [r for r in rows if r.get(rate) is not None]
    panels = [(m, label) for m, label in PANELS if any(_metric(r, m) for r in rows)]
    fig, axes = plt.subplots(2, math.ceil(len(panels) / 2), figsize=(5 * math.ceil(len(panels) / 2), 8), squeeze=False)
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    for ax, (m, label) in zip(axes.flat, panels):
        for c in codecs:
            pts = sorted((r[rate], r[k]) for r in rows if r["codec"] == c and (k := _metric(r, m)) and r.get(k) is not None)
            if pts:
                ax.plot(*zip(*pts), "o-" if c.startswith("vqp") else "s--", label=c, ms=3)
        if m == "map" and original and original.get("map") is not None:
            ax.axhline(original["map"], color="grey", lw=0.8, ls=":", label="uncompressed")
        k = next((_metric(r, m) for r in rows if _metric(r, m)), m)
        ax.set_title(f"{label}" + (" [GT boxes]" if k.endswith("_gt") else " [detector boxes]" if k.endswith("_det") else ""))
        ax.set_xlabel(rate)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(group)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_atomic(dest, buf.getvalue())


def markdown(name: str, rows: list[dict], bd: list[dict], plots: dict[str, str], versions: set[str]) -> str:
    out = [f"# Benchmark run `{name}`", "", f"vqp source: {', '.join(sorted(versions))}", ""]
    if len(versions) > 1:
        out += ["**Warning: the cached points come from different versions of vqp's source; start a fresh "
                "output folder for comparable numbers.**", ""]
    out += ["## BD-rate (%) against the anchor (negative: fewer bits for the same quality)", "",
            "BD-rates use each curve's Pareto front (bjontegaard, pchip); n/a: fewer than 3 points on a front or "
            "no value. `(mean)` rows average, per metric, the clips that have a value.", "",
            "| group | codec | anchor | " + " | ".join(BD_COLUMNS) + " |", "|" + "---|" * (3 + len(BD_COLUMNS))]
    for r in bd:
        out.append(f"| {r['group']} | {r['codec']} | {r['anchor']} | " +
                   " | ".join(_fmt(r.get(k), 1) for k in BD_COLUMNS) + " |")
    for group in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == group]
        rate = "kbps" if any("kbps" in r for r in g) else "bpp"
        cols = [k for k in ("psnr_full", "msssim_full", "psnr_obj_gt", "msssim_obj_gt", "psnr_obj_det",
                            "msssim_obj_det", "psnr_bg_gt", "psnr_bg_det", "map50", "map", "fps") if any(k in r for r in g)]
        out += ["", f"## {group}", "", f"![{group}]({plots[group]})", "",
                f"| codec | value | n | bytes | {rate} | " + " | ".join(cols) + " |", "|" + "---|" * (5 + len(cols))]
        for r in g:
            out.append(f"| {r['codec']} | {r['value']} | {r['n']} | {_fmt(r.get('bytes'), 0)} | {_fmt(r.get(rate))} | " +
                       " | ".join(_fmt(r.get(k), 4 if k.startswith(("msssim", "map")) else 2) for k in cols) + " |")
    if "tradeoff" in plots:
        out += ["", "## Object gain against full-frame cost", "", f"![trade-off]({plots['tradeoff']})"]
    return "\n".join(out) + "\n"


def tradeoff(bd: list[dict], dest: Path) -> bool:
    """Object PSNR-Y BD-rate against full-frame PSNR-Y BD-rate of every codec, one panel per anchor
    (down and left is better): where a setting sits between gain and cost. False when nothing to plot."""
    pts = [r for r in bd if r.get("psnr_full") is not None and (r.get("psnr_obj_det") or r.get("psnr_obj_gt")) is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    anchors = list(dict.fromkeys(r["anchor"] for r in pts))
    fig, axes = plt.subplots(1, len(anchors), figsize=(6 * len(anchors), 5), squeeze=False)
    for ax, anchor in zip(axes[0], anchors):
        for group in dict.fromkeys(r["group"] for r in pts):
            rs = [r for r in pts if r["anchor"] == anchor and r["group"] == group]
            if not rs:
                continue
            xs = [r["psnr_full"] for r in rs]
            ys = [r.get("psnr_obj_gt") if r.get("psnr_obj_gt") is not None else r["psnr_obj_det"] for r in rs]
            ax.plot(xs, ys, "o-" if "(mean)" in group else "o:", lw=2 if "(mean)" in group else 0.8, label=group, ms=4)
            for x, y, r in zip(xs, ys, rs):
                ax.annotate(r["codec"], (x, y), fontsize=6, alpha=0.8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("full-frame PSNR-Y BD-rate (%)")
        ax.set_ylabel("object PSNR-Y BD-rate (%)")
        ax.set_title(f"against {anchor}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_atomic(dest, buf.getvalue())
    return True


def write(out: Path, name: str, records: list[dict], rows: list[dict], bd: list[dict]) -> dict[str, Path]:
    """Write every output of a run into ``out``; returns what was written."""
    files = {"points.json": json.dumps(records, indent=1).encode(), "points.csv": _csv(records),
             "summary.json": json.dumps({"summary": rows, "bd_rate": bd}, indent=1).encode(),
             "summary.csv": _csv(rows), "bdrate.csv": _csv(bd) if bd else b""}
    plots = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        fname = "rd_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in group) + ".png"
        plot(rows, group, out / fname)
        plots[group] = fname
    if tradeoff(bd, out / "tradeoff.png"):
        plots["tradeoff"] = "tradeoff.png"
    versions = {r["vqp_src"] for r in records if "vqp_src" in r}
    files["summary.md"] = markdown(name, rows, bd, plots, versions).encode()
    for fname, data in files.items():
        write_atomic(out / fname, data)
    return {k: out / k for k in [*files, *plots.values()]}
