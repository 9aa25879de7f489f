"""The Hydra callback that gives every multirun one parent MLflow run, and prints its summary.

``on_multirun_start`` opens (or, for a re-run of the same sweep, reopens) the parent run (opening
the store marks runs of dead processes KILLED) and writes the parent's id into the sweep directory
for the jobs; when it cannot, the sweep stops there with one line (exit 2 for bad input, else 1)
instead of Hydra's warning. ``on_multirun_end`` prints the ranking table and the failures, logs
them (with plots) to the parent run, closes it, and exits 1 when any config did not finish.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from quant.errors import QuantInputError
from sweep.analysis import grid_table, runs_frame
from sweep.app import EXIT_BAD_INPUT, EXIT_JOB_FAILED
from sweep.parent_run import ParentRun, open_parent_run, write_parent_file
from sweep.plots import grid_figure, pareto_figure
from sweep.provenance import git_state, package_versions, sweep_key
from sweep.run_records import latest_per_config, sweep_runs
from sweep.summary import failure_lines, ranking_table
from sweep.tracking import finite_metrics, setup_experiment

log = logging.getLogger(__name__)


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper will launch (None for other sweepers or glob() axes)."""
    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.params or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # counting is only for progress lines; never stop a sweep over it
        return None


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class SweepParentRun(Callback):
    """Registered in ``conf/config.yaml`` under ``hydra.callbacks``."""

    def __init__(self) -> None:
        self.parent: ParentRun | None = None
        self._previous_sigterm: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and launches the jobs anyway: without a
        # parent they would log nowhere sensible, so the sweep ends here.
        try:
            self._open_parent(config, kwargs.get("config_name"))
        except QuantInputError as exc:
            print(f"sweep: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except Exception as exc:
            log.debug("could not open the parent run", exc_info=True)  # traceback: hydra.verbose=sweep.callbacks
            message = f"could not open the sweep's parent run: {exc.__class__.__name__}: {exc}"
            print(f"sweep: error: {message}", file=sys.stderr)
            sys.exit(EXIT_JOB_FAILED)
        try:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends runs as KILLED
        except ValueError:  # not the main thread
            self._previous_sigterm = None

    def _open_parent(self, config: DictConfig, config_name: str | None) -> None:
        HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the tracking settings
        tracking = config.tracking
        experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
        client = MlflowClient(tracking.tracking_uri)
        task_overrides = list(config.hydra.overrides.task)
        params = config.hydra.sweeper.get("params")
        sweeper_params = OmegaConf.to_container(params, resolve=False) if params else {}
        key = sweep_key(config_name, task_overrides, sweeper_params)
        choices = config.hydra.runtime.choices
        grid = str(choices.get("grid") or (f"search-{choices.search}" if choices.get("search") else "cli"))
        n_jobs = count_jobs(config)
        tags = {
            **git_state(),
            **package_versions(),
            "sweep.grid": grid,
            "sweep.overrides": " ".join(task_overrides)[:5000],
            "sweep.params": str(sweeper_params)[:5000],
            "sweep.n_jobs": str(n_jobs if n_jobs is not None else "unknown"),
        }
        self.parent, reopened = open_parent_run(
            client,
            tracking.tracking_uri,
            experiment_id,
            key,
            f"sweep-{grid}-{key[:6]}",
            tags,
            resume=bool(config.get("resume", True)),
            n_jobs=n_jobs,
        )
        write_parent_file(config.hydra.sweep.dir, self.parent)
        verb = "resuming" if reopened else "starting"
        print(
            f"sweep {key}: {verb} parent run {self.parent.run_id} ({n_jobs or '?'} jobs) in {config.hydra.sweep.dir}",
            flush=True,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if self.parent is None:
            return
        client = MlflowClient(self.parent.tracking_uri)
        records = latest_per_config(sweep_runs(client, self.parent.experiment_id, self.parent.run_id))
        table = ranking_table(records)
        failures = failure_lines(records)
        finished = [r for r in records if r.status == "FINISHED"]
        print(
            f"\nsweep {self.parent.sweep_key}: {len(records)} configs, {len(finished)} finished, "
            f"{len(failures)} not finished (parent run {self.parent.run_id})"
        )
        print(table)
        if failures:
            print("\nfailures:")
            print("\n".join(f"  {line}" for line in failures))
        self._log_summary(client, records, table, failures)
        client.set_terminated(self.parent.run_id, status=RunStatus.to_string(RunStatus.FINISHED))
        if failures:
            sys.exit(EXIT_JOB_FAILED)  # CI sees a sweep with failed jobs

    def _log_summary(self, client: MlflowClient, records: list, table: str, failures: list[str]) -> None:
        run_id = self.parent.run_id
        client.log_text(run_id, table + "\n\nfailures:\n" + "\n".join(failures) + "\n", "summary/ranking.txt")
        frame = runs_frame(records)
        client.log_text(run_id, frame.to_csv(index=False), "summary/runs.csv")
        accuracies = [r.metric("boolq_acc") for r in records if r.metric("boolq_acc") is not None]
        floats = [r.metric("float_boolq_acc") for r in records if r.metric("float_boolq_acc") is not None]
        metrics = {
            "n_configs": len(records),
            "n_finished": sum(r.status == "FINISHED" for r in records),
            "n_failed": sum(r.status != "FINISHED" for r in records),
            "best_boolq_acc": max(accuracies) if accuracies else None,
            "float_boolq_acc": floats[0] if floats else None,
        }
        for name, value in finite_metrics({k: v for k, v in metrics.items() if v is not None}).items():
            client.log_metric(run_id, name, value)
        if accuracies:
            client.log_figure(run_id, pareto_figure(frame, metrics["float_boolq_acc"]), "plots/pareto.png")
            client.log_figure(run_id, grid_figure(grid_table(frame)), "plots/grid_boolq_acc.png")
