"""MLflow tracking: a SQLite store by default, one run per job, flattened params, artifacts."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from quant.errors import QuantInputError
from sweep.stale_runs import reap_stale_runs

MAX_PARAM_CHARS = 500
SQLITE_PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    return Path(tracking_uri[len(SQLITE_PREFIX) :]) if tracking_uri.startswith(SQLITE_PREFIX) else None


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive between processes for a SQLite store (a lock file beside the database), which
    MLflow creates and migrates on first use and cannot do twice at once; a no-op for a server,
    which serialises its own writes."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with db.with_name(db.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def setup_experiment(tracking_uri: str, experiment_name: str, artifact_root: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` and return the id of ``experiment_name`` (created if new);
    runs of dead processes in it are marked KILLED and their leftovers removed.

    Creating the store and the experiment happens under :func:`store_lock`, so sweeps started at the
    same moment on a fresh directory do not race. A new experiment stores its artifacts under
    ``artifact_root/<name>`` (an absolute path), so runs started from any working directory find them.
    """
    mlflow.set_tracking_uri(tracking_uri)
    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)  # creates and migrates a new store
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            location = None
            if artifact_root:
                root = Path(artifact_root).expanduser().resolve() / experiment_name
                root.mkdir(parents=True, exist_ok=True)
                location = root.as_uri()
            experiment_id = client.create_experiment(experiment_name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
    reap_stale_runs(client, experiment_id)
    return experiment_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}`` strings, each cut to MLflow's comfortable size."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Only the finite numbers: MLflow rejects None and NaN is useless in comparisons."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def tracked_run(
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that always ends: FINISHED on success, FAILED with the error on any exception,
    KILLED when interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the sweep).
    ``run_id``: continue that run (a claim, :mod:`sweep.claims`) instead of starting a new one.

    The error is recorded as the ``error`` tag and an ``error.txt`` artifact, then re-raised.
    """
    run = mlflow.start_run(
        run_id=run_id, experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}), nested=nested
    )
    try:
        yield run
    except BaseException as exc:
        message = f"{exc.__class__.__name__}: {exc}"
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        try:
            mlflow.set_tag("error", message[:5000])
            mlflow.log_text(message, "error.txt")
        finally:
            mlflow.end_run(status=RunStatus.to_string(status))
        raise
    mlflow.end_run(status=RunStatus.to_string(RunStatus.FINISHED))


def open_existing_experiment(tracking_uri: str, experiment_name: str) -> tuple[MlflowClient, str]:
    """A client on ``tracking_uri`` and the id of ``experiment_name``, which must exist already
    (tools that read results never create stores or experiments)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise QuantInputError("tracking.tracking_uri", f"no MLflow store at {tracking_uri}")
    mlflow.set_tracking_uri(tracking_uri)
    with store_lock(tracking_uri):  # the store may be new and still being migrated by a sweep
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise QuantInputError(
            "tracking.experiment_name", f"no experiment {experiment_name!r} in {tracking_uri}; experiments: {names}"
        )
    reap_stale_runs(client, experiment.experiment_id)
    return client, experiment.experiment_id
