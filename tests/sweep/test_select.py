"""python -m sweep.select: the rule on constructed runs, the registry on a constructed experiment,
and promotion of a real sweep's champion whose weights are then fetched from MLflow alone."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from quant.reload import load_quantized
from sweep.compose import compose_tool_config
from sweep.runs import RunRecord
from sweep.select import SelectionRule, configured_rule, main, rank, search_objective
from sweep_helpers import EXPERIMENT

WEIGHT_FILE = "quant_model_weight_w8a8.safetensors"


def record(
    name: str, acc: float | None, float_acc: float | None = 0.8, p: float = 0.5, size: float = 100.0, t: int = 0
):
    metrics = {"size_bytes": size, "vs_float_mcnemar_p": p}
    if acc is not None:
        metrics["boolq_acc"] = acc
    if float_acc is not None:
        metrics["float_boolq_acc"] = float_acc
        if acc is not None:
            metrics["vs_float_accuracy_delta"] = acc - float_acc
    return RunRecord(name, name, "FINISHED", name, 0, None, metrics)


def test_rule_most_accurate_eligible_run_wins():
    runs = [
        record("drop-too-large", 0.75),
        record("significantly-worse", 0.79, p=0.01),
        record("best", 0.8125, size=300),
        record("close-but-smaller", 0.81, size=200),
        record("no-baseline", 0.95, float_acc=None),
    ]
    verdicts = rank(runs, SelectionRule())
    assert [v.record.name for v in verdicts] == [
        "best",
        "close-but-smaller",
        "no-baseline",
        "significantly-worse",
        "drop-too-large",
    ]
    assert [v.eligible for v in verdicts] == [True, True, False, False, False]
    assert verdicts[2].reason == "no float baseline to compare with"
    assert verdicts[3].reason.startswith("significantly worse (p=0.010")
    assert verdicts[4].reason == "drop 0.0500 > 0.02"


def test_rule_ties_within_tolerance_go_to_the_smaller_output():
    runs = [record("best", 0.8125, size=300), record("close-but-smaller", 0.81, size=200)]
    assert rank(runs, SelectionRule(tie_tolerance=0.01))[0].record.name == "close-but-smaller"
    assert rank(runs, SelectionRule(tie_tolerance=0.001))[0].record.name == "best"


def test_rule_without_significance_test_and_with_no_tolerance_for_drops():
    worse = record("worse", 0.79, p=0.01)
    assert rank([worse], SelectionRule(mcnemar_alpha=None))[0].eligible
    assert not rank([worse], SelectionRule(mcnemar_alpha=None, max_drop=0.0))[0].eligible
    improved = record("improved", 0.9, p=0.001)  # significantly *better*: eligible
    assert rank([improved], SelectionRule())[0].eligible


def test_search_objective_is_the_rule_metric_and_ranks_ineligible_runs_below_eligible_ones():
    runs = [
        record("drop-too-large", 0.75),
        record("significantly-worse", 0.79, p=0.01),
        record("best", 0.8125, size=300),
        record("eligible-worse", 0.79),
    ]
    rule = SelectionRule()
    scores = {r.name: search_objective(r.metrics, rule) for r in runs}
    assert scores == {
        "drop-too-large": 0.75 - 1,
        "significantly-worse": 0.79 - 1,
        "best": 0.8125,
        "eligible-worse": 0.79,
    }
    # What a search maximizes is what sweep.select crowns (tie-breaks aside).
    assert max(scores, key=scores.get) == rank(runs, rule)[0].record.name
    assert math.isnan(search_objective({"float_boolq_acc": 0.8}, rule))  # a failed job has no value
    # The app reads the rule that sweep.select applies when given no override.
    assert configured_rule() == SelectionRule.from_mapping(dict(compose_tool_config("select", []).rule))


def test_rule_rejects_bad_settings():
    with pytest.raises(Exception, match=r"rule.max_drop: invalid value -0.1"):
        SelectionRule(max_drop=-0.1)
    with pytest.raises(Exception, match=r"rule.mcnemar_alpha: invalid value 1.5"):
        SelectionRule(mcnemar_alpha=1.5)
    with pytest.raises(Exception, match=r"rule.alpha: unknown setting"):
        SelectionRule.from_mapping({"alpha": 0.1})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_job(client, experiment_id, root: Path, name: str, acc: float, size: float, p: float = 0.5, **params) -> str:
    """A finished job run as the sweep logs one, with a save_directory holding its weight file."""
    save = root / name
    save.mkdir(parents=True)
    (save / WEIGHT_FILE).write_bytes(name.encode() * 100)
    (save / "quant_model_description.json").write_text('{"model_quant_type": "W8A8"}')
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            "config_hash": name,
            "sweep.role": "job",
            "save_directory": str(save),
            f"sha256.{WEIGHT_FILE}": _sha(save / WEIGHT_FILE),
        },
    )
    run_id = run.info.run_id
    for key, value in {"boolq_acc": acc, "float_boolq_acc": 0.8, "vs_float_accuracy_delta": acc - 0.8}.items():
        client.log_metric(run_id, key, value)
    client.log_metric(run_id, "vs_float_mcnemar_p", p)
    client.log_metric(run_id, "size_bytes", size)
    for key, value in {"model.name": "tiny", "eval.boolq.limit": "8", **params}.items():
        client.log_param(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture()
def constructed(tiny_inputs):
    client = MlflowClient(tiny_inputs.uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(tiny_inputs.root / "artifacts").as_uri())
    root = tiny_inputs.root / "saved"
    ids = {
        "drop-too-large": _log_job(client, experiment_id, root, "drop-too-large", 0.75, 50),
        "significantly-worse": _log_job(client, experiment_id, root, "significantly-worse", 0.79, 60, p=0.01),
        "best": _log_job(client, experiment_id, root, "best", 0.8125, 300),
        "close-but-smaller": _log_job(client, experiment_id, root, "close-but-smaller", 0.81, 200),
    }
    failed = client.create_run(experiment_id, run_name="failed", tags={"config_hash": "failed"})
    client.log_metric(failed.info.run_id, "boolq_acc", 0.99)
    client.set_terminated(failed.info.run_id, "FAILED")
    return tiny_inputs, client, ids


def test_dry_run_shows_the_choice_and_changes_nothing(constructed, capsys):
    inputs, client, ids = constructed
    assert main(["--dry-run", *inputs.tool_args()]) == 0
    out = capsys.readouterr().out
    first_row = next(line for line in out.splitlines() if line.startswith("1 "))
    assert "best" in first_row and "CHAMPION" in first_row
    assert "failed" not in out  # only finished runs are candidates
    assert f"would promote best (run {ids['best']})" in out
    with pytest.raises(MlflowException):
        client.get_registered_model("llama-quant")
    assert not client.list_artifacts(ids["best"], "model")


def test_select_registers_the_champion_and_moves_the_alias(constructed, capsys):
    inputs, client, ids = constructed
    assert main(inputs.tool_args()) == 0
    version = client.get_model_version_by_alias("llama-quant", "champion")
    assert version.run_id == ids["best"]
    assert "promoted best" in capsys.readouterr().out
    # The weights were logged from save_directory after their sha256 matched.
    logged = {a.path for a in client.list_artifacts(ids["best"], "model")}
    assert f"model/{WEIGHT_FILE}" in logged
    # Same choice again: no new version.
    assert main(inputs.tool_args()) == 0
    assert "already champion" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'llama-quant'")) == 1
    # A looser tie rule picks the smaller run: a second version, the alias moves.
    assert main([*inputs.tool_args(), "rule.tie_tolerance=0.01"]) == 0
    moved = client.get_model_version_by_alias("llama-quant", "champion")
    assert moved.run_id == ids["close-but-smaller"] and moved.version != version.version


def test_select_refuses_weights_that_changed_on_disk(constructed, capsys):
    inputs, client, _ = constructed
    (inputs.root / "saved" / "best" / WEIGHT_FILE).write_bytes(b"tampered")
    assert main(inputs.tool_args()) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("llama-quant", "champion")


def test_select_without_an_eligible_run_exits_1(constructed, capsys):
    inputs, _, _ = constructed
    assert main([*inputs.tool_args(), "filter=\"tags.config_hash = 'drop-too-large'\""]) == 1
    assert "no run satisfies the rule" in capsys.readouterr().out


def test_select_refuses_runs_that_cannot_be_compared(constructed, capsys):
    inputs, client, _ = constructed
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    _log_job(client, experiment_id, inputs.root / "saved", "other-model", 0.9, 10, **{"model.name": "other"})
    assert main(inputs.tool_args()) == 2
    assert "the runs differ in model.name" in capsys.readouterr().err


def test_select_bad_input_is_one_line(tiny_inputs, capsys):
    assert main([*tiny_inputs.tool_args(), "tracking.experiment_name=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep.select: error: tracking.experiment_name: no experiment 'nope'")
    assert main([*tiny_inputs.tool_args(), "rule.max_drop=-1"]) == 2
    assert "rule.max_drop: invalid value -1" in capsys.readouterr().err


def test_promoted_weights_of_a_real_sweep_come_back_from_mlflow_alone(sweep8, tmp_path, capsys):
    inputs = sweep8.inputs
    parent = next(r for r in sweep8.runs() if r.data.tags.get("sweep.role") == "parent")
    assert main(["--dry-run", f"sweep={parent.info.run_id}", *inputs.tool_args()]) == 0
    ranked_rows = [line for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert len(ranked_rows) == 7 and "CHAMPION" in ranked_rows[0]  # the sweep's 7 finished configs
    assert main(inputs.tool_args()) == 0
    # The expected champion, computed here from the runs: eligible under the default rule, then
    # highest accuracy, then smallest output, then earliest.
    jobs = [r for r in sweep8.runs() if r.data.tags.get("sweep.role") == "job" and r.info.status == "FINISHED"]
    eligible = [
        r
        for r in jobs
        if r.data.metrics["vs_float_accuracy_delta"] >= -0.02
        and not (r.data.metrics["vs_float_accuracy_delta"] < 0 and r.data.metrics["vs_float_mcnemar_p"] < 0.05)
    ]
    expected = min(
        eligible, key=lambda r: (-r.data.metrics["boolq_acc"], r.data.metrics["size_bytes"], r.info.start_time)
    )
    client = sweep8.client
    version = client.get_model_version_by_alias("llama-quant", "champion")
    assert version.run_id == expected.info.run_id
    capsys.readouterr()

    mlflow.set_tracking_uri(inputs.uri)
    fetched = Path(mlflow.artifacts.download_artifacts("models:/llama-quant@champion", dst_path=str(tmp_path / "dl")))
    assert _sha(fetched / WEIGHT_FILE) == expected.data.tags[f"sha256.{WEIGHT_FILE}"]
    reloaded = load_quantized(fetched)
    assert reloaded.quant_type == "W8A8"
    mlflow.set_tracking_uri("")
