"""python -m sweep.regress: a constructed accuracy drop fails (exit 1) with a clear report; the
champion's own saved model, re-evaluated from its files, passes with no changed answer."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from sweep.regress import main
from sweep.select import main as select_main
from sweep_helpers import EXPERIMENT, boolq_result_dict, run_module, write_json

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
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(tiny_inputs.root / "artifacts").as_uri())
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
    assert out.strip().splitlines()[-1] == "FAIL: accuracy dropped by 0.3000 > max_drop 0.01"


def test_same_accuracy_passes_and_a_significance_test_can_be_added(constructed, tmp_path, capsys):
    inputs, ids = constructed
    report = tmp_path / "verdict.json"
    assert main(["--run", ids["same"][:8], "--json", str(report), *inputs.tool_args()]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "PASS"
    verdict = json.loads(report.read_text())
    assert verdict["passed"] is True and verdict["comparison"]["n_flips"] == 2
    # 3 discordant pairs, all against the candidate: exact McNemar p = 2 * 0.5**3 = 0.25.
    assert main(["--run", ids["dropped"], *inputs.tool_args(), "max_drop=0.5", "mcnemar_alpha=0.3"]) == 1
    assert "significantly worse: McNemar p = 0.2500 < 0.3" in capsys.readouterr().out
    assert main(["--run", ids["dropped"], *inputs.tool_args(), "max_drop=0.5"]) == 0


def test_against_a_stored_baseline_file(constructed, tmp_path, capsys):
    inputs, ids = constructed
    stored = write_json(tmp_path / "baseline.json", boolq_result_dict([True] * 10))
    assert main(["--run", ids["champion"], "--against", str(stored), *inputs.tool_args()]) == 1
    assert "FAIL: accuracy dropped by 0.2000" in capsys.readouterr().out


def test_bad_input_exits_2(constructed, capsys):
    inputs, ids = constructed
    assert main(["--run", "feedface", *inputs.tool_args()]) == 2
    err = capsys.readouterr().err
    assert "sweep.regress: error: run: no run in the experiment with an id starting 'feedface'" in err
    assert main(["--run", ids["same"], *inputs.tool_args(), "registry.alias=nope"]) == 2
    assert "registered model 'llama-quant' has no alias 'nope'" in capsys.readouterr().err


def test_champion_model_reloaded_from_its_files_matches_its_logged_result(sweep8, tmp_path, capsys):
    inputs = sweep8.inputs
    assert select_main([*inputs.tool_args(), "rule.margin=0.5"]) == 0
    client = sweep8.client
    champion = client.get_run(client.get_model_version_by_alias("llama-quant", "champion").run_id)
    report = tmp_path / "verdict.json"
    saved = champion.data.tags["save_directory"]
    assert main(["--model", saved, "--json", str(report), *inputs.tool_args()]) == 0
    comparison = json.loads(report.read_text())["comparison"]
    assert comparison["n"] == 8 and comparison["n_flips"] == 0 and comparison["mean_kl"] == 0.0
    # The same through the registry URI alone.
    assert main(["--model", "models:/llama-quant@champion", *inputs.tool_args()]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "PASS"
