"""python -m sweep: real Hydra multiruns in a subprocess, logged to a real MLflow SQLite store."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_sweep(args, tmp_path, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sweep", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_args(tmp_path, model_dir, calib_file, boolq_file):
    return [
        f"model.path={model_dir}",
        f"calib.calib_file={calib_file}",
        f"eval.boolq.data_path={boolq_file}",
        "eval.boolq.limit=8",
        f"eval.cache_dir={tmp_path}/eval-cache",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/artifacts",
        "tracking.log_weights=false",
        f"hydra.run.dir={tmp_path}/run",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]


def runs_of(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("llama-quant")
    return client.search_runs([experiment.experiment_id])


def test_multirun_logs_one_run_per_job_and_survives_a_failed_job(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file):
    args = [
        "-m",
        "anti_method=none,m1",
        "disable_level=L0,Lx",
        *tiny_args(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file),
    ]
    proc = run_sweep(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_of(tmp_path)
    assert len(runs) == 4
    finished = [r for r in runs if r.info.status == "FINISHED"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(finished) == 2 and len(failed) == 2
    for run in failed:
        assert run.data.tags["disable_level"] == "Lx"
        assert "disable_level: invalid value 'Lx'" in run.data.tags["error"]
    for run in finished:
        metrics = run.data.metrics
        assert 0.0 <= metrics["boolq_acc"] <= 1.0 and metrics["boolq_n"] == 8
        assert 0.0 <= metrics["float_boolq_acc"] <= 1.0
        assert metrics["vs_float_accuracy_delta"] == pytest.approx(metrics["boolq_acc"] - metrics["float_boolq_acc"])
        assert run.data.params["anti_method.name"] in ("none", "m1")
        assert run.data.tags["config_hash"]
        artifacts = {
            a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(run.info.run_id, "quantized")
        }
        assert "quantized/quant_model_description.json" in artifacts
        assert "quantized/quant_layer_report.json" in artifacts
    assert proc.stdout.count("[FAILED]") == 2


def test_single_run_bad_value_is_one_line_exit_2(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file):
    proc = run_sweep(["act_method=7", *tiny_args(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "sweep: error: act_method: invalid value 7; valid values: 1, 2, 3"
    assert not (tmp_path / "mlflow.db").exists() or not runs_of(tmp_path)


def test_unknown_anti_method_lists_valid_ones(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file):
    proc = run_sweep(["anti_method=m9", *tiny_args(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file)], tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'anti_method/m9'" in proc.stderr
    assert "m1" in proc.stderr and "none" in proc.stderr


@pytest.mark.slow
def test_end_to_end_smollm2_small_subset(tmp_path, smollm2_gguf, boolq_calib, boolq_val):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(boolq_calib.read_text().splitlines(keepends=True)[:4]))
    args = [
        f"calib.calib_file={calib}",
        "eval.boolq.limit=6",
        f"eval.cache_dir={tmp_path}/eval-cache",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/artifacts",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = run_sweep(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MLflow run id:" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    (run,) = runs_of(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "smollm2-135m-instruct"
    assert 0.0 <= run.data.metrics["boolq_acc"] <= 1.0 and run.data.metrics["boolq_n"] == 6
    saved = tmp_path / "run" / "quantized"
    assert (saved / "quant_model_weight_w8a8.safetensors").is_file()
    artifacts = {
        a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(run.info.run_id, "model")
    }
    assert "model/quant_model_weight_w8a8.safetensors" in artifacts
    mlflow.set_tracking_uri("")  # leave no global state behind


def test_float_baseline_is_cached_across_processes_and_saved_model_is_evaluated(
    tmp_path, tiny_model_dir, calib_file, tiny_boolq_file, wikitext_raw
):
    """Two separate sweep processes: the second reads the float baseline from the disk cache; both
    evaluate the model reloaded from their output directory and log the tensor check."""
    common = [
        *tiny_args(tmp_path, tiny_model_dir, calib_file, tiny_boolq_file),
        "eval.from_saved=true",
        "eval.perplexity.enabled=true",
        f"eval.perplexity.data_path={wikitext_raw}",
        "eval.perplexity.max_tokens=200",
        "eval.perplexity.block_size=64",
        "eval.perplexity.stride=32",
    ]
    for run_dir in ("first", "second"):
        proc = run_sweep([*common, f"hydra.run.dir={tmp_path}/{run_dir}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = sorted(runs_of(tmp_path), key=lambda r: r.info.start_time)
    assert first.data.tags["float_baseline_source"] == "computed"
    assert second.data.tags["float_baseline_source"] == "disk"
    assert (first.data.metrics["float_baseline_cache_hit"], second.data.metrics["float_baseline_cache_hit"]) == (0, 1)
    key = first.data.tags["float_baseline_cache_key"]
    assert second.data.tags["float_baseline_cache_key"] == key
    assert (tmp_path / "eval-cache" / "boolq" / f"{key}.json").is_file()
    for run in (first, second):
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["eval_source"] == "saved_directory" and tags["eval_matches_saved"] == "true"
        assert tags["eval_state_sha256"] == tags["eval_saved_tensors_sha256"]
        assert tags["boolq.lm_eval_version"] and len(tags["boolq.task_config_hash"]) == 64
        assert tags["boolq.bos_prepended"] == "True"  # the tiny tokenizer adds BOS
        assert metrics["wikitext2_ppl"] > 1 and metrics["float_wikitext2_ppl"] > 1
        assert metrics["wikitext2_n_tokens"] == metrics["float_wikitext2_n_tokens"]
    for name in ("float_boolq_acc", "float_wikitext2_ppl", "boolq_acc", "wikitext2_ppl"):
        assert first.data.metrics[name] == second.data.metrics[name]
    # Both jobs quantized the same model with the same recipe: the same saved tensors.
    assert first.data.tags["eval_saved_tensors_sha256"] == second.data.tags["eval_saved_tensors_sha256"]
    mlflow.set_tracking_uri("")
