"""``python -m sweep``: the Hydra app over ``conf/``; one job per composed recipe.

Single run: bad input ends with one line and exit 2, a failed job with one line and exit 1.
Multirun: every job is recorded in MLflow (a failed one as FAILED with its error) and the
sweep goes on; the app returns the job's BoolQ accuracy so any Hydra sweeper can drive it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from quant.errors import QuantInputError
from sweep.hydra_config import quant_config_from_hydra
from sweep.job import JobOutcome, run_job
from sweep.tracking import setup_experiment, tracked_run

log = logging.getLogger("sweep")
REPO_ROOT = Path(__file__).resolve().parents[1]
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)

EXIT_BAD_INPUT = 2
EXIT_JOB_FAILED = 1


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def recipe_hash(cfg: DictConfig) -> str:
    """Content key of everything that defines a job's result (not where it is written or logged)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    for volatile in ("save_directory", "overwrite", "tracking"):
        data.pop(volatile, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_name_and_tags(cfg: DictConfig) -> tuple[str, dict[str, str]]:
    hydra_cfg = HydraConfig.get()
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    name = f"{choices.get('scheme', '')}-{choices.get('anti_method', '')}-act{cfg.act_method}-{cfg.disable_level}"
    tags = {f"choice.{k}": v for k, v in choices.items()}
    tags.update(
        {
            "act_method": str(cfg.act_method),
            "disable_level": str(cfg.disable_level),
            "config_hash": recipe_hash(cfg),
            "git_commit": _git_commit(),
            "hydra_overrides": " ".join(hydra_cfg.overrides.task)[:5000],
        }
    )
    return name, tags


def _record_invalid_job(cfg: DictConfig, name: str, tags: dict[str, str], exc: Exception) -> None:
    """In a multirun a job with a bad config is still a job: record it as FAILED."""
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    try:
        with tracked_run(experiment_id, name, tags):
            raise exc
    except QuantInputError:
        pass


def print_results(outcome: JobOutcome, cfg: DictConfig) -> None:
    """The small table a user reads after a run, and how to open MLflow."""
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


@hydra.main(config_path=str(REPO_ROOT / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One job of the sweep; returns BoolQ accuracy (NaN for a failed job in a multirun)."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    name, tags = _run_name_and_tags(cfg)
    try:
        qcfg = quant_config_from_hydra(cfg)
    except QuantInputError as exc:
        if not multirun:
            print(f"sweep: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        _record_invalid_job(cfg, name, tags, exc)
        print(f"[FAILED] {name}: {exc}")
        return math.nan
    try:
        outcome = run_job(cfg, qcfg, name, tags)
    except QuantInputError as exc:
        print(f"{'[FAILED] ' + name + ': ' if multirun else 'sweep: error: '}{exc}", file=sys.stderr)
        if not multirun:
            sys.exit(EXIT_BAD_INPUT)
        return math.nan
    except Exception as exc:
        log.exception("job %s failed", name)
        print(f"[FAILED] {name}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(EXIT_JOB_FAILED)
        return math.nan
    print_results(outcome, cfg)
    return float(outcome.metrics.get("boolq_acc", math.nan))
