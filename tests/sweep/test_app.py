"""python -m sweep as a single run: one-line errors, and the real SmolLM2 end to end."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from quant.model_io import load_model, resolve_model_source
from sweep.shared_work import FloatModelCodec
from sweep_helpers import EXPERIMENT, failure_report, run_module


def _runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_single_run_bad_value_is_one_line_exit_2(tiny_inputs):
    proc = run_module("sweep", ["act_method=7", *tiny_inputs.sweep_args()], cwd=tiny_inputs.root)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "sweep: error: act_method: invalid value 7; valid values: 1, 2, 3"
    assert not _runs(tiny_inputs.uri)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="cuda:7 exists here")
def test_eval_devices_that_are_not_there_stop_the_run_before_quantizing(tiny_inputs):
    proc = run_module("sweep", ["+eval.devices=[cuda:7]", *tiny_inputs.sweep_args()], cwd=tiny_inputs.root)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep: error: devices: cuda:7 is not a visible CUDA device"), last
    assert not list(tiny_inputs.root.rglob("quant_model_description*.json"))  # nothing was quantized


def test_bad_float_model_policy_is_one_line_exit_2_before_anything_is_written(tiny_inputs):
    proc = run_module("sweep", ["cache.float_model=sometimes", *tiny_inputs.sweep_args()], cwd=tiny_inputs.root)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "sweep: error: cache.float_model: 'sometimes' is not a policy; valid: converted, all, none"
    assert not _runs(tiny_inputs.uri) and not (tiny_inputs.root / "cache").exists()


def test_unknown_anti_method_lists_valid_ones(tiny_inputs):
    proc = run_module("sweep", ["anti_method=m9", *tiny_inputs.sweep_args()], cwd=tiny_inputs.root)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sweep: error: anti_method: no config 'm9'; valid values: m1, m2, m3, m4, m5, m6, none"
    ]


@pytest.mark.slow
def test_end_to_end_smollm2_small_subset(tmp_path, smollm2_gguf, boolq_calib, boolq_val):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(boolq_calib.read_text().splitlines(keepends=True)[:4]))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        f"calib.calib_file={calib}",
        "eval.boolq.limit=6",
        f"tracking.tracking_uri={uri}",
        f"tracking.artifact_root={tmp_path}/artifacts",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = run_module("sweep", args, cwd=tmp_path)
    assert proc.returncode == 0, failure_report(proc)
    assert "MLflow run id:" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "smollm2-135m-instruct"
    assert 0.0 <= run.data.metrics["boolq_acc"] <= 1.0 and run.data.metrics["boolq_n"] == 6
    saved = tmp_path / "run" / "quantized"
    assert (saved / "quant_model_weight_w8a8.safetensors").is_file()
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "model")}
    assert "model/quant_model_weight_w8a8.safetensors" in artifacts  # a single run logs its weights
    mlflow.set_tracking_uri("")  # leave no global state behind

    # The GGUF model went to the disk cache (default dir under the working directory); reading the
    # entry gives back exactly what converting the GGUF file gives.
    assert run.data.tags["cache.float_model"] == "computed"
    (entry,) = (tmp_path / ".cache" / "llama-quant" / "float_model").iterdir()
    assert entry.name == run.data.tags["cache.float_model.key"]
    direct = load_model(str(smollm2_gguf))
    cached = FloatModelCodec(resolve_model_source(str(smollm2_gguf)), "cpu", False, None).read(entry)
    ref, got = direct.model.state_dict(), cached.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert cached.model.config.to_dict() == direct.model.config.to_dict()
    assert cached.model.lm_head.weight is cached.model.model.embed_tokens.weight
    ids = direct.tokenizer("Is the sky blue?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(direct.model(ids).logits, cached.model(ids).logits)


def test_float_baseline_is_cached_across_processes_and_saved_model_is_evaluated(tiny_inputs, wikitext_raw):
    """Two separate sweep processes: the second reads the float baseline from the disk cache; both
    evaluate the model reloaded from their output directory and log the tensor check."""
    common = [
        *tiny_inputs.sweep_args(),
        "tracking.log_weights=false",
        "eval.from_saved=true",
        "eval.perplexity.enabled=true",
        f"eval.perplexity.data_path={wikitext_raw}",
        "eval.perplexity.max_tokens=200",
        "eval.perplexity.block_size=64",
        "eval.perplexity.stride=32",
    ]
    for run_dir in ("first", "second"):
        proc = run_module("sweep", [*common, f"hydra.run.dir={tiny_inputs.root}/{run_dir}"], cwd=tiny_inputs.root)
        assert proc.returncode == 0, failure_report(proc)
        console = proc.stdout + proc.stderr
        assert "linears kept in float (" in console and "peak memory: " in console
        assert "keeping model." not in console  # one summary line, not one line per float layer
    first, second = sorted(_runs(tiny_inputs.uri), key=lambda r: r.info.start_time)
    assert first.data.tags["float_baseline_source"] == "computed"
    assert second.data.tags["float_baseline_source"] == "disk"
    assert (first.data.metrics["float_baseline_cache_hit"], second.data.metrics["float_baseline_cache_hit"]) == (0, 1)
    key = first.data.tags["float_baseline_cache_key"]
    assert second.data.tags["float_baseline_cache_key"] == key
    assert (tiny_inputs.root / "cache" / "baseline" / key / "value.json").is_file()
    for run in (first, second):
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["eval_source"] == "saved_directory" and tags["eval_matches_saved"] == "true"
        assert tags["eval_state_sha256"] == tags["eval_saved_tensors_sha256"]
        assert tags["boolq.lm_eval_version"] and len(tags["boolq.task_config_hash"]) == 64
        assert tags["boolq.bos_prepended"] == "True"  # the tiny tokenizer adds BOS
        assert metrics["wikitext2_ppl"] > 1 and metrics["float_wikitext2_ppl"] > 1
        assert metrics["wikitext2_n_tokens"] == metrics["float_wikitext2_n_tokens"]
        assert metrics["peak_rss_bytes"] > 100e6  # a process holding torch and a model: beyond 100 MB
    for name in ("float_boolq_acc", "float_wikitext2_ppl", "boolq_acc", "wikitext2_ppl"):
        assert first.data.metrics[name] == second.data.metrics[name]
    # Both jobs quantized the same model with the same recipe: the same saved tensors.
    assert first.data.tags["eval_saved_tensors_sha256"] == second.data.tags["eval_saved_tensors_sha256"]
    mlflow.set_tracking_uri("")
