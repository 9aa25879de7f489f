"""MLflow tracking: a SQLite store by default, one run per job, flattened params, artifacts."""

from __future__ import annotations

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

MAX_PARAM_CHARS = 500


def setup_experiment(tracking_uri: str, experiment_name: str, artifact_root: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` and return the id of ``experiment_name`` (created if new).

    A new experiment stores its artifacts under ``artifact_root/<name>`` (an absolute path), so
    runs started from any working directory find them.
    """
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if artifact_root:
        root = Path(artifact_root).expanduser().resolve() / experiment_name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return mlflow.create_experiment(experiment_name, artifact_location=location)


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
    experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None, nested: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that always ends: FINISHED on success, FAILED with the error on any exception,
    KILLED when interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the sweep).

    The error is recorded as the ``error`` tag and an ``error.txt`` artifact, then re-raised.
    """
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}), nested=nested)
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
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).is_file():
        raise QuantInputError("tracking.tracking_uri", f"no MLflow store at {tracking_uri}")
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise QuantInputError(
            "tracking.experiment_name", f"no experiment {experiment_name!r} in {tracking_uri}; experiments: {names}"
        )
    return client, experiment.experiment_id
