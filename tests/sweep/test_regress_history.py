"""Every check is recorded as an MLflow run (links, provenance, metrics, artifacts), and
``--history`` orders the recorded checks of a recipe by date, shows their commits and versions,
marks the regression, and logs the table and plot as artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from quant.errors import QuantInputError
from sweep.regress import main
from sweep.regress_record import HISTORY_PLOT_ARTIFACT, HISTORY_TABLE_ARTIFACT, ROLE_TAG, record_check
from sweep_helpers import artifact_paths, fake_check, fake_origin

REGRESS_EXPERIMENT = "llama-quant-regress"
CHAMPION = [True] * 180 + [False] * 20  # 0.90 on 200 rows
DAY_MS = 86_400_000
T0 = 1_780_000_000_000  # 2026-05-28


def test_history_orders_checks_and_marks_the_regression(tiny_inputs, tmp_path, capsys):
    uri, root = tiny_inputs.uri, str(tiny_inputs.artifacts)
    dropped = [True] * 150 + [False] * 50  # 30 of the champion's right answers lost: drop 0.15
    # Recorded out of order: the history sorts by date, not by when a check was logged.
    record_check(
        fake_check(CHAMPION, dropped), uri, REGRESS_EXPERIMENT, root, fake_origin("cccccccc", "2.6.0"), T0 + 2 * DAY_MS
    )
    record_check(fake_check(CHAMPION, CHAMPION), uri, REGRESS_EXPERIMENT, root, fake_origin("aaaaaaaa", "2.5.1"), T0)
    record_check(
        fake_check(CHAMPION, CHAMPION), uri, REGRESS_EXPERIMENT, root, fake_origin("bbbbbbbb", "2.5.1"), T0 + DAY_MS
    )
    png = tmp_path / "history.png"
    assert main(["--history", "--plot", str(png), *tiny_inputs.tool_args()]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "recipe w8a8-m1-act1-L0-boolq50 (content key 0123456789abcdef), gate on boolq_acc, 3 checks"
    rows = lines[2:5]
    assert [row.split()[2] for row in rows] == ["aaaaaaaa", "bbbbbbbb", "cccccccc"]
    assert [row.split()[:2] for row in rows] == [
        ["2026-05-28", "20:26"],
        ["2026-05-29", "20:26"],
        ["2026-05-30", "20:26"],
    ]
    assert "2.5.1" in rows[1] and "2.6.0" in rows[2]
    assert rows[0].rstrip().endswith("pass") and rows[1].rstrip().endswith("pass")
    assert rows[2].rstrip().endswith("fail  <- REGRESSION") and "+0.1500" in rows[2]
    assert png.stat().st_size > 10_000
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(REGRESS_EXPERIMENT).experiment_id
    history_run = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'history'")[0]
    assert artifact_paths(client, history_run.info.run_id) == {HISTORY_PLOT_ARTIFACT, HISTORY_TABLE_ARTIFACT}
    table = client.download_artifacts(history_run.info.run_id, HISTORY_TABLE_ARTIFACT, str(tmp_path))
    assert Path(table).read_text(encoding="utf-8").strip() == out.split("\nplot: run")[0].strip()


def test_history_without_checks_is_bad_input(tiny_inputs, capsys):
    assert main(["--history", *tiny_inputs.tool_args()]) == 2
    assert "no experiment 'llama-quant-regress'" in capsys.readouterr().err


def test_gold_log_likelihood_gate_judges_the_per_example_scores():
    """The same rows gated on the gold answer's log-likelihood (nats): 30 of 200 answers lose
    1 nat each (boolq_result_dict's -0.5 -> -1.5), a mean drop of 0.15 > margin 0.05."""
    from omegaconf import OmegaConf

    from eval.boolq import BoolQResult
    from sweep.regress import gate
    from sweep_helpers import boolq_result_dict

    champion = BoolQResult.from_dict(boolq_result_dict(CHAMPION))
    dropped = BoolQResult.from_dict(boolq_result_dict([True] * 150 + [False] * 50))
    cfg = OmegaConf.create({"metric": "boolq_gold_ll", "margin": 0.05, "alpha": 0.05})
    _, verdict = gate(champion, dropped, cfg)
    assert verdict.status == "fail" and verdict.method == "paired-bootstrap-t" and verdict.drop == 0.15
    _, same = gate(champion, champion, cfg)
    assert same.status == "pass" and same.upper_bound == 0.0
    with pytest.raises(QuantInputError, match="metric: invalid value 'ppl'; valid values: boolq_acc, boolq_gold_ll"):
        gate(champion, champion, OmegaConf.merge(cfg, {"metric": "ppl"}))
