"""Analysis tables on constructed runs: Pareto front, grid, per-layer sensitivity, summaries."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sweep.analysis import grid_table, layer_sensitivity, pareto_front, runs_frame
from sweep.run_records import RunRecord, latest_per_config
from sweep.summary import failure_lines, ranked


def run(name, anti, act, level, acc, size, status="FINISHED", start=0, config_hash=None, **params):
    metrics = {} if acc is None else {"boolq_acc": acc, "size_bytes": size * 1e6, "float_size_bytes": 4e8}
    return RunRecord(
        run_id=name,
        name=name,
        status=status,
        config_hash=config_hash or name,
        start_time=start,
        end_time=None,
        metrics=metrics,
        params={
            "anti_method.name": anti,
            "act_method": str(act),
            "disable_level": level,
            "scheme.name": "w8a8",
            "calib.name": "boolq50",
            **params,
        },
        tags={"error": "ValueError: boom\ntraceback"} if status == "FAILED" else {},
    )


def test_runs_frame_reads_axes_metrics_and_anti_settings():
    frame = runs_frame([run("a", "m1", 1, "L0", 0.7, 100, **{"anti_method.params.alpha": "0.8"})])
    row = frame.iloc[0]
    assert (row.anti_method, row.act_method, row.disable_level, row.anti_params) == ("m1", "1", "L0", "alpha=0.8")
    assert row.size_mb == 100 and row.compression == 4.0


def test_pareto_front_keeps_exactly_the_undominated_runs():
    frame = pd.DataFrame(
        {
            "name": ["small-bad", "small-good", "mid", "big-best", "big-worse", "dup-of-mid"],
            "size_mb": [100, 100, 150, 200, 250, 150],
            "boolq_acc": [0.60, 0.65, 0.70, 0.75, 0.74, 0.70],
        }
    )
    front = pareto_front(frame)
    # small-bad is beaten by small-good at the same size; big-worse by big-best; equal points both stay.
    assert list(front["name"]) == ["small-good", "mid", "dup-of-mid", "big-best"]

    def beaten(r) -> bool:
        here = (r.size_mb, r.boolq_acc)
        return any(
            o.size_mb <= r.size_mb and o.boolq_acc >= r.boolq_acc and (o.size_mb, o.boolq_acc) != here
            for _, o in frame.iterrows()
        )

    brute = [i for i, r in frame.iterrows() if not beaten(r)]
    assert sorted(front.index) == sorted(brute)


def test_grid_table_orders_levels_numerically_and_leaves_holes_for_missing_cells():
    records = [
        run("a", "m1", 1, "L10", 0.5, 1),
        run("b", "m1", 1, "L2", 0.6, 1),
        run("c", "none", 1, "L2", 0.4, 1),
        run("d", "m1", 2, "L2", None, 1, status="FAILED"),
    ]
    table = grid_table(runs_frame(records))
    assert list(table.columns) == ["L2", "L10"]
    assert table.loc[("m1", "1"), "L10"] == 0.5 and math.isnan(table.loc[("none", "1"), "L10"])
    assert ("m1", "2") not in table.index


def _report(float_by_level: list[str], range_params: dict[str, float]) -> list[dict]:
    return [
        {
            "name": name,
            "status": "float" if name in float_by_level else "quantized",
            "reason": "disable_level L1: range_param 9 ranks 1" if name in float_by_level else "",
            "range_param": rp,
        }
        for name, rp in range_params.items()
    ]


def test_layer_sensitivity_credits_each_level_step_to_the_layers_it_added():
    rp = {"q": 9.0, "down": 5.0, "o": 1.0}
    records = [
        run("L0", "m1", 1, "L0", 0.50, 1),
        run("L1", "m1", 1, "L1", 0.60, 1),
        run("L2", "m1", 1, "L2", 0.58, 1),
        run("other-L1", "none", 1, "L1", 0.40, 1),  # its L0 is missing: no step
    ]
    reports = {
        "L0": _report([], rp),
        "L1": _report(["q"], rp),
        "L2": _report(["q", "down"], rp),
        "other-L1": _report(["down"], {"q": 7.0, "down": 3.0, "o": 1.0}),
    }
    table = layer_sensitivity(runs_frame(records), reports).set_index("layer")
    assert table.loc["q", "gain"] == pytest.approx(0.10) and table.loc["q", "steps"] == 1
    assert table.loc["down", "gain"] == pytest.approx(-0.02) and table.loc["down", "steps"] == 1
    assert math.isnan(table.loc["o", "gain"]) and table.loc["o", "steps"] == 0
    assert table.loc["q", "range_param"] == pytest.approx((9.0 * 3 + 7.0) / 4)
    assert list(table.index) == ["q", "down", "o"]  # by range_param


def test_latest_finished_run_per_config_and_the_summary_order():
    records = [
        run("old-finished", "m1", 1, "L0", 0.9, 100, start=1, config_hash="h1"),
        run("new-finished", "m1", 1, "L0", 0.8, 100, start=2, config_hash="h1"),
        run("later-failed", "m1", 1, "L0", None, 0, status="FAILED", start=3, config_hash="h1"),
        run("only-failed", "m1", 1, "L1", None, 0, status="FAILED", start=4, config_hash="h2"),
        run("big", "none", 1, "L0", 0.8, 300, start=5),
    ]
    latest = latest_per_config(records)
    assert [r.name for r in latest] == ["new-finished", "only-failed", "big"]
    assert [r.name for r in ranked(latest)] == ["new-finished", "big"]  # same accuracy: smaller first
    assert failure_lines(latest) == ["FAILED only-failed (only-fai): ValueError: boom"]
