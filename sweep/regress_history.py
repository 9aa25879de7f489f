"""The history of a recipe's regression checks: a table per recipe and a plot of the drop with its
confidence bounds against commit and date, regressions marked (``python -m sweep.regress --history``
and the analysis notebook)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import groupby

import matplotlib

matplotlib.use("Agg")  # history plots are written to files and MLflow, never shown
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from sweep.regress_record import CheckRecord

VERSION_COLUMNS = (("torch", "version.torch"), ("transformers", "version.transformers"), ("lm_eval", "version.lm_eval"))
HARNESS_VERSION_TAG = "version.llama-quant-harness"
_COLOURS = {"pass": "tab:green", "fail": "tab:red", "undecided": "tab:orange"}


def by_recipe(records: Iterable[CheckRecord]) -> dict[tuple[str, str], list[CheckRecord]]:
    """Checks grouped by (recipe content key, gated metric), each group oldest first; groups in
    order of their first check."""
    ordered = sorted(records, key=lambda r: (r.start_time, r.run_id))
    first_seen = {(r.recipe, r.gated_metric): i for i, r in reversed(list(enumerate(ordered)))}
    grouped = groupby(
        sorted(ordered, key=lambda r: (first_seen[r.recipe, r.gated_metric], r.start_time)),
        key=lambda r: (r.recipe, r.gated_metric),
    )
    return {key: list(checks) for key, checks in grouped}


def check_date(record: CheckRecord) -> str:
    """The check's start, UTC, to the minute."""
    return datetime.fromtimestamp(record.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def commit_label(record: CheckRecord) -> str:
    """Short commit, ``+`` when the work tree had local changes."""
    commit = record.tags.get("git_commit", "unknown")[:8]
    return commit + ("+" if record.tags.get("git_dirty") == "true" else "")


def _number(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def history_table(records: Iterable[CheckRecord]) -> str:
    """Per recipe, one line per check: date, commit, versions, accuracies, drop with its bounds,
    weights, verdict; ``<- REGRESSION`` marks a failed check."""
    blocks = []
    for (recipe, metric), checks in by_recipe(records).items():
        name = checks[-1].recipe_name or recipe
        header = f"recipe {name} (content key {recipe}), gate on {metric}, {len(checks)} checks"
        columns = ["date (UTC)", "commit", *(name for name, _ in VERSION_COLUMNS), "harness", "n"]
        columns += ["candidate", "baseline", "drop", "bounds", "margin", "weights", "verdict"]
        rows = [columns]
        for check in checks:
            versions = [check.tags.get(tag, "?") for _, tag in VERSION_COLUMNS]
            lower, upper = check.metric("gate_lower_bound"), check.metric("gate_upper_bound")
            rows.append(
                [
                    check_date(check),
                    commit_label(check),
                    *versions,
                    check.tags.get(HARNESS_VERSION_TAG, "?"),
                    _number(check.metric("gate_n"), ".0f"),
                    _number(check.metric("candidate_acc"), ".4f"),
                    _number(check.metric("baseline_acc"), ".4f"),
                    _number(check.metric("gate_drop"), "+.4f"),
                    f"[{_number(lower, '+.4f')}, {_number(upper, '+.4f')}]",
                    _number(check.metric("gate_margin"), "g"),
                    _weights(check),
                    check.verdict + ("  <- REGRESSION" if check.verdict == "fail" else ""),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        blocks.append("\n".join([header, *lines]))
    return "\n\n".join(blocks) if blocks else "no regression checks recorded"


def _weights(check: CheckRecord) -> str:
    identical = check.tags.get("regress.bytes_identical", "")
    if identical == "true":
        return "identical"
    if identical == "false":
        changed = check.metric("tensors_changed")
        return "differ" if math.isnan(changed) else f"{changed:.0f} tensors differ"
    return "-"


def history_figure(records: Iterable[CheckRecord]) -> Figure:
    """One panel per recipe and metric: the drop vs the baseline of each check (point) with its
    one-sided (1 − α) bounds (bar), the margin (dashed), regressions marked; x = commit and date."""
    groups = by_recipe(records)
    fig, axes = plt.subplots(max(len(groups), 1), 1, figsize=(9, 3.2 * max(len(groups), 1)), squeeze=False)
    for ax, ((recipe, metric), checks) in zip(axes[:, 0], groups.items()):
        xs = list(range(len(checks)))
        for x, check in zip(xs, checks):
            drop = check.metric("gate_drop")
            lower, upper = check.metric("gate_lower_bound"), check.metric("gate_upper_bound")
            colour = _COLOURS.get(check.verdict, "tab:gray")
            ax.plot([x, x], [lower, upper], color=colour, linewidth=2, alpha=0.6)
            ax.plot(x, drop, "o", color=colour)
            if check.verdict == "fail":
                ax.annotate(
                    "regression", (x, upper), textcoords="offset points", xytext=(0, 6), ha="center", color="tab:red"
                )
        margins = {check.metric("gate_margin") for check in checks}
        for margin in margins:
            ax.axhline(margin, linestyle="--", color="gray", linewidth=1)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xlim(-0.5, len(checks) - 0.5)
        ax.margins(y=0.25)  # room for the "regression" labels
        ax.set_xticks(xs, [f"{commit_label(c)}\n{check_date(c)}" for c in checks], fontsize=7)
        ax.set_ylabel(f"{metric} drop vs baseline")
        title = f"{checks[-1].recipe_name or recipe}: {metric} drop with one-sided bounds; dashed: margin"
        ax.set_title(title, fontsize=9)
        handles = [plt.Line2D([], [], marker="o", color=c, linestyle="", label=v) for v, c in _COLOURS.items()]
        ax.legend(handles=handles, fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
