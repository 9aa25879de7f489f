"""One sweep job: quantize with a recipe, save, evaluate against float, log it all to MLflow."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from eval.boolq import BoolQResult, evaluate_boolq
from eval.compare import compare_boolq
from quant.config import QuantConfig
from quant.export import LAYER_REPORT_FILE, RECIPE_FILE
from quant.model_io import LoadedModel
from quant.pipeline import calibration_batches, quantize
from quant.runner import check_inputs, save_result
from sweep import shared_work
from sweep.disk_cache import DiskCache
from sweep.plots import layer_range_figure
from sweep.tracking import finite_metrics, flatten, setup_experiment, sha256_file, tracked_run

log = logging.getLogger(__name__)

BOOLQ_RESULT_ARTIFACT = "eval/boolq_result.json"  # BoolQResult.to_dict(): accuracy, config, per-example rows
FLOAT_BOOLQ_RESULT_ARTIFACT = "eval/float_boolq_result.json"
WEIGHTS_ARTIFACT_DIR = "model"  # the whole saved output directory, when weights are logged
SHA256_ARTIFACT = "quantized/weights_sha256.json"


@dataclass
class JobOutcome:
    """What a finished job reports back (to the console and to any sweeper)."""

    run_id: str
    quant_type: str
    metrics: dict[str, float] = field(default_factory=dict)
    save_directory: str = ""


def _evaluate(model: Any, tokenizer: Any, boolq_cfg: dict[str, Any]) -> BoolQResult:
    return evaluate_boolq(
        model,
        tokenizer,
        data_path=boolq_cfg["data_path"],
        limit=boolq_cfg.get("limit"),
        seed=boolq_cfg.get("seed"),
        batch_size=int(boolq_cfg.get("batch_size", 8)),
    )


def disk_cache(cfg: DictConfig) -> DiskCache | None:
    """The sweep's content-keyed disk cache (``cache.dir``), or None when disabled."""
    directory = cfg.get("cache", {}).get("dir")
    return DiskCache(directory) if directory else None


def float_baseline(cfg: DictConfig, qcfg: QuantConfig) -> BoolQResult:
    """BoolQ of the float model, evaluated once per (model, eval settings) in this process."""
    boolq_cfg = OmegaConf.to_container(cfg.eval.boolq, resolve=True)
    loaded = _float_model(cfg, qcfg)
    key = (loaded.fingerprint, json.dumps(boolq_cfg, sort_keys=True))
    return shared_work.memoized("baseline", key, lambda: _evaluate(loaded.model, loaded.tokenizer, boolq_cfg))


def _float_model(cfg: DictConfig, qcfg: QuantConfig) -> LoadedModel:
    return shared_work.float_model(
        qcfg.model_path,
        device_type=qcfg.device_type,
        trust_remote_code=qcfg.trust_remote_code,
        tokenizer_args=qcfg.tokenizer_args,
        allow_pickle=bool(cfg.model.get("allow_pickle", False)),
        disk=disk_cache(cfg),
        disk_policy=str(cfg.get("cache", {}).get("float_model", "converted")),
    )


def _float_size_bytes(loaded: LoadedModel) -> float:
    """Bytes of the float model's tensors in its checkpoint dtype, tied tensors counted twice as the
    quantized output stores them: the denominator of the compression ratio."""
    itemsize = loaded.original_dtype.itemsize
    return float(sum(t.numel() * itemsize for t in loaded.model.state_dict().values()))


def run_job(cfg: DictConfig, qcfg: QuantConfig, run_name: str, tags: dict[str, str], log_weights: bool) -> JobOutcome:
    """Quantize, save, evaluate and log one recipe inside its own MLflow run.

    Shared work (float model, its statistics, the smoothed model, float baseline) comes from
    :mod:`sweep.shared_work`; what was reused is logged as ``cache.*`` tags and metrics.
    Any exception marks the run FAILED (with the error) and propagates to the caller.
    """
    started = time.perf_counter()
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    shared_work.reset_events()
    with tracked_run(experiment_id, run_name, tags) as run:
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        overwrite = bool(cfg.overwrite) or _is_own_leftover(qcfg)
        check_inputs(qcfg, overwrite=overwrite)

        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        loaded = _float_model(cfg, qcfg)
        metrics["load_s"] = time.perf_counter() - t0
        metrics["float_size_bytes"] = _float_size_bytes(loaded)
        baseline = float_baseline(cfg, qcfg) if cfg.eval.float_baseline else None

        t0 = time.perf_counter()
        device = next(loaded.model.parameters()).device
        batches = calibration_batches(loaded.tokenizer, qcfg, device)
        smoothed, smoothing = shared_work.smoothed_model(loaded, batches, qcfg, disk_cache(cfg))
        metrics["smoothing_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        job_model = shared_work.private_copy(smoothed)
        metrics["copy_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = quantize(job_model.model, job_model.tokenizer, qcfg, calib_batches=batches, smoothing=smoothing)
        metrics["quantize_s"] = time.perf_counter() - t0
        metrics.update({f"time_{k}": v for k, v in result.timings.items()})
        t0 = time.perf_counter()
        saved = save_result(result, job_model, qcfg.save_directory, overwrite=overwrite)
        metrics["save_s"] = time.perf_counter() - t0
        metrics["size_bytes"] = float(saved.total_bytes)
        metrics["float_layers"] = float(len(result.float_layers))

        boolq_cfg = OmegaConf.to_container(cfg.eval.boolq, resolve=True)
        quant_eval = _evaluate(job_model.model, job_model.tokenizer, boolq_cfg)
        metrics.update(quant_eval.to_metrics("boolq_"))
        mlflow.log_dict(quant_eval.to_dict(), BOOLQ_RESULT_ARTIFACT)
        if baseline is not None:
            metrics.update(baseline.to_metrics("float_boolq_"))
            metrics.update(compare_boolq(baseline, quant_eval).to_metrics("vs_float_"))
            mlflow.log_dict(baseline.to_dict(), FLOAT_BOOLQ_RESULT_ARTIFACT)

        _log_outputs(saved.directory, saved.weight_files, log_weights)
        mlflow.log_figure(layer_range_figure(result.layer_report()), "plots/layer_range_param.png")
        _log_cache_events(metrics)
        metrics["job_s"] = time.perf_counter() - started
        mlflow.log_metrics(finite_metrics(metrics))
        mlflow.set_tag("quant_type", result.quant_type)
        return JobOutcome(run.info.run_id, result.quant_type, metrics, str(saved.directory))


def _is_own_leftover(qcfg: QuantConfig) -> bool:
    """Whether ``save_directory`` holds the output of this very recipe from an interrupted attempt
    (its saved recipe equals this one): a resumed job may then replace it."""
    recipe = Path(qcfg.save_directory) / RECIPE_FILE
    try:
        return json.loads(recipe.read_text(encoding="utf-8")) == json.loads(json.dumps(qcfg.to_dict(), default=str))
    except (OSError, ValueError):
        return False


def _log_cache_events(metrics: dict[str, float]) -> None:
    """Per kind of shared work: ``cache.<kind>`` = memory / disk / computed (its first lookup in this
    job, the one that paid or saved the work) and ``cache.<kind>.key`` tags; hits as metrics."""
    first: dict[str, shared_work.CacheEvent] = {}
    for event in shared_work.events():
        first.setdefault(event.kind, event)
    for kind, event in first.items():
        mlflow.set_tag(f"cache.{kind}", event.outcome)
        mlflow.set_tag(f"cache.{kind}.key", event.key)
        metrics[f"cache_hit_{kind}"] = float(event.hit)
        metrics[f"cache_{kind}_s"] = event.seconds
    metrics["cache_hits"] = float(sum(event.hit for event in first.values()))


def _log_outputs(directory: Path, weight_files: list[Path], log_weights: bool) -> None:
    """Description, recipe and layer report always; weights as files or by sha256."""
    for path in sorted(directory.iterdir()):
        if path.name.startswith("quant_model_description") or path.name in (RECIPE_FILE, LAYER_REPORT_FILE):
            mlflow.log_artifact(str(path), "quantized")
    hashes = {p.name: sha256_file(p) for p in weight_files}
    mlflow.log_dict(hashes, SHA256_ARTIFACT)
    for name, digest in hashes.items():
        mlflow.set_tag(f"sha256.{name}", digest)
    mlflow.set_tag("save_directory", str(directory))
    mlflow.set_tag("weights_logged", str(log_weights).lower())
    if log_weights:
        mlflow.log_artifacts(str(directory), WEIGHTS_ARTIFACT_DIR)
