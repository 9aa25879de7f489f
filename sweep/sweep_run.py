"""The parent MLflow run of a sweep, and the bookkeeping that makes a sweep resumable.

One parent run per sweep (identified by its sweep key); every job is a child run carrying the
``mlflow.parentRunId`` tag. Re-running the same sweep reopens the same parent, so a sweep that was
killed and re-run still has all its jobs under one parent. Runs left RUNNING by a process that no
longer exists are marked KILLED before the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"  # in the Hydra sweep directory: how jobs find their parent
ROLE_TAG = "sweep.role"  # "parent" or "job"
KEY_TAG = "sweep.key"
HOST_TAG = "sweep.host"
PID_TAG = "sweep.pid"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows children under the parent
REUSED_TAG_PREFIX = "reused."  # parent tag reused.<config_hash> = run finished elsewhere and skipped here


@dataclass(frozen=True)
class ParentRun:
    """Where a sweep's jobs log: the parent run and its experiment."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    sweep_key: str
    n_jobs: int | None = None  # None when the sweeper's job count is not known in advance


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run, so a later sweep can tell whether it still lives."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def find_parent(client: MlflowClient, experiment_id: str, sweep_key: str) -> Run | None:
    """The most recent parent run of the sweep ``sweep_key`` in the experiment, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'parent' and tags.`{KEY_TAG}` = {_quoted(sweep_key)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def open_parent_run(
    client: MlflowClient,
    tracking_uri: str,
    experiment_id: str,
    sweep_key: str,
    run_name: str,
    tags: dict[str, str],
    resume: bool,
    n_jobs: int | None = None,
) -> tuple[ParentRun, bool]:
    """Reopen this sweep's parent run (``resume``) or start a new one; returns it and whether it was reopened."""
    existing = find_parent(client, experiment_id, sweep_key) if resume else None
    all_tags = {**tags, **owner_tags(), ROLE_TAG: "parent", KEY_TAG: sweep_key}
    if existing is not None:
        run_id = existing.info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        for key, value in all_tags.items():
            client.set_tag(run_id, key, value)
        return ParentRun(run_id, experiment_id, tracking_uri, sweep_key, n_jobs), True
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return ParentRun(run.info.run_id, experiment_id, tracking_uri, sweep_key, n_jobs), False


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def reap_dead_runs(client: MlflowClient, experiment_id: str, sweep_key: str) -> list[str]:
    """Mark KILLED the sweep's RUNNING job runs whose process (on this host) is gone.

    Runs owned by another host are left alone: this process cannot tell whether they still run.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{KEY_TAG}` = {_quoted(sweep_key)} and tags.`{ROLE_TAG}` = 'job' and attributes.status = 'RUNNING'"
        ),
        max_results=10000,
    )
    reaped = []
    for run in runs:
        tags = run.data.tags
        pid = int(tags.get(PID_TAG, "0") or 0)
        if tags.get(HOST_TAG) != socket.gethostname() or pid == os.getpid() or pid <= 0 or process_alive(pid):
            continue
        client.set_tag(run.info.run_id, "error", f"process {pid} ended before the run did (killed); marked by resume")
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        reaped.append(run.info.run_id)
    if reaped:
        log.warning("marked %d run(s) of a dead sweep process KILLED: %s", len(reaped), ", ".join(reaped))
    return reaped


def write_parent_file(sweep_dir: str | Path, parent: ParentRun) -> Path:
    """Tell the sweep's jobs (in this or other processes) which parent run to log under."""
    path = Path(sweep_dir) / PARENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(parent), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_parent_file(sweep_dir: str | Path) -> ParentRun | None:
    path = Path(sweep_dir) / PARENT_FILE
    if not path.is_file():
        return None
    return ParentRun(**json.loads(path.read_text(encoding="utf-8")))


def finished_run(client: MlflowClient, experiment_id: str, config_hash: str) -> Run | None:
    """The latest FINISHED run of this config in the experiment (what resume skips on), if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = {_quoted(config_hash)} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None
