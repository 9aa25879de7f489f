"""python -m sweep.regress --run / --model: a constructed accuracy drop fails the paired gate
(exit 1) with a clear report, an equal accuracy on 10 rows cannot be decided (exit 3) unless the
margin is wide; the champion's own saved model, re-evaluated from its files, has no changed answer."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from sweep.regress import main
from sweep.select import main as select_main
from sweep_helpers import EXPERIMENT, artifact_paths, boolq_result_dict, run_module, write_json

BASELINE = [True] * 8 + [False] * 2  # 0.8
DROPPED = [True] * 5 + [False] * 5  # 0.5: three answers the baseline had right are now wrong
SAME_ACCURACY = [True] * 7 + [False] * 2 + [True]  # 0.8 with two answers swapped


def _log_result_run(client, experiment_id, name: str, correct: list[bool]) -> str:
    run = client.create_run(experiment_id, run_name=name, tags={"config_hash": name, "sweep.role": "job"})
    client.log_dict(run.info.run_id, boolq_result_dict(correct), "eval/boolq_result.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture()
def constructed(tiny_inputs):
    """A champion registered from a run with 8/10 right, and candidate runs."""
    client = MlflowClient(tiny_inputs.uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=tiny_inputs.artifacts.as_uri())
    ids = {
        "champion": _log_result_run(client, experiment_id, "champion", BASELINE),
        "dropped": _log_result_run(client, experiment_id, "dropped", DROPPED),
        "same": _log_result_run(client, experiment_id, "same", SAME_ACCURACY),
    }
    client.create_registered_model("llama-quant")
    version = client.create_model_version("llama-quant", f"runs:/{ids['champion']}/model", run_id=ids["champion"])
    client.set_registered_model_alias("llama-quant", "champion", version.version)
    return tiny_inputs, ids


def test_constructed_drop_exits_nonzero_with_a_clear_report(constructed):
    inputs, ids = constructed
    proc = run_module("sweep.regress", ["--run", ids["dropped"], *inputs.tool_args()], cwd=inputs.root)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout
    assert "regression check on 10 BoolQ examples" in out
    assert "baseline : llama-quant@champion (version 1" in out and "accuracy 0.8000" in out
    assert f"candidate: run {ids['dropped'][:8]}: accuracy 0.5000" in out
    assert "delta -0.3000" in out and "baseline-only correct 3, candidate-only correct 0" in out
    last = out.strip().splitlines()[-1]
    assert (
        last.startswith("REGRESSION (boolq_acc): fail: drop +0.3, one-sided 95% bounds [+0.02318,")
        and "(n=10, tango-score)" in last
    )


def test_every_check_is_recorded_linked_to_the_champion(constructed, tmp_path, capsys):
    inputs, ids = constructed
    assert main(["--run", ids["dropped"], *inputs.tool_args()]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    client = MlflowClient(inputs.uri)
    experiment = client.get_experiment_by_name("llama-quant-regress")
    (run,) = client.search_runs([experiment.experiment_id])
    assert first == f"recorded as run {run.info.run_id} in experiment 'llama-quant-regress'"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["regress.role"] == "check" and tags["regress.mode"] == "run" and tags["regress.verdict"] == "fail"
    assert tags["regress.reference_run"] == ids["champion"] and tags["regress.model_version"] == "1"
    assert tags["regress.recipe"] == "dropped" and tags["regress.recipe_name"] == "dropped"
    assert tags["git_commit"] and tags["version.torch"] and tags["version.transformers"] and tags["version.lm_eval"]
    assert tags["version.llama-quant-harness"] and tags["fingerprint.boolq_data"] == "0" * 64
    assert ids["champion"] in tags["mlflow.note.content"]
    assert metrics["candidate_acc"] == 0.5 and metrics["baseline_acc"] == 0.8
    assert metrics["delta"] == pytest.approx(-0.3) and metrics["gate_status"] == -1.0
    assert metrics["gate_lower_bound"] == pytest.approx(0.02318, abs=1e-5) and metrics["gate_margin"] == 0.01
    assert artifact_paths(client, run.info.run_id) == {
        "regress/report.txt",
        "regress/verdict.json",
        "eval/boolq_result.json",
    }
    assert main(["--run", ids["same"], *inputs.tool_args(), "record.enabled=false"]) == 3
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_same_accuracy_cannot_be_decided_on_ten_rows_unless_the_margin_is_wide(constructed, tmp_path, capsys):
    inputs, ids = constructed
    report = tmp_path / "verdict.json"
    assert main(["--run", ids["same"][:8], *inputs.tool_args()]) == 3
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("CANNOT DECIDE (boolq_acc): undecided: drop +0,") and "examples would" in last
    assert main(["--run", ids["same"][:8], "--json", str(report), *inputs.tool_args(), "margin=0.3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS (boolq_acc): pass: drop +0,")
    verdict = json.loads(report.read_text())
    assert verdict["status"] == "pass" and verdict["exit_code"] == 0 and verdict["comparison"]["n_flips"] == 2
    # The 0.3 drop's lower bound (0.023) is below a wide margin: not shown to exceed it.
    assert main(["--run", ids["dropped"], *inputs.tool_args(), "margin=0.3"]) == 3


def test_against_a_stored_baseline_file(constructed, tmp_path, capsys):
    inputs, ids = constructed
    stored = write_json(tmp_path / "baseline.json", boolq_result_dict([True] * 10))
    assert main(["--run", ids["champion"], "--against", str(stored), *inputs.tool_args()]) == 3
    assert "delta -0.2000" in capsys.readouterr().out


def test_bad_input_exits_2(constructed, capsys):
    inputs, ids = constructed
    assert main(["--run", "feedface", *inputs.tool_args()]) == 2
    err = capsys.readouterr().err
    assert "sweep.regress: error: run: no run in the experiment with an id starting 'feedface'" in err
    assert main(["--run", ids["same"], *inputs.tool_args(), "registry.alias=nope"]) == 2
    assert "registered model 'llama-quant' has no alias 'nope'" in capsys.readouterr().err
    assert main(["--run", ids["same"], *inputs.tool_args(), "margin=-1"]) == 2
    assert "margin: invalid value -1" in capsys.readouterr().err


def test_champion_model_reloaded_from_its_files_matches_its_logged_result(sweep8, tmp_path, capsys):
    inputs = sweep8.inputs
    assert select_main([*inputs.tool_args(), "rule.margin=0.5"]) == 0
    client = sweep8.client
    champion = client.get_run(client.get_model_version_by_alias("llama-quant", "champion").run_id)
    report = tmp_path / "verdict.json"
    saved = champion.data.tags["save_directory"]
    assert main(["--model", saved, "--json", str(report), *inputs.tool_args(), "margin=0.3"]) == 0
    comparison = json.loads(report.read_text())["comparison"]
    assert comparison["n"] == 8 and comparison["n_flips"] == 0 and comparison["mean_kl"] == 0.0
    # The same through the registry URI alone.
    assert main(["--model", "models:/llama-quant@champion", *inputs.tool_args(), "margin=0.3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS (boolq_acc): pass: drop +0,")
