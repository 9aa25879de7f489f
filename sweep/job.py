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
from quant.pipeline import quantize
from quant.runner import check_inputs, save_result
from sweep import shared_work
from sweep.tracking import finite_metrics, flatten, setup_experiment, sha256_file, tracked_run

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """What a finished job reports back (to the console table and to any sweeper)."""

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


def float_baseline(cfg: DictConfig, qcfg: QuantConfig) -> BoolQResult:
    """BoolQ of the float model, evaluated once per (model, eval settings) in this process."""
    boolq_cfg = OmegaConf.to_container(cfg.eval.boolq, resolve=True)
    loaded = _float_model(cfg, qcfg)
    key = (loaded.fingerprint, json.dumps(boolq_cfg, sort_keys=True))
    return shared_work.memoized("baseline", key, lambda: _evaluate(loaded.model, loaded.tokenizer, boolq_cfg))


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

        job_model = shared_work.private_copy(loaded)
        t0 = time.perf_counter()
        result = quantize(job_model.model, job_model.tokenizer, qcfg)
        metrics["quantize_s"] = time.perf_counter() - t0
        metrics.update({f"time_{k}": v for k, v in result.timings.items()})
        saved = save_result(result, job_model, qcfg.save_directory, overwrite=bool(cfg.overwrite))
        metrics["size_bytes"] = float(saved.total_bytes)
        metrics["float_layers"] = float(len(result.float_layers))

        boolq_cfg = OmegaConf.to_container(cfg.eval.boolq, resolve=True)
        quant_eval = _evaluate(job_model.model, job_model.tokenizer, boolq_cfg)
        metrics.update(quant_eval.to_metrics("boolq_"))
        if baseline is not None:
            metrics.update(baseline.to_metrics("float_boolq_"))
            metrics.update(compare_boolq(baseline, quant_eval).to_metrics("vs_float_"))

        _log_outputs(saved.directory, saved.weight_files, bool(tracking.log_weights))
        mlflow.log_dict([row.__dict__ for row in quant_eval.per_example], "eval/boolq_per_example.json")
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
