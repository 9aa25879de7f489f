"""python -m sweep.regress --recipe: the champion's logged recipe rebuilt with today's code.

Unchanged code gives identical bytes and passes; a planted change to the quantizer (the observer's
range scaled down, patched in this process) is reported tensor by tensor and fails the gate where
the drop is real at the tested n, and cannot decide on a recipe evaluated on 10 rows; bad inputs
(no champion, unknown run, model file changed or gone) end with one line and exit 2.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import quant.quantizers
from eval.data import sha256_file
from sweep.registry import promote
from sweep.regress import EXIT_BAD_INPUT, EXIT_PASS, EXIT_REGRESSION, EXIT_UNDECIDED, main
from sweep.run_records import RunRecord
from sweep_helpers import EXPERIMENT, TinyInputs, failure_report, make_tiny_inputs, run_module
from tiny_data import write_self_labelled_boolq

MARGIN = "margin=0.03"  # 200 identical rows: upper bound 0.013 < 0.03; the planted drop: lower bound > 0.03


@dataclass
class Recorded:
    inputs: TinyInputs
    champion_run: str  # evaluated on all 200 rows, registered as llama-quant@champion
    small_run: str  # the same recipe evaluated on the first 10 rows

    def args(self, *extra: str) -> list[str]:
        return [*self.inputs.tool_args(), MARGIN, *extra]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, mlflow_template) -> Recorded:
    """One W8A8 recipe run twice by the sweep (BoolQ on 10 rows and on all 200); the 200-row run
    is promoted to champion (its weights logged to MLflow by the promotion)."""
    inputs = make_tiny_inputs(tmp_path_factory.mktemp("regress-recipe"))
    write_self_labelled_boolq(inputs.boolq, inputs.model_dir)
    shutil.copyfile(mlflow_template, inputs.db)
    args = [a for a in inputs.sweep_args() if not a.startswith("eval.boolq.limit=")]
    proc = run_module("sweep", ["-m", "eval.boolq.limit=10,null", "eval.float_baseline=false", *args], cwd=inputs.root)
    assert proc.returncode == 0, failure_report(proc)
    mlflow.set_tracking_uri(inputs.uri)  # MLflow's registry resolves models:/ sources on the global store
    client = MlflowClient(inputs.uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    jobs = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("sweep.role") == "job"]
    by_n = {int(r.data.metrics["boolq_n"]): r for r in jobs}
    assert set(by_n) == {10, 200}
    promote(client, RunRecord.from_run(by_n[200]), "llama-quant", "champion")
    return Recorded(inputs, by_n[200].info.run_id, by_n[10].info.run_id)


def _perturb_observer(monkeypatch, factor: float = 0.25) -> None:
    """A planted quantizer change: every symmetric range shrunk to ``factor`` (values clip)."""
    original = quant.quantizers.symmetric_params
    monkeypatch.setattr(quant.quantizers, "symmetric_params", lambda amax, bits: original(amax * factor, bits))


def test_unchanged_code_rebuilds_identical_bytes_and_passes(recorded, tmp_path, capsys):
    verdict = tmp_path / "verdict.json"
    assert main(["--recipe", "champion", "--json", str(verdict), *recorded.args()]) == EXIT_PASS
    out = capsys.readouterr().out
    assert "regression check on 200 BoolQ examples" in out
    assert f"llama-quant version 1 (run {recorded.champion_run[:8]}" in out
    assert "weights: identical bytes (sha256)" in out and "0 answers changed" in out
    assert out.strip().splitlines()[-1].startswith("PASS (boolq_acc): pass: drop +0,")
    payload = json.loads(verdict.read_text())
    assert payload["bytes_identical"] is True and payload["tensor_diff"] is None
    assert payload["verdict"]["upper_bound"] < 0.03 and payload["comparison"]["n_flips"] == 0


def test_planted_change_names_the_tensors_and_fails_the_gate(recorded, tmp_path, capsys, monkeypatch):
    _perturb_observer(monkeypatch)
    verdict = tmp_path / "verdict.json"
    assert main(["--recipe", "champion", "--json", str(verdict), *recorded.args()]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    assert "weights: bytes differ (sha256)" in out
    payload = json.loads(verdict.read_text())
    changes = {c["name"]: c for c in payload["tensor_diff"]["changes"]}
    weight = changes["model.layers.0.self_attn.q_proj.weight"]  # an int8 weight of a quantized linear
    assert weight["dtype"] == "torch.int8" and 0 < weight["changed_fraction"] <= 1 and weight["max_rel_error"] > 0
    assert "lm_head.weight" not in changes  # kept in float (disable_last_linear): untouched
    n_changed = len(changes)
    assert f"tensors: {n_changed} of {payload['tensor_diff']['n_tensors']} differ (sha256)" in out
    assert ".quant_bias (torch.int32): max rel error" in out and "% of 64 elements changed" in out
    assert payload["verdict"]["lower_bound"] >= 0.03
    assert out.strip().splitlines()[-1].startswith("REGRESSION (boolq_acc): fail: drop +")
    run_id = out.splitlines()[0].split()[3]  # "recorded as run <id> in experiment ..."
    client = MlflowClient(recorded.inputs.uri)
    run = client.get_run(run_id)
    assert run.data.tags["regress.bytes_identical"] == "false" and run.data.tags["regress.verdict"] == "fail"
    assert run.data.tags["regress.recipe"] == client.get_run(recorded.champion_run).data.tags["config_hash"]
    assert run.data.tags["fingerprint.model"] and len(run.data.tags["fingerprint.calib_sha256"]) == 64
    assert run.data.metrics["tensors_changed"] == n_changed
    diff = json.loads(Path(client.download_artifacts(run_id, "regress/tensor_diff.json", str(tmp_path))).read_text())
    assert diff == payload["tensor_diff"]


def test_planted_change_on_ten_rows_cannot_decide(recorded, capsys, monkeypatch):
    _perturb_observer(monkeypatch)
    assert main(["--recipe", recorded.small_run[:8], *recorded.args()]) == EXIT_UNDECIDED
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("CANNOT DECIDE (boolq_acc): undecided:") and "(n=10, tango-score)" in last
    assert "examples would" in last


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_exit_2_with_one_line(recorded, capsys):
    assert main(["--recipe", "champion", *recorded.args("registry.alias=nope")]) == EXIT_BAD_INPUT
    assert "recipe: no model version llama-quant@nope; promote one with python -m sweep.select" in _one_line_error(
        capsys
    )
    assert main(["--recipe", "feedface", *recorded.args()]) == EXIT_BAD_INPUT
    assert "run: no run in the experiment with an id starting 'feedface'" in _one_line_error(capsys)
    assert main(["--recipe", "models:/llama-quant/7", *recorded.args()]) == EXIT_BAD_INPUT
    assert "no model version llama-quant/7" in _one_line_error(capsys)


def test_changed_or_missing_model_file_exits_2(recorded, capsys):
    weights = next(Path(recorded.inputs.model_dir).glob("*.safetensors"))
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of the last tensor
        assert main(["--recipe", "champion", *recorded.args()]) == EXIT_BAD_INPUT
        line = _one_line_error(capsys)
        assert "changed since run" in line and "content key" in line and "no longer matches" in line
    finally:
        weights.write_bytes(original)
    moved = recorded.inputs.model_dir.with_name("moved-away")
    recorded.inputs.model_dir.rename(moved)
    try:
        proc = run_module("sweep.regress", ["--recipe", "champion", *recorded.args()], cwd=recorded.inputs.root)
        assert proc.returncode == EXIT_BAD_INPUT and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("sweep.regress: error: recipe: the model of run")
        assert "is gone" in proc.stderr
    finally:
        moved.rename(recorded.inputs.model_dir)


def _context(dataset_input) -> str:
    return next(tag.value for tag in dataset_input.tags if tag.key == "mlflow.data.context")


def test_jobs_log_a_logged_model_and_data_inputs_that_checks_link(recorded, tmp_path, capsys):
    client = MlflowClient(recorded.inputs.uri)
    champion = client.get_run(recorded.champion_run)
    model_id = champion.data.tags["logged_model_id"]
    model = client.get_logged_model(model_id)
    assert str(model.status) == "READY" and model.model_type == "quantized-llama"
    assert (
        model.source_run_id == recorded.champion_run
        and model.params["config_hash"] == champion.data.tags["config_hash"]
    )
    assert {m.key: m.value for m in model.metrics}["boolq_acc"] == champion.data.metrics["boolq_acc"]
    files = {Path(a.path).name for a in client.list_logged_model_artifacts(model_id)}
    assert {"quant_model_description.json", "quant_recipe.json", "quant_layer_report.json"} <= files
    digests = {_context(i): i.dataset.digest for i in champion.inputs.dataset_inputs}
    assert digests == {
        "calib": sha256_file(recorded.inputs.calib)[:32],
        "boolq": sha256_file(recorded.inputs.boolq)[:32],
    }
    assert champion.data.tags["data.calib_sha256"] == sha256_file(recorded.inputs.calib)
    assert client.get_model_version("llama-quant", "1").source == f"models:/{model_id}"  # registered from it
    held = {Path(a.path).name for a in client.list_logged_model_artifacts(model_id)}
    assert "quant_model_weight_w8a8.safetensors" in held and "config.json" in held  # promotion added the weights
    assert main(["--recipe", "champion", *recorded.args()]) == EXIT_PASS
    check = client.get_run(capsys.readouterr().out.splitlines()[0].split()[3])
    assert [m.model_id for m in check.inputs.model_inputs] == [model_id]
    assert {i.dataset.digest for i in check.inputs.dataset_inputs} == set(digests.values())
