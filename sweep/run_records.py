"""Reading a sweep's results back from MLflow as plain records (for summaries, selection, notebooks)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from quant.errors import QuantInputError
from sweep.parent_run import PARENT_TAG, REUSED_TAG_PREFIX, ROLE_TAG


@dataclass
class RunRecord:
    """One job run: identity, outcome, numbers."""

    run_id: str
    name: str
    status: str
    config_hash: str
    start_time: int  # ms since the epoch
    end_time: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Run) -> RunRecord:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            status=run.info.status,
            config_hash=run.data.tags.get("config_hash", ""),
            start_time=run.info.start_time or 0,
            end_time=run.info.end_time,
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
        )

    @property
    def error(self) -> str:
        return self.tags.get("error", "")

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)


def job_runs(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[RunRecord]:
    """Every job run of the experiment (parent runs excluded), oldest first, optionally filtered."""
    runs = client.search_runs([experiment_id], filter_string=filter_string, max_results=50000)
    # Filtered here, not in the query: runs logged without a role tag are jobs too.
    records = [RunRecord.from_run(r) for r in runs if r.data.tags.get(ROLE_TAG) != "parent"]
    return sorted(records, key=lambda r: r.start_time)


def sweep_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[RunRecord]:
    """The jobs of one sweep: its children, plus runs it reused from elsewhere when resuming."""
    records = job_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    parent = client.get_run(parent_run_id)
    known = {r.run_id for r in records}
    for key, run_id in parent.data.tags.items():
        if key.startswith(REUSED_TAG_PREFIX) and run_id not in known:
            records.append(RunRecord.from_run(client.get_run(run_id)))
            known.add(run_id)
    return sorted(records, key=lambda r: r.start_time)


def latest_per_config(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One record per config hash: the latest FINISHED run if there is one, else the latest attempt."""
    best: dict[str, RunRecord] = {}
    for record in records:
        key = record.config_hash or record.run_id
        current = best.get(key)
        if current is None or _preference(record) < _preference(current):
            best[key] = record
    return sorted(best.values(), key=lambda r: r.start_time)


def _preference(record: RunRecord) -> tuple[int, int]:
    finished_first = 0 if record.status == "FINISHED" else 1
    return finished_first, -record.start_time


def resolve_run_id(client: MlflowClient, experiment_id: str, run_ref: str) -> str:
    """A full run id from a full id or a unique prefix of one (as the summary tables print them)."""
    if len(run_ref) == 32:
        return run_ref
    matches = [
        r.info.run_id
        for r in client.search_runs([experiment_id], max_results=50000)
        if r.info.run_id.startswith(run_ref)
    ]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise QuantInputError("run", f"{found} in the experiment with an id starting {run_ref!r}")
    return matches[0]
