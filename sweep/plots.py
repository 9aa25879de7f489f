"""Figures for runs and sweeps (matplotlib ``Figure`` objects, no pyplot state, any backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from sweep.analysis import pareto_front


def layer_range_figure(layer_report: Sequence[Mapping[str, Any]]) -> Figure:
    """``range_param`` of every linear's input (log scale), float layers in orange."""
    rows = [row for row in layer_report if row.get("range_param") is not None]
    names = [row["name"] for row in rows]
    values = [float(row["range_param"]) for row in rows]
    colors = ["tab:orange" if row["status"] == "float" else "tab:blue" for row in rows]
    fig = Figure(figsize=(max(6.0, 0.12 * len(names)), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=colors)
    ax.set_yscale("log")
    ax.set_xlabel("linear (module order)")
    ax.set_ylabel("range_param")
    ax.set_title("Input outlier score per linear (orange: kept in float)")
    step = max(1, len(names) // 20)
    ax.set_xticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)], rotation=90, fontsize=6)
    return fig


def pareto_figure(frame: pd.DataFrame, float_accuracy: float | None = None) -> Figure:
    """BoolQ accuracy against output size; the Pareto front joined and labelled."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    done = frame.dropna(subset=["size_mb", "boolq_acc"])
    ax.scatter(done["size_mb"], done["boolq_acc"], color="tab:gray", alpha=0.6, label="runs")
    front = pareto_front(done)
    ax.plot(front["size_mb"], front["boolq_acc"], "o-", color="tab:red", label="Pareto front")
    for _, row in front.iterrows():
        point = (row["size_mb"], row["boolq_acc"])
        ax.annotate(row["name"], point, fontsize=7, xytext=(4, 4), textcoords="offset points")
    if float_accuracy is not None and not math.isnan(float_accuracy):
        ax.axhline(float_accuracy, color="tab:green", linestyle="--", label="float model")
    ax.set_xlabel("output size (MB)")
    ax.set_ylabel("BoolQ accuracy")
    ax.legend(loc="lower right")
    return fig


def grid_figure(table: pd.DataFrame, title: str = "BoolQ accuracy") -> Figure:
    """Heat map of a :func:`sweep.analysis.grid_table` (blank cells: no finished run)."""
    fig = Figure(figsize=(1.2 * max(3, table.shape[1]) + 2, 0.5 * max(2, table.shape[0]) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(table.to_numpy(dtype=float), aspect="auto", cmap="viridis")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{a} / act {b}" for a, b in table.index])
    for (i, j), value in pd.DataFrame(table.to_numpy(dtype=float)).stack().items():
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xlabel("disable_level")
    ax.set_ylabel("anti_method / act_method")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return fig


def sensitivity_figure(table: pd.DataFrame, top: int = 30) -> Figure:
    """The ``top`` linears by range_param, with the accuracy they gave back when kept in float."""
    head = table.head(top)
    fig = Figure(figsize=(8, 0.25 * max(4, len(head)) + 1.5), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    positions = range(len(head))
    left.barh(positions, head["range_param"], color="tab:blue")
    left.set_xscale("log")
    left.set_xlabel("range_param")
    left.set_yticks(positions, head["layer"], fontsize=7)
    left.invert_yaxis()
    right.barh(positions, head["gain"].fillna(0.0), color="tab:green")
    right.set_xlabel("accuracy gain when kept float")
    fig.suptitle("Per-layer sensitivity")
    return fig
