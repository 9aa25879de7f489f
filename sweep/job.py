"""One sweep job: quantize with a recipe, save, evaluate against float, log it all to MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from eval.baseline import FloatBaseline
from eval.boolq import evaluate_boolq
from eval.compare import compare_boolq
from eval.fingerprint import check_model_matches_saved
from eval.perplexity import wikitext_perplexity
from quant import progress
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.export import LAYER_REPORT_FILE, RECIPE_FILE
from quant.model_io import LoadedModel
from quant.pipeline import quantize
from quant.placement import device_budgets, spread_over_devices
from quant.reload import load_quantized
from quant.report_plot import plot_layer_sqnr
from quant.runner import check_inputs, save_result
from sweep import shared_work
from sweep.logged_model import record_job_model
from sweep.plots import layer_range_figure
from sweep.store import CacheEvent, WorkStore
from sweep.tracking import finite_metrics, flatten, setup_experiment, sha256_file, tracked_run

log = logging.getLogger(__name__)
# What produced a BoolQ number, beyond the eval.* params: logged as boolq.<key> tags.
_LOGGED_BOOLQ_CONFIG = ("lm_eval_version", "task_config_hash", "data_sha256", "bos_prepended", "selection")

BOOLQ_RESULT_ARTIFACT = "eval/boolq_result.json"  # BoolQResult.to_dict(): accuracy, config, per-example rows
FLOAT_BOOLQ_RESULT_ARTIFACT = "eval/float_boolq_result.json"
PPL_RESULT_ARTIFACT = "eval/wikitext2_result.json"  # PerplexityResult.to_dict(), with per-window NLL
FLOAT_PPL_RESULT_ARTIFACT = "eval/float_wikitext2_result.json"
WEIGHTS_ARTIFACT_DIR = "model"  # the whole saved output directory, when weights are logged
SHA256_ARTIFACT = "quantized/weights_sha256.json"


@dataclass
class JobOutcome:
    """What a finished job reports back (to the console and to any sweeper)."""

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


def cache_dir(cfg: DictConfig) -> str | None:
    """The work store's directory (``cache.dir``), or None: this process's memory only."""
    return cfg.get("cache", {}).get("dir")


def check_cache_config(cfg: DictConfig) -> None:
    """The ``cache.*`` settings, checked before anything is loaded or written."""
    policy = str(cfg.get("cache", {}).get("float_model", "converted"))
    if policy not in shared_work.FLOAT_MODEL_DISK_POLICIES:
        valid = ", ".join(shared_work.FLOAT_MODEL_DISK_POLICIES)
        raise QuantInputError("cache.float_model", f"{policy!r} is not a policy; valid: {valid}")


def float_baseline(
    cfg: DictConfig, store: WorkStore, model: shared_work.FloatModel
) -> tuple[FloatBaseline, CacheEvent]:
    """The float model's BoolQ (and perplexity if enabled) through the work store."""
    boolq = {**_boolq_args(cfg), "device": _device_of(model.loaded.model)}
    return shared_work.baseline(store, model, boolq, _perplexity_args(cfg))


def eval_devices(cfg: DictConfig) -> tuple[list[str] | None, dict[str, int] | None]:
    """``eval.devices`` (harness extension, e.g. ``+eval.devices=[cuda:0,cuda:1]``): the devices the
    evaluated model is spread over, with their budgets; checked before any work (None: one device)."""
    devices = cfg.eval.get("devices")
    if not devices:
        return None, None
    devices = [str(d) for d in devices]
    return devices, device_budgets(devices)


def _evaluation_model(
    cfg: DictConfig,
    job_model: Any,
    saved_directory: Path,
    device_type: str,
    devices: list[str] | None = None,
    budgets: dict[str, int] | None = None,
) -> tuple[Any, Any]:
    """The model to evaluate: reloaded from the saved directory (``eval.from_saved``) or the
    in-memory one, on ``devices`` when given; either way its state is proven equal to the saved
    tensors and logged."""
    if cfg.eval.get("from_saved", False):
        reloaded = load_quantized(saved_directory, device_type=device_type, devices=devices, max_memory=budgets)
        model, tokenizer, source = reloaded.model, reloaded.tokenizer, "saved_directory"
    else:
        model, tokenizer, source = job_model.model, job_model.tokenizer, "in_memory"
        if devices:
            spread_over_devices(model, devices, budgets)
    check = check_model_matches_saved(model, saved_directory)  # raises if they differ
    mlflow.set_tags({**check.to_tags("eval_"), "eval_source": source})
    return model, tokenizer


def _float_model(cfg: DictConfig, qcfg: QuantConfig, store: WorkStore) -> shared_work.FloatModel:
    return shared_work.float_model(
        store,
        qcfg.model_path,
        device_type=qcfg.device_type,
        trust_remote_code=qcfg.trust_remote_code,
        tokenizer_args=qcfg.tokenizer_args,
        allow_pickle=bool(cfg.model.get("allow_pickle", False)),
        disk_policy=str(cfg.get("cache", {}).get("float_model", "converted")),
    )


def _float_size_bytes(loaded: LoadedModel) -> float:
    """Bytes of the float model's tensors in its checkpoint dtype, tied tensors counted twice as the
    quantized output stores them: the denominator of the compression ratio."""
    itemsize = loaded.original_dtype.itemsize
    return float(sum(t.numel() * itemsize for t in loaded.model.state_dict().values()))


def run_job(
    cfg: DictConfig,
    qcfg: QuantConfig,
    run_name: str,
    tags: dict[str, str],
    log_weights: bool,
    store: WorkStore,
    run_id: str | None = None,
) -> JobOutcome:
    """Quantize, save, evaluate and log one recipe inside its own MLflow run.

    Shared work (float model, its statistics, the smoothed model, float baseline) comes from
    ``store`` (the process's one work store); what was reused is logged as ``cache.*`` tags and metrics.
    Any exception marks the run FAILED (with the error) and propagates to the caller.
    """
    started = time.perf_counter()
    progress.set_quiet(bool(cfg.get("quiet", False)))
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    store.take_events()  # this job's lookups start here
    with tracked_run(experiment_id, run_name, tags, run_id=run_id) as run:
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        overwrite = bool(cfg.overwrite) or _is_own_leftover(qcfg)
        check_inputs(qcfg, overwrite=overwrite)
        devices, budgets = eval_devices(cfg)

        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        float_model = _float_model(cfg, qcfg, store)
        loaded = float_model.loaded
        metrics["load_s"] = time.perf_counter() - t0
        metrics["float_size_bytes"] = _float_size_bytes(loaded)
        _note_peak(metrics, "load")
        baseline = None
        if cfg.eval.float_baseline:
            baseline, event = float_baseline(cfg, store, float_model)
            metrics["float_baseline_cache_hit"] = float(event.hit)
            metrics["float_baseline_s"] = event.seconds
            mlflow.set_tags({"float_baseline_source": event.outcome, "float_baseline_cache_key": event.key})
            _note_peak(metrics, "baseline")

        t0 = time.perf_counter()
        memo = shared_work.pipeline_memo(store, float_model, qcfg.tokenizer_args)
        result = quantize(loaded.model, loaded.tokenizer, qcfg, memo)
        job_model = dataclasses.replace(loaded, model=result.model)
        metrics["quantize_s"] = time.perf_counter() - t0
        _note_peak(metrics, "quantize")
        metrics.update({f"time_{k}": v for k, v in result.timings.items()})
        t0 = time.perf_counter()
        saved = save_result(result, loaded, qcfg.save_directory, overwrite=overwrite)
        metrics["save_s"] = time.perf_counter() - t0
        metrics["size_bytes"] = float(saved.total_bytes)
        metrics["float_layers"] = float(len(result.float_layers))
        _note_peak(metrics, "save")

        eval_model, eval_tokenizer = _evaluation_model(
            cfg, job_model, saved.directory, qcfg.device_type, devices, budgets
        )
        quant_eval = evaluate_boolq(eval_model, eval_tokenizer, device=_device_of(eval_model), **_boolq_args(cfg))
        metrics.update(quant_eval.to_metrics("boolq_"))
        _note_peak(metrics, "eval")
        mlflow.log_dict(quant_eval.to_dict(), BOOLQ_RESULT_ARTIFACT)
        ppl_args = _perplexity_args(cfg)
        if ppl_args is not None:
            quant_ppl = wikitext_perplexity(eval_model, eval_tokenizer, **ppl_args)
            metrics.update(quant_ppl.to_metrics("wikitext2_"))
            mlflow.log_dict(quant_ppl.to_dict(), PPL_RESULT_ARTIFACT)
        if baseline is not None:
            metrics.update(baseline.boolq.to_metrics("float_boolq_"))
            metrics.update(compare_boolq(baseline.boolq, quant_eval).to_metrics("vs_float_"))
            # A cached baseline's time is that of the run which computed it.
            metrics["vs_float_eval_time_ratio"] = quant_eval.elapsed / baseline.boolq.elapsed
            if baseline.perplexity is not None:
                metrics.update(baseline.perplexity.to_metrics("float_wikitext2_"))
                mlflow.log_dict(baseline.perplexity.to_dict(), FLOAT_PPL_RESULT_ARTIFACT)
            mlflow.log_dict(baseline.boolq.to_dict(), FLOAT_BOOLQ_RESULT_ARTIFACT)

        _log_outputs(saved.directory, saved.weight_files, log_weights)
        data = {"calib": qcfg.calib_file, "anti_calib": qcfg.anti_calib_file, "boolq": _boolq_args(cfg)["data_path"]}
        data["wikitext2"] = (ppl_args or {}).get("path")
        params = {"config_hash": tags.get("config_hash", ""), "quant_type": result.quant_type}
        model_id = record_job_model(
            run.info.run_id, experiment_id, run_name, saved.directory, log_weights, data, params
        )
        mlflow.log_figure(layer_range_figure(result.layer_report()), "plots/layer_range_param.png")
        _log_sqnr_plot(result.layer_report(), saved.directory)
        _log_cache_events(store.take_events(), metrics)
        metrics["job_s"] = time.perf_counter() - started
        metrics["peak_rss_bytes"] = float(progress.peak_rss_bytes())  # of the process so far (all its jobs)
        log.info("%s", progress.peak_memory_line())
        mlflow.set_tags({f"boolq.{k}": str(quant_eval.config.get(k)) for k in _LOGGED_BOOLQ_CONFIG})
        mlflow.log_metrics(finite_metrics(metrics), model_id=model_id)  # linked to the LoggedModel too
        mlflow.set_tag("quant_type", result.quant_type)
        return JobOutcome(run.info.run_id, result.quant_type, metrics, str(saved.directory))


def _note_peak(metrics: dict[str, float], stage: str) -> None:
    """``peak_rss_after_<stage>_bytes``: the process's peak RSS when ``stage`` ended (the peak only
    grows, so the first stage whose figure jumps is where the job's memory peaked); then the
    stage's freed memory goes back to the OS, so it does not stay resident under the next stage."""
    metrics[f"peak_rss_after_{stage}_bytes"] = float(progress.peak_rss_bytes())
    progress.release_free_heap()


def _log_sqnr_plot(rows: list[dict[str, Any]], directory: Path) -> None:
    """The per-layer SQNR plot (float layers marked), logged to the run (the saved output stays as written)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_layer_sqnr(rows, Path(tmp) / "layer_sqnr.png", title=directory.name)
        mlflow.log_artifact(str(path), "plots")


def _is_own_leftover(qcfg: QuantConfig) -> bool:
    """Whether ``save_directory`` holds the output of this very recipe from an interrupted attempt
    (its saved recipe equals this one): a resumed job may then replace it."""
    recipe = Path(qcfg.save_directory) / RECIPE_FILE
    try:
        return json.loads(recipe.read_text(encoding="utf-8")) == json.loads(json.dumps(qcfg.to_dict(), default=str))
    except (OSError, ValueError):
        return False


def _log_cache_events(events: list[CacheEvent], metrics: dict[str, float]) -> None:
    """Per kind of shared work: ``cache.<kind>`` = memory / disk / computed (its first lookup in this
    job, the one that paid or saved the work), ``cache.<kind>.key`` and ``cache.<kind>.where`` tags;
    hits as metrics."""
    first: dict[str, CacheEvent] = {}
    for event in events:
        first.setdefault(event.kind, event)
    for kind, event in first.items():
        mlflow.set_tag(f"cache.{kind}", event.outcome)
        mlflow.set_tag(f"cache.{kind}.key", event.key)
        mlflow.set_tag(f"cache.{kind}.where", event.where)
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
