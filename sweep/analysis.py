"""Tables for analysing a sweep: runs as a DataFrame, the accuracy/size Pareto front, the
anti × act × level grid, and per-layer sensitivity. Used by the sweep summary and the notebook."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from sweep.run_records import RunRecord

_LEVEL_RE = re.compile(r"^L(\d+)$")
# Settings that, with the level, define one "ladder" of disable_level runs in layer_sensitivity.
LADDER_KEYS = ("scheme", "calib", "anti_method", "anti_params", "act_method", "eval_limit")


def level_number(level: Any) -> int:
    """``"L3"`` → 3 (unknown spellings sort last)."""
    match = _LEVEL_RE.match(str(level))
    return int(match.group(1)) if match else 10**6


def runs_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run: the sweep axes (from its params), status and the metrics worth plotting."""
    rows = []
    for r in records:
        p, m = r.params, r.metrics
        prefix = "anti_method.params."
        anti_params = {k.removeprefix(prefix): v for k, v in p.items() if k.startswith(prefix)}
        rows.append(
            {
                "run_id": r.run_id,
                "name": r.name,
                "status": r.status,
                "config_hash": r.config_hash,
                "scheme": p.get("scheme.name", ""),
                "calib": p.get("calib.name", ""),
                "anti_method": p.get("anti_method.name", ""),
                "anti_params": ", ".join(f"{k}={v}" for k, v in sorted(anti_params.items())),
                "act_method": p.get("act_method", ""),
                "disable_level": p.get("disable_level", ""),
                "eval_limit": p.get("eval.boolq.limit", ""),
                "boolq_acc": m.get("boolq_acc"),
                "float_boolq_acc": m.get("float_boolq_acc"),
                "delta": m.get("vs_float_accuracy_delta"),
                "mcnemar_p": m.get("vs_float_mcnemar_p"),
                "flip_rate": m.get("vs_float_flip_rate"),
                "size_mb": m["size_bytes"] / 1e6 if "size_bytes" in m else None,
                "compression": (
                    m["float_size_bytes"] / m["size_bytes"] if m.get("size_bytes") and "float_size_bytes" in m else None
                ),
                "job_s": m.get("job_s"),
                "error": r.error,
            }
        )
    return pd.DataFrame(rows)


def pareto_front(frame: pd.DataFrame, size: str = "size_mb", accuracy: str = "boolq_acc") -> pd.DataFrame:
    """The finished runs no other run beats on both axes (smaller or equal size and higher or equal
    accuracy, strictly better on one), sorted by size."""
    done = frame.dropna(subset=[size, accuracy])
    keep = []
    for i, row in done.iterrows():
        dominated = (
            (done[size] <= row[size])
            & (done[accuracy] >= row[accuracy])
            & ((done[size] < row[size]) | (done[accuracy] > row[accuracy]))
        )
        if not dominated.any():
            keep.append(i)
    return done.loc[keep].sort_values([size, accuracy], ascending=[True, False])


def grid_table(frame: pd.DataFrame, value: str = "boolq_acc") -> pd.DataFrame:
    """``value`` on the anti × act (rows) × disable_level (columns) grid; NaN where no run finished.

    Repeated configs (e.g. several α of one method) are averaged.
    """
    done = frame.dropna(subset=[value])
    table = done.pivot_table(index=["anti_method", "act_method"], columns="disable_level", values=value, aggfunc="mean")
    return table[sorted(table.columns, key=level_number)]


def layer_sensitivity(frame: pd.DataFrame, layer_reports: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Per linear: its ``range_param`` (the reference's outlier score, from the runs' layer reports)
    and the accuracy it gave back when ``disable_level`` kept it in float.

    Within one ladder of runs that differ only in their level, going from L(n-1) to Ln keeps a few
    more linears in float; their accuracy gain is ``acc(Ln) - acc(L(n-1))``, shared among them.
    Columns: ``layer``, ``range_param`` (mean over runs), ``gain`` (mean over the steps that
    added the layer; NaN if none did), ``steps``.
    """
    rows: dict[str, dict[str, list[float]]] = {}
    for reports in layer_reports.values():
        for layer in reports:
            if layer.get("range_param") is not None:
                rows.setdefault(layer["name"], {"range_param": [], "gain": []})["range_param"].append(
                    float(layer["range_param"])
                )
    done = frame.dropna(subset=["boolq_acc"])
    done = done[done["run_id"].isin(list(layer_reports))]
    for _, ladder in done.groupby(list(LADDER_KEYS), dropna=False):
        by_level = {level_number(r["disable_level"]): r for _, r in ladder.iterrows()}
        for n in sorted(by_level):
            if n - 1 not in by_level:
                continue
            before = _level_float_layers(layer_reports[by_level[n - 1]["run_id"]])
            after = _level_float_layers(layer_reports[by_level[n]["run_id"]])
            gain = float(by_level[n]["boolq_acc"] - by_level[n - 1]["boolq_acc"])
            for name in sorted(after - before):
                rows.setdefault(name, {"range_param": [], "gain": []})["gain"].append(gain)
    table = pd.DataFrame(
        [
            {
                "layer": name,
                "range_param": sum(v["range_param"]) / len(v["range_param"]) if v["range_param"] else float("nan"),
                "gain": sum(v["gain"]) / len(v["gain"]) if v["gain"] else float("nan"),
                "steps": len(v["gain"]),
            }
            for name, v in rows.items()
        ]
    )
    if table.empty:
        return pd.DataFrame(columns=["layer", "range_param", "gain", "steps"])
    return table.sort_values("range_param", ascending=False, na_position="last").reset_index(drop=True)


def _level_float_layers(report: Sequence[Mapping[str, Any]]) -> set[str]:
    return {
        layer["name"]
        for layer in report
        if layer.get("status") == "float" and str(layer.get("reason", "")).startswith("disable_level")
    }
