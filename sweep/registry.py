"""Promoting a run: its saved weights into MLflow (verified by sha256), a model version, an alias.

After promotion the weights can be fetched from MLflow alone:
``mlflow.artifacts.download_artifacts("models:/<model_name>@champion")`` gives the saved output
directory (weights, description JSON, config, tokenizer), loadable with ``quant.reload``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from quant.errors import QuantInputError
from sweep.job import WEIGHTS_ARTIFACT_DIR
from sweep.logged_model import logged_model_of
from sweep.run_records import RunRecord
from sweep.tracking import sha256_file

log = logging.getLogger(__name__)
SHA_TAG_PREFIX = "sha256."


def weight_hashes(record: RunRecord) -> dict[str, str]:
    """``{weight file name: sha256}`` as the job recorded them."""
    return {k.removeprefix(SHA_TAG_PREFIX): v for k, v in record.tags.items() if k.startswith(SHA_TAG_PREFIX)}


def ensure_weights_logged(client: MlflowClient, record: RunRecord) -> str:
    """Make sure the run's saved output is an artifact under ``model/``; returns that artifact path.

    Runs of a multirun usually log only the weights' sha256; their files are then taken from the
    run's ``save_directory`` after checking every weight file against its recorded hash.
    """
    logged = {Path(a.path).name for a in client.list_artifacts(record.run_id, WEIGHTS_ARTIFACT_DIR)}
    hashes = weight_hashes(record)
    if not hashes:
        raise QuantInputError("run", f"run {record.run_id} records no weight files (sha256.* tags)")
    if set(hashes) <= logged:
        return WEIGHTS_ARTIFACT_DIR
    directory = Path(record.tags.get("save_directory", ""))
    if not directory.is_dir():
        raise QuantInputError(
            "run",
            f"weights of run {record.run_id} are not in MLflow and its save_directory {directory} is gone; "
            "re-run the recipe with tracking.log_weights=true",
        )
    for name, digest in hashes.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            raise QuantInputError(
                "run", f"{path} is missing or differs from what run {record.run_id} saved (sha256 mismatch)"
            )
    client.log_artifacts(record.run_id, str(directory), WEIGHTS_ARTIFACT_DIR)
    client.set_tag(record.run_id, "weights_logged", "true")
    log.info("logged the weights of run %s from %s", record.run_id, directory)
    return WEIGHTS_ARTIFACT_DIR


def version_source(client: MlflowClient, record: RunRecord, artifact_path: str) -> str:
    """``models:/<id>`` of the run's LoggedModel once it holds every weight file (copied there from
    the verified ``save_directory`` if needed); else the run's ``artifact_path``."""
    model_id = logged_model_of(client, record.tags)
    if model_id is None:
        return f"runs:/{record.run_id}/{artifact_path}"
    hashes = weight_hashes(record)
    held = {Path(a.path).name for a in client.list_logged_model_artifacts(model_id)}
    directory = Path(record.tags.get("save_directory", ""))
    verified = directory.is_dir() and all(
        (directory / n).is_file() and sha256_file(directory / n) == h for n, h in hashes.items()
    )
    if not set(hashes) <= held and verified:
        client.log_model_artifacts(model_id, str(directory))
        held |= set(hashes)
    return f"models:/{model_id}" if set(hashes) <= held else f"runs:/{record.run_id}/{artifact_path}"


def promote(client: MlflowClient, record: RunRecord, model_name: str, alias: str) -> tuple[ModelVersion, bool]:
    """Register the run's weights as a version of ``model_name`` (once per run) and point ``alias`` at it.

    Returns the version and whether the alias moved.
    """
    artifact_path = ensure_weights_logged(client, record)
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Quantized models promoted by sweep.select")
    version = next(
        (v for v in client.search_model_versions(f"name = '{model_name}'") if v.run_id == record.run_id), None
    )
    if version is None:
        version = client.create_model_version(
            model_name,
            source=version_source(client, record, artifact_path),
            run_id=record.run_id,
            tags={
                "config_hash": record.config_hash,
                "run_name": record.name,
                "boolq_acc": str(record.metric("boolq_acc")),
                "quant_type": record.tags.get("quant_type", ""),
            },
            description=f"{record.name} (run {record.run_id})",
        )
    try:
        previous = client.get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        previous = None
    client.set_registered_model_alias(model_name, alias, version.version)
    return version, str(previous) != str(version.version)
