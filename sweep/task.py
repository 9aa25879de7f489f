"""The body of one Hydra job of ``python -m sweep`` (:func:`sweep.app.main` calls :func:`run_task`).

Single run: bad input ends with one line and exit 2, a failed job with one line and exit 1.
Multirun: every job is a child of the sweep's parent MLflow run (see :mod:`sweep.callbacks`); a
job whose config already FINISHED in the experiment is skipped (resume); a failed job is recorded
as FAILED with its error and the sweep goes on. Each job prints one progress line; the task returns
the selection objective (:func:`sweep.select.search_objective`: the metric ``sweep.select`` ranks
by, lowered when its rule would not ship the run) so any Hydra sweeper, Optuna's included, can drive it.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from quant.errors import QuantInputError
from sweep.app import EXIT_BAD_INPUT, EXIT_JOB_FAILED
from sweep.claims import Claim, claim_config
from sweep.hydra_config import quant_config_from_hydra
from sweep.inputs import log_weights_policy
from sweep.job import JobOutcome, cache_dir, check_cache_config, run_job
from sweep.parent_run import KEY_TAG, PARENT_TAG, REUSED_TAG_PREFIX, ROLE_TAG, ParentRun, read_parent_file
from sweep.provenance import config_hash, git_state, package_versions
from sweep.run_owner import owner_tags
from sweep.select import configured_rule, search_objective
from sweep.shared_work import path_identity
from sweep.stale_runs import OUTPUT_TAG
from sweep.store import WorkStore
from sweep.summary import progress_line
from sweep.tracking import setup_experiment, tracked_run

log = logging.getLogger("sweep")

# Keys whose overrides name a recipe beyond the short axes (paths and data are left to the hash).
_RECIPE_PREFIXES = ("quant.", "scheme.", "calib.")
_PATH_SUFFIXES = ("_file", "_path", "_dir", "path")


def run_name(cfg: DictConfig, choices: dict[str, str], job_overrides: list[str], config_hash: str) -> str:
    """``[<experiment>:]<scheme>-<anti>[<its settings>]-act<n>-<level>-<calib>[<other recipe overrides>]-<hash>``:
    readable, and distinct for distinct configs (``hash``: the first 6 characters of the config hash)."""
    anti = choices.get("anti_method", str(cfg.anti_method.name))
    settings = [o.removeprefix("anti_method.params.") for o in job_overrides if o.startswith("anti_method.params.")]
    if settings:
        anti += "[" + ",".join(sorted(settings)) + "]"
    scheme, calib = choices.get("scheme", ""), choices.get("calib", "")
    name = f"{scheme}-{anti}-act{cfg.act_method}-{cfg.disable_level}-{calib}"
    recipe = sorted(
        o.lstrip("+")
        for o in job_overrides
        if o.lstrip("+").startswith(_RECIPE_PREFIXES) and not o.split("=")[0].endswith(_PATH_SUFFIXES)
    )
    if recipe:
        name += "[" + ",".join(recipe) + "]"
    experiment = choices.get("experiment")
    if experiment and experiment not in ("None", "null"):
        name = f"{experiment}:{name}"
    return f"{name}-{config_hash[:6]}"


def job_tags(cfg: DictConfig, parent: ParentRun | None, store: WorkStore) -> dict[str, str]:
    """Hydra choices, config hash (the model's content identity through ``store``), provenance, and
    the sweep/parent links of one job's run."""
    hydra_cfg = HydraConfig.get()
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    tags = {f"choice.{k}": v for k, v in choices.items()}
    tags.update(
        {
            "act_method": str(cfg.act_method),
            "disable_level": str(cfg.disable_level),
            "config_hash": config_hash(cfg, path_identity(store, str(cfg.model.path))),
            "hydra_overrides": " ".join(hydra_cfg.overrides.task)[:5000],
            ROLE_TAG: "job",
            OUTPUT_TAG: str(cfg.save_directory),
            **git_state(),
            **package_versions(),
            **owner_tags(),
        }
    )
    if parent is not None:
        tags.update({PARENT_TAG: parent.run_id, KEY_TAG: parent.sweep_key, "sweep.job_num": str(hydra_cfg.job.num)})
    return tags


def _claim(cfg: DictConfig, name: str, tags: dict[str, str], parent: ParentRun | None) -> Claim:
    """Resume and claims (:mod:`sweep.claims`): a FINISHED run of this config to reuse (recorded on the
    parent when it is not one of its children), else this job's own RUNNING run."""
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    client = MlflowClient(tracking.tracking_uri)
    claim = claim_config(client, tracking.tracking_uri, experiment_id, tags["config_hash"], name, tags)
    run = claim.finished
    if run is not None and parent is not None and run.data.tags.get(PARENT_TAG) != parent.run_id:
        client.set_tag(parent.run_id, REUSED_TAG_PREFIX + tags["config_hash"], run.info.run_id)
    return claim


def _record_invalid_job(cfg: DictConfig, name: str, tags: dict[str, str], exc: QuantInputError) -> str:
    """In a multirun a job with a bad config is still a job: record it as FAILED; returns the run id."""
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    run_id = ""
    try:
        with tracked_run(experiment_id, name, tags) as run:
            run_id = run.info.run_id
            raise exc
    except QuantInputError:
        pass
    return run_id


def _last_run_id(before: str | None = None) -> str | None:
    """The id of the run MLflow last started, unless it is ``before`` (the job then started none)."""
    run = mlflow.last_active_run()
    run_id = run.info.run_id if run is not None else None
    return None if run_id == before else run_id


def print_results(outcome: JobOutcome, cfg: DictConfig) -> None:
    """The small table a user reads after a single run, and how to open MLflow."""
    m = outcome.metrics
    n = int(m.get("boolq_n", 0))
    rows = [
        ("float", m.get("float_boolq_acc"), None),
        (outcome.quant_type, m.get("boolq_acc"), m.get("vs_float_accuracy_delta")),
    ]
    print(f"\n{'model':<12} {'BoolQ acc (n=' + str(n) + ')':>20} {'delta vs float':>15}")
    for label, acc, delta in rows:
        acc_text = "-" if acc is None else f"{acc:.4f}"
        delta_text = "" if delta is None else f"{delta:+.4f}"
        print(f"{label:<12} {acc_text:>20} {delta_text:>15}")
    if "vs_float_mcnemar_p" in m:
        print(f"flip rate {m['vs_float_flip_rate']:.3f}, McNemar p = {m['vs_float_mcnemar_p']:.3f}")
    print(f"quantize time {m.get('quantize_s', 0):.1f} s; saved to {outcome.save_directory}")
    print(f"MLflow run id: {outcome.run_id} (experiment '{cfg.tracking.experiment_name}')")
    print(f"MLflow UI: mlflow ui --backend-store-uri {cfg.tracking.tracking_uri}  then open http://127.0.0.1:5000")


@functools.cache
def work_store(root: str | None) -> WorkStore:
    """The process's one work store over ``cache.dir`` (Hydra's basic launcher runs every job of a
    multirun in this process; other launchers' workers open their own over the same directory)."""
    return WorkStore(root)


def run_task(cfg: DictConfig) -> float:
    """One job of the sweep; returns its selection objective (NaN for a failed job in a multirun)."""
    started = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    parent = read_parent_file(hydra_cfg.sweep.dir) if multirun else None
    if multirun and parent is None:
        log.warning("no parent run recorded in %s (hydra.callbacks without SweepParentRun?)", hydra_cfg.sweep.dir)
    invalid = None
    try:
        qcfg = quant_config_from_hydra(cfg)
        check_cache_config(cfg)
        log_weights = log_weights_policy(cfg, multirun)
    except QuantInputError as exc:
        if not multirun:
            print(f"sweep: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        invalid = exc
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items()}
    # A job refused for its config writes nothing to the cache, not even its model's identity.
    store = work_store(cache_dir(cfg)) if invalid is None else WorkStore(None)
    tags = job_tags(cfg, parent, store)
    name = run_name(cfg, choices, list(hydra_cfg.overrides.task), tags["config_hash"])
    total = f"/{parent.n_jobs}" if parent is not None and parent.n_jobs else ""
    job = f"job {hydra_cfg.job.num + 1}{total}" if multirun else "run"

    def report(status: str, run_id: str | None = None, metrics: dict | None = None, note: str = "") -> None:
        line = progress_line(job, name, status, time.perf_counter() - started, run_id, metrics, note)
        print(line, flush=True)

    if invalid is not None:
        report("FAILED", _record_invalid_job(cfg, name, tags, invalid), note=str(invalid))
        return math.nan
    claimed_run = None
    if multirun and cfg.get("resume", True):
        claim = _claim(cfg, name, tags, parent)
        if claim.finished is not None:
            done = claim.finished
            status = "SKIPPED (finished by another sweep)" if claim.waited else "SKIPPED (finished before)"
            report(status, done.info.run_id, dict(done.data.metrics))
            return search_objective(dict(done.data.metrics), configured_rule(cfg))
        claimed_run = claim.run_id
    previous_run = _last_run_id()
    try:
        outcome = run_job(cfg, qcfg, name, tags, log_weights, store, run_id=claimed_run)
    except QuantInputError as exc:
        if not multirun:
            print(f"sweep: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        report("FAILED", claimed_run or _last_run_id(previous_run), note=str(exc))
        return math.nan
    except Exception as exc:
        log.exception("job %s failed", name)
        if not multirun:
            print(f"sweep: error: job failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            sys.exit(EXIT_JOB_FAILED)
        report("FAILED", claimed_run or _last_run_id(previous_run), note=f"{exc.__class__.__name__}: {exc}")
        return math.nan
    if multirun:
        report("FINISHED", outcome.run_id, outcome.metrics)
    else:
        print_results(outcome, cfg)
    return search_objective(outcome.metrics, configured_rule(cfg))
