"""MLflow 3's model-centric records of a job: its quantized output as a LoggedModel and the data it
read as logged inputs, so the UI links a run, its model, the champion version and the datasets.

- :func:`log_quantized_model`: a LoggedModel (``model_type`` ``quantized-llama``) holding the
  description JSON, the recipe, the layer report and the weights' sha256 (the weights too when the
  job logs them), the run's metrics linked to it, recorded as the run's output;
- :func:`log_data_inputs`: calibration and evaluation files as the run's dataset inputs (what
  ``mlflow.log_input`` records) whose digest is their content's sha256, plus ``data.*_sha256``
  tags that ``sweep.regress`` checks;
- :func:`log_model_input`: a LoggedModel as an input of a run (a regression check of the champion).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from eval.data import sha256_file
from quant.export import LAYER_REPORT_FILE, RECIPE_FILE

MODEL_TYPE = "quantized-llama"
MODEL_ID_TAG = "logged_model_id"  # run tag: the id of the job's LoggedModel
DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a dataset digest
# How a SQL store words a uniqueness violation: SQLite, PostgreSQL, MySQL.
_UNIQUE_VIOLATION = ("unique constraint", "duplicate key", "duplicate entry")
LOG_INPUTS_ATTEMPTS = 4


def data_input(path: str | Path, context: str) -> tuple[DatasetInput, str]:
    """A metadata-only dataset input for a local file, its digest the file's sha256; and that sha256."""
    path = Path(path).resolve()
    digest = sha256_file(path)
    dataset = MetaDataset(resolve_dataset_source(path.as_uri()), name=path.name, digest=digest[:DIGEST_CHARS])
    tags = [InputTag("sha256", digest), InputTag(MLFLOW_DATASET_CONTEXT, context)]
    return DatasetInput(dataset._to_mlflow_entity(), tags=tags), digest


def log_data_inputs(client: MlflowClient, run_id: str, files: Mapping[str, str | None]) -> dict[str, str]:
    """Log each ``{context: path}`` file (None or missing: skipped) as an input of the run; sets
    and returns the ``data.<context>_sha256`` tags."""
    inputs, tags = [], {}
    for context, path in files.items():
        if path and Path(path).is_file():
            dataset, digest = data_input(path, context)
            inputs.append(dataset)
            tags[f"data.{context}_sha256"] = digest
    if inputs:
        log_dataset_inputs(client, run_id, inputs)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return tags


def log_dataset_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """``client.log_inputs`` that survives jobs logging the same file at the same moment.

    MLflow's SQL store looks a dataset up and inserts it when missing, so two runs of one sweep
    (parallel launchers) can both insert it and one fails on the table's uniqueness constraint. The
    failed call changed nothing (its transaction is rolled back); calling again finds the winner's
    dataset and only links it to this run.
    """
    for attempt in range(1, LOG_INPUTS_ATTEMPTS + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if attempt == LOG_INPUTS_ATTEMPTS or not any(s in str(exc).lower() for s in _UNIQUE_VIOLATION):
                raise


# MLflow refuses these characters in a LoggedModel's name; run names may carry them (e.g. ``experiment:recipe``).
_NAME_FORBIDDEN = str.maketrans({c: "-" for c in "/:.%\"'"})


def logged_model_name(run_name: str) -> str:
    """``run_name`` with the characters MLflow refuses in a LoggedModel name replaced by ``-``."""
    return run_name.translate(_NAME_FORBIDDEN)


def log_quantized_model(
    client: MlflowClient, run_id: str, experiment_id: str, name: str, files: Iterable[Path], params: Mapping[str, str]
) -> str:
    """Create a READY LoggedModel of ``files`` (copied into its artifacts) and record it as the
    run's output; returns the model id (also the run tag ``logged_model_id``). Metrics logged with
    ``model_id=`` afterwards are linked to it."""
    model = client.create_logged_model(
        experiment_id, name=logged_model_name(name), source_run_id=run_id, params=dict(params), model_type=MODEL_TYPE
    )
    try:
        with tempfile.TemporaryDirectory(prefix="logged-model-") as tmp:
            for path in files:
                shutil.copy2(path, Path(tmp) / path.name)
            client.log_model_artifacts(model.model_id, tmp)
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    client.set_tag(run_id, MODEL_ID_TAG, model.model_id)
    return model.model_id


def logged_model_of(client: MlflowClient, run_tags: Mapping[str, str]) -> str | None:
    """The LoggedModel id a job run recorded, if it still exists."""
    model_id = run_tags.get(MODEL_ID_TAG)
    if not model_id:
        return None
    try:
        client.get_logged_model(model_id)
    except MlflowException:
        return None
    return model_id


def log_model_input(client: MlflowClient, run_id: str, model_id: str) -> None:
    """Record the LoggedModel ``model_id`` as an input of the run."""
    client.log_inputs(run_id, models=[LoggedModelInput(model_id)])


def model_files(directory: Path, with_weights: bool) -> list[Path]:
    """What a job's LoggedModel holds: the whole saved output, or without weights and tokenizer
    only the description JSON, the recipe and the layer report."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if with_weights:
        return files
    return [
        p for p in files if p.name.startswith("quant_model_description") or p.name in (RECIPE_FILE, LAYER_REPORT_FILE)
    ]


def record_job_model(
    run_id: str,
    experiment_id: str,
    name: str,
    directory: Path,
    with_weights: bool,
    data_files: Mapping[str, str | None],
    params: Mapping[str, str],
) -> str:
    """A job's data inputs and its LoggedModel (see the module docstring); returns the model id."""
    client = MlflowClient()
    log_data_inputs(client, run_id, data_files)
    return log_quantized_model(client, run_id, experiment_id, name, model_files(directory, with_weights), params)
