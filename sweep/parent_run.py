"""The parent MLflow run of a sweep, and the bookkeeping that makes a sweep resumable.

One parent run per sweep (identified by its sweep key); every job is a child run carrying the
``mlflow.parentRunId`` tag. Re-running the same sweep reopens the same parent, so a sweep that was
killed and re-run still has all its jobs under one parent. The parent file in the sweep directory
tells the jobs (in any process) which parent to log under; one sweep directory serves one live sweep.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from quant.errors import QuantInputError
from sweep.run_owner import owner_alive, owner_tags
from sweep.search_filter import latest_run, quoted

PARENT_FILE = "mlflow_parent.json"  # in the Hydra sweep directory: how jobs find their parent
ROLE_TAG = "sweep.role"  # "parent" or "job"
KEY_TAG = "sweep.key"
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
    owner: dict[str, str] = field(default_factory=owner_tags)  # the sweep process (sweep.run_owner)


def find_parent(client: MlflowClient, experiment_id: str, sweep_key: str) -> Run | None:
    """The most recent parent run of the sweep ``sweep_key`` in the experiment, if any."""
    return latest_run(client, experiment_id, f"tags.`{ROLE_TAG}` = 'parent' and tags.`{KEY_TAG}` = {quoted(sweep_key)}")


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


def write_parent_file(sweep_dir: str | Path, parent: ParentRun) -> Path:
    """Tell the sweep's jobs (in this or other processes) which parent run to log under.

    A sweep directory belongs to one sweep at a time: when another live process's sweep wrote the
    file, this is a :class:`QuantInputError` (``hydra.sweep.dir``), since the jobs' outputs would collide.
    """
    current = read_parent_file(sweep_dir)
    if current is not None and current.owner != parent.owner and owner_alive(current.owner) is not False:
        who = f"pid {current.owner.get('sweep.pid')} on {current.owner.get('sweep.host')}"
        raise QuantInputError(
            "hydra.sweep.dir", f"{sweep_dir} is in use by the running sweep of {who}; give each sweep its own"
        )
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
