"""Every regression check as an MLflow run of its own experiment, and reading them back.

A check run is linked to the run and model version it checked (tags), records what produced it
(git commit, package versions, model and data fingerprints), the two accuracies, the delta and the
gate's bounds and verdict as metrics, and the report, verdict JSON, tensor diff and the candidate's
per-example BoolQ result as artifacts. Runs are created through the client (no active-run state),
so concurrent checks on one store never touch each other's runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep.logged_model import log_data_inputs, log_model_input, logged_model_of
from sweep.provenance import git_state, package_versions
from sweep.tracking import finite_metrics, setup_experiment

if TYPE_CHECKING:
    from sweep.regress import Check

ROLE_TAG = "regress.role"
CHECK_ROLE = "check"
HISTORY_ROLE = "history"
REPORT_ARTIFACT = "regress/report.txt"
VERDICT_ARTIFACT = "regress/verdict.json"
TENSOR_DIFF_ARTIFACT = "regress/tensor_diff.json"
CANDIDATE_RESULT_ARTIFACT = "eval/boolq_result.json"
HISTORY_TABLE_ARTIFACT = "regress/history.txt"
HISTORY_PLOT_ARTIFACT = "regress/history.png"


def provenance() -> dict[str, str]:
    """What produced a check today: git commit and dirty flag, package versions."""
    return {**git_state(), **package_versions()}


def check_tags(check: Check, origin: Mapping[str, str]) -> dict[str, str]:
    """Links, verdict, provenance and fingerprints of one check."""
    tags = {
        ROLE_TAG: CHECK_ROLE,
        "regress.mode": check.mode,
        "regress.recipe": check.recipe_key,
        "regress.recipe_name": check.recipe_name,
        "regress.verdict": check.verdict.status,
        "regress.metric": check.metric,
        "regress.baseline": check.reference.label,
        "regress.candidate": check.candidate.label,
        "regress.reference_run": check.reference_run_id or "",
        "regress.model_name": check.model_name or "",
        "regress.model_version": check.model_version or "",
        "regress.bytes_identical": "" if check.bytes_identical is None else str(check.bytes_identical).lower(),
        "fingerprint.boolq_data": str(check.reference.result.config.get("data_sha256")),
        **(check.digests or {}),
        **origin,
    }
    linked = f"run `{check.reference_run_id}`" if check.reference_run_id else check.reference.label
    if check.model_version:
        linked += f", model `{check.model_name}` version {check.model_version}"
    tags["mlflow.note.content"] = (
        f"Regression check of {check.candidate.label} against {linked}: {check.verdict.line()}"
    )
    return tags


def check_metrics(check: Check) -> dict[str, float]:
    """Candidate and baseline accuracy, delta, changed answers, the gate's numbers, tensor counts."""
    c = check.comparison
    metrics = {
        "candidate_acc": c.candidate_accuracy,
        "baseline_acc": c.reference_accuracy,
        "delta": c.accuracy_delta,
        "n_flips": float(c.n_flips),
        "n_baseline_only": float(c.n_reference_only),
        "n_candidate_only": float(c.n_candidate_only),
        **check.verdict.to_metrics("gate_"),
    }
    if check.tensor_diff is not None:
        metrics.update(check.tensor_diff.to_metrics("tensors_"))
    return finite_metrics(metrics)


def record_check(
    check: Check,
    tracking_uri: str,
    experiment_name: str,
    artifact_root: str | None = None,
    origin: Mapping[str, str] | None = None,
    start_time: int | None = None,
) -> str:
    """Log ``check`` as a FINISHED run of ``experiment_name`` (created if new); returns its id.

    ``origin`` defaults to today's :func:`provenance`; ``start_time`` (ms since the epoch) to now.
    """
    from sweep.regress import check_payload, report  # regress imports this module

    experiment_id = setup_experiment(tracking_uri, experiment_name, artifact_root)
    client = MlflowClient(tracking_uri)
    name = f"regress-{check.recipe_name or check.recipe_key[:16]}"
    run = client.create_run(experiment_id, start_time=start_time, run_name=name)
    run_id = run.info.run_id
    try:
        tags = check_tags(check, provenance() if origin is None else origin)
        timestamp = start_time if start_time is not None else run.info.start_time
        metrics = [Metric(k, v, timestamp, 0) for k, v in check_metrics(check).items()]
        params = [Param("margin", str(check.verdict.margin)), Param("alpha", str(check.verdict.alpha))]
        client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
        client.log_text(run_id, report(check), REPORT_ARTIFACT)
        client.log_dict(run_id, check_payload(check), VERDICT_ARTIFACT)
        if check.tensor_diff is not None:
            client.log_dict(run_id, check.tensor_diff.to_dict(), TENSOR_DIFF_ARTIFACT)
        client.log_dict(run_id, check.candidate.result.to_dict(), CANDIDATE_RESULT_ARTIFACT)
        _log_inputs(client, run_id, check)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED", end_time=None if start_time is None else start_time + 1)
    return run_id


def record_history(client: MlflowClient, experiment_id: str, table: str, figure: Figure) -> str:
    """A ``history`` run holding the printed table and the plot; returns its id."""
    run = client.create_run(experiment_id, run_name="regress-history", tags={ROLE_TAG: HISTORY_ROLE, **provenance()})
    client.log_text(run.info.run_id, table, HISTORY_TABLE_ARTIFACT)
    client.log_figure(run.info.run_id, figure, HISTORY_PLOT_ARTIFACT)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _log_inputs(client: MlflowClient, run_id: str, check: Check) -> None:
    """The data the check read, and the checked run's LoggedModel, as the run's inputs (MLflow 3)."""
    log_data_inputs(client, run_id, check.data_files)
    if check.reference_run_id:
        try:
            model_id = logged_model_of(client, client.get_run(check.reference_run_id).data.tags)
        except MlflowException:  # the checked run was deleted since: nothing to link
            model_id = None
        if model_id is not None:
            log_model_input(client, run_id, model_id)
            client.set_tag(run_id, "regress.reference_model_id", model_id)


@dataclass(frozen=True)
class CheckRecord:
    """One recorded check, as the history shows it."""

    run_id: str
    start_time: int  # ms since the epoch
    recipe: str
    recipe_name: str
    verdict: str
    gated_metric: str  # what the gate judged (its drop's units)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        return self.metrics.get(name, math.nan)


def recorded_checks(client: MlflowClient, experiment_id: str) -> list[CheckRecord]:
    """Every FINISHED check run of the experiment, oldest first (history runs left out)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{CHECK_ROLE}'", max_results=50000)
    records = [_record(run) for run in runs if run.info.status == "FINISHED"]
    return sorted(records, key=lambda r: (r.start_time, r.run_id))


def _record(run: Any) -> CheckRecord:
    tags = dict(run.data.tags)
    return CheckRecord(
        run.info.run_id,
        int(run.info.start_time or 0),
        tags.get("regress.recipe", ""),
        tags.get("regress.recipe_name", ""),
        tags.get("regress.verdict", ""),
        tags.get("regress.metric", "boolq_acc"),
        dict(run.data.metrics),
        tags,
    )
