"""Tables, plots and the JSON report of the robustness benchmark and the repair."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from ..imageio import write_atomic


def table(cells: dict[str, dict[int, float]], clean: float | None = None) -> str:
    """Markdown table of mAP50-95 (in %) per corruption (rows) and severity (columns)."""
    sevs = sorted({s for sev in cells.values() for s in sev})
    lines = ["| corruption | " + " | ".join(f"s{s}" for s in sevs) + " | mean |",
             "|---|" + "---|" * (len(sevs) + 1)]
    if clean is not None:
        lines.append("| clean | " + " | ".join(f"{100 * clean:.1f}" for _ in sevs) + f" | {100 * clean:.1f} |")
    for c, sev in cells.items():
        vals = [sev.get(s, float("nan")) for s in sevs]
        mean = sum(vals) / len(vals)
        lines.append(f"| {c} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + f" | {100 * mean:.1f} |")
    return "\n".join(lines)


def _save_fig(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def heatmap(panels: dict[str, dict[str, dict[int, float]]], path: str | Path, title: str = "mAP50-95 (%)") -> None:
    """One heat map per model: corruptions down, severities across, shared colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(next(iter(panels.values())).keys())
    sevs = sorted({s for cells in panels.values() for sev in cells.values() for s in sev})
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 0.7 * len(sevs) * len(panels) + 1.6 * len(panels),
                                                        0.8 + 0.32 * len(rows)), squeeze=False)
    vmax = max(100 * v for cells in panels.values() for sev in cells.values() for v in sev.values())
    for ax, (name, cells) in zip(axes[0], panels.items()):
        m = np.array([[100 * cells[r].get(s, math.nan) for s in sevs] for r in rows])
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < vmax / 2 else "black")
        ax.set_xticks(range(len(sevs)), [str(s) for s in sevs])
        ax.set_yticks(range(len(rows)), rows if ax is axes[0][0] else [""] * len(rows), fontsize=8)
        ax.set_xlabel("severity")
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=title)
    _save_fig(fig, path)


def block_plot(rows: list[dict], path: str | Path, k: int = 3) -> None:
    """Per-block feature drift and loss attribution, ranked blocks marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [r["index"] for r in rows]
    fig, ax = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    ax[0].bar(idx, [r["drift"] for r in rows], color=["C3" if r.get("rank", k + 1) <= k else "C0" for r in rows])
    ax[0].set_ylabel("feature drift")
    ax[1].bar(idx, [r["taylor"] for r in rows], color="C1")
    ax[1].set_ylabel("|grad . shift|")
    ax[1].set_yscale("log")
    ax[1].set_xticks(idx, [f"{r['index']}\n{r['type']}" for r in rows], fontsize=6)
    for r in rows:
        if "rank" in r:
            ax[0].text(r["index"], r["drift"], str(r["rank"]), ha="center", va="bottom", fontsize=7)
    ax[0].set_title(f"block vulnerability (numbers: rank, 1 = most vulnerable; red: the top {k})", fontsize=9)
    _save_fig(fig, path)


def write_json(obj, path: str | Path) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, default=float) + "\n").encode())


def contact_sheet(images, path: str | Path, size: int = 128, cols: int = 3) -> None:
    """Thumbnails of ``images`` (RGB arrays) in a grid, as one PNG (the examples of a failure cluster)."""
    from PIL import Image

    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * size, rows * size), (255, 255, 255))
    for i, rgb in enumerate(images):
        im = Image.fromarray(rgb)
        im.thumbnail((size, size))
        sheet.paste(im, ((i % cols) * size, (i // cols) * size))
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    write_atomic(path, buf.getvalue())
