"""One sweep job: quantize with a recipe, save, evaluate against float, log it all to MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from eval.baseline import FloatBaseline
from eval.baseline import float_baseline as eval_float_baseline
from eval.boolq import evaluate_boolq
from eval.cache import ResultCache
from eval.compare import compare_boolq
from eval.fingerprint import check_model_matches_saved
from eval.perplexity import wikitext_perplexity
from quant.config import QuantConfig
from quant.export import LAYER_REPORT_FILE, RECIPE_FILE
from quant.pipeline import quantize
from quant.reload import load_quantized
from quant.runner import check_inputs, save_result
from sweep import shared_work
from sweep.tracking import finite_metrics, flatten, setup_experiment, sha256_file, tracked_run

log = logging.getLogger(__name__)
# What produced a BoolQ number, beyond the eval.* params: logged as boolq.<key> tags.
_LOGGED_BOOLQ_CONFIG = ("lm_eval_version", "task_config_hash", "data_sha256", "bos_prepended", "selection")


@dataclass
class JobOutcome:
    """What a finished job reports back (to the console table and to any sweeper)."""

    run_id: str
    quant_type: str
    metrics: dict[str, float] = field(default_factory=dict)
    save_directory: str = ""


def _boolq_args(cfg: DictConfig) -> dict[str, Any]:
    boolq = OmegaConf.to_container(cfg.eval.boolq, resolve=True)
    return {
        "data_path": boolq["data_path"],
        "limit": boolq.get("limit"),
        "seed": boolq.get("seed"),
        "batch_size": int(boolq.get("batch_size", 8)),
        "add_bos_token": bool(boolq.get("add_bos_token", True)),
    }


def _perplexity_args(cfg: DictConfig) -> dict[str, Any] | None:
    """The perplexity settings, or None when ``eval.perplexity.enabled`` is off."""
    ppl = OmegaConf.to_container(cfg.eval.get("perplexity") or OmegaConf.create({}), resolve=True)
    if not ppl.get("enabled", False):
        return None
    return {k: ppl[k] for k in ("max_tokens", "block_size", "stride") if ppl.get(k) is not None} | {
        "path": ppl["data_path"]
    }


def _device_of(model: Any) -> str:
    return str(next(model.parameters()).device)


def float_baseline(cfg: DictConfig, qcfg: QuantConfig) -> FloatBaseline:
    """The float model's BoolQ (and perplexity if enabled): from this process's memory, else from
    the disk cache ``eval.cache_dir`` (shared by processes, keyed by content), else computed."""
    loaded = _float_model(cfg, qcfg)
    memo_key = (loaded.fingerprint, json.dumps(OmegaConf.to_container(cfg.eval, resolve=True), sort_keys=True))
    hits_before = shared_work.cache_hits.get("baseline", 0)
    baseline = shared_work.memoized(
        "baseline",
        memo_key,
        lambda: eval_float_baseline(
            ResultCache(cfg.eval.get("cache_dir")),
            loaded.model,
            loaded.tokenizer,
            boolq={**_boolq_args(cfg), "device": _device_of(loaded.model)},
            perplexity=_perplexity_args(cfg),
        ),
    )
    if shared_work.cache_hits.get("baseline", 0) > hits_before:
        return dataclasses.replace(baseline, source="memory", seconds=0.0)
    return baseline


def _evaluation_model(cfg: DictConfig, job_model: Any, saved_directory: Path, device_type: str) -> tuple[Any, Any]:
    """The model to evaluate: reloaded from the saved directory (``eval.from_saved``) or the
    in-memory one; either way its state is proven equal to the saved tensors and logged."""
    if cfg.eval.get("from_saved", False):
        reloaded = load_quantized(saved_directory, device_type=device_type)
        model, tokenizer, source = reloaded.model, reloaded.tokenizer, "saved_directory"
    else:
        model, tokenizer, source = job_model.model, job_model.tokenizer, "in_memory"
    check = check_model_matches_saved(model, saved_directory)  # raises if they differ
    mlflow.set_tags({**check.to_tags("eval_"), "eval_source": source})
    return model, tokenizer


def _float_model(cfg: DictConfig, qcfg: QuantConfig) -> Any:
    return shared_work.float_model(
        qcfg.model_path,
        device_type=qcfg.device_type,
        trust_remote_code=qcfg.trust_remote_code,
        tokenizer_args=qcfg.tokenizer_args,
        allow_pickle=bool(cfg.model.get("allow_pickle", False)),
    )


def run_job(cfg: DictConfig, qcfg: QuantConfig, run_name: str, tags: dict[str, str]) -> JobOutcome:
    """Quantize, save, evaluate and log one recipe inside its own MLflow run.

    Any exception marks the run FAILED (with the error) and propagates to the caller.
    """
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    with tracked_run(experiment_id, run_name, tags) as run:
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        check_inputs(qcfg, overwrite=bool(cfg.overwrite))

        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        loaded = _float_model(cfg, qcfg)
        metrics["load_s"] = time.perf_counter() - t0
        baseline = float_baseline(cfg, qcfg) if cfg.eval.float_baseline else None
        if baseline is not None:
            metrics["float_baseline_cache_hit"] = float(baseline.source != "computed")
            metrics["float_baseline_s"] = baseline.seconds
            mlflow.set_tags({"float_baseline_source": baseline.source, "float_baseline_cache_key": baseline.cache_key})

        job_model = shared_work.private_copy(loaded)
        t0 = time.perf_counter()
        result = quantize(job_model.model, job_model.tokenizer, qcfg)
        metrics["quantize_s"] = time.perf_counter() - t0
        metrics.update({f"time_{k}": v for k, v in result.timings.items()})
        saved = save_result(result, job_model, qcfg.save_directory, overwrite=bool(cfg.overwrite))
        metrics["size_bytes"] = float(saved.total_bytes)
        metrics["float_layers"] = float(len(result.float_layers))

        eval_model, eval_tokenizer = _evaluation_model(cfg, job_model, saved.directory, qcfg.device_type)
        quant_eval = evaluate_boolq(eval_model, eval_tokenizer, device=_device_of(eval_model), **_boolq_args(cfg))
        metrics.update(quant_eval.to_metrics("boolq_"))
        ppl_args = _perplexity_args(cfg)
        if ppl_args is not None:
            metrics.update(wikitext_perplexity(eval_model, eval_tokenizer, **ppl_args).to_metrics("wikitext2_"))
        if baseline is not None:
            metrics.update(baseline.boolq.to_metrics("float_boolq_"))
            metrics.update(compare_boolq(baseline.boolq, quant_eval).to_metrics("vs_float_"))
            # A cached baseline's time is that of the run which computed it.
            metrics["vs_float_eval_time_ratio"] = quant_eval.elapsed / baseline.boolq.elapsed
            if baseline.perplexity is not None:
                metrics.update(baseline.perplexity.to_metrics("float_wikitext2_"))
            mlflow.log_dict(baseline.boolq.to_dict(), "eval/float_boolq.json")

        _log_outputs(saved.directory, saved.weight_files, bool(tracking.log_weights))
        mlflow.log_dict([row.__dict__ for row in quant_eval.per_example], "eval/boolq_per_example.json")
        mlflow.set_tags({f"boolq.{k}": str(quant_eval.config.get(k)) for k in _LOGGED_BOOLQ_CONFIG})
        mlflow.log_metrics(finite_metrics(metrics))
        mlflow.set_tag("quant_type", result.quant_type)
        return JobOutcome(run.info.run_id, result.quant_type, metrics, str(saved.directory))


def _log_outputs(directory: Path, weight_files: list[Path], log_weights: bool) -> None:
    """Description, recipe and layer report always; weights as files or by sha256."""
    for path in sorted(directory.iterdir()):
        if path.name.startswith("quant_model_description") or path.name in (RECIPE_FILE, LAYER_REPORT_FILE):
            mlflow.log_artifact(str(path), "quantized")
    hashes = {p.name: sha256_file(p) for p in weight_files}
    mlflow.log_dict(hashes, "quantized/weights_sha256.json")
    for name, digest in hashes.items():
        mlflow.set_tag(f"sha256.{name}", digest)
    mlflow.set_tag("save_directory", str(directory))
    if log_weights:
        mlflow.log_artifacts(str(directory), "model")
