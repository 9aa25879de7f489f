"""A picture of the per-layer report: output SQNR of every linear, float layers marked.

Kept out of the quantizer's core imports (matplotlib is only needed by whoever logs the plot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend is chosen before pyplot loads


def plot_layer_sqnr(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write a PNG of SQNR (dB) per linear in module order; float layers as red marks at the bottom.

    ``rows``: ``QuantResult.layer_report()`` or the rows of ``quant_layer_report.json``.
    """
    path = Path(path)
    positions = range(len(rows))
    measured = [(i, r["sqnr_db"]) for i, r in zip(positions, rows) if r.get("sqnr_db") is not None]
    floats = [i for i, r in zip(positions, rows) if r.get("status") == "float"]
    fig, ax = plt.subplots(figsize=(max(8.0, len(rows) * 0.06), 4.0))
    if measured:
        ax.plot([i for i, _ in measured], [v for _, v in measured], ".", color="tab:blue", label="quantized: SQNR")
    floor = min([v for _, v in measured], default=0.0) - 3.0
    if floats:
        ax.plot(floats, [floor] * len(floats), "|", color="tab:red", markersize=12, label="kept float")
    ax.set_xlabel("linear (module order)")
    ax.set_ylabel("output SQNR vs float layer (dB)")
    ax.set_title(title or f"{len(measured)} quantized, {len(floats)} float of {len(rows)} linears")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
