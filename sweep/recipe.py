"""The recipe a run was made with, read back from MLflow and rebuilt with today's code.

A job logs its resolved config (``config/resolved.yaml``), its content key (``config_hash``: the
config plus the model files' content identity), the sha256 of its weight files and its per-example BoolQ
result. :func:`load_recipe` reads all of it for the champion, a model version or a run;
:func:`check_inputs_unchanged` refuses a recipe whose model or data changed since;
:func:`rebuild` quantizes the same config again into a new directory.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from eval.boolq import BoolQResult, load_boolq_result
from eval.data import sha256_file
from quant.errors import QuantInputError
from quant.model_io import resolve_model_source
from quant.runner import quantize_to_directory
from sweep.hydra_config import quant_config_from_hydra
from sweep.job import BOOLQ_RESULT_ARTIFACT, WEIGHTS_ARTIFACT_DIR
from sweep.provenance import config_hash
from sweep.registry import weight_hashes
from sweep.run_records import RunRecord, resolve_run_id
from sweep.shared_work import path_identity
from sweep.store import WorkStore

RESOLVED_CONFIG_ARTIFACT = "config/resolved.yaml"  # what sweep.job logs with every run
# Tags a job sets with the sha256 of its calibration files (absent on runs logged before them).
CALIB_DIGEST_TAGS = {"calib.calib_file": "data.calib_sha256", "calib.anti_calib_file": "data.anti_calib_sha256"}


@dataclass
class Recipe:
    """A finished run's recipe and what it produced."""

    record: RunRecord
    label: str  # e.g. "llama-quant@champion (version 3, run 1a2b3c4d)"
    cfg: DictConfig  # the job's resolved config
    result: BoolQResult  # the run's per-example BoolQ result
    model_name: str | None = None
    model_version: str | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def config_hash(self) -> str:
        return self.record.config_hash


def run_result(client: MlflowClient, run_id: str) -> BoolQResult:
    """The BoolQ result a sweep job logged (``eval/boolq_result.json``)."""
    try:
        client.get_run(run_id)
    except MlflowException:
        raise QuantInputError("run", f"no run {run_id!r} in this MLflow store") from None
    with tempfile.TemporaryDirectory(prefix="regress-") as tmp:
        try:
            path = client.download_artifacts(run_id, BOOLQ_RESULT_ARTIFACT, tmp)
        except (MlflowException, OSError):
            raise QuantInputError("run", f"run {run_id} has no {BOOLQ_RESULT_ARTIFACT} artifact") from None
        return load_boolq_result(path)


def load_recipe(client: MlflowClient, experiment_id: str, ref: str, model_name: str, alias: str) -> Recipe:
    """``ref``: ``champion`` (the alias of ``model_name``), ``models:/<name>/<version>`` or
    ``models:/<name>@<alias>``, or a run id (or unique prefix)."""
    version = _model_version(client, ref, model_name, alias)
    run_id = version.run_id if version is not None else resolve_run_id(client, experiment_id, ref)
    try:
        record = RunRecord.from_run(client.get_run(run_id))
    except MlflowException:
        raise QuantInputError("recipe", f"no run {run_id!r} in this MLflow store") from None
    if record.status != "FINISHED":
        raise QuantInputError("recipe", f"run {run_id[:8]} is {record.status}, not FINISHED: it has no result to match")
    cfg = _resolved_config(client, run_id)
    if version is None:
        label = f"run {run_id[:8]} ({record.name})"
        return Recipe(record, label, cfg, run_result(client, run_id))
    label = f"{version.name} version {version.version} (run {run_id[:8]}, {record.name})"
    return Recipe(record, label, cfg, run_result(client, run_id), version.name, str(version.version))


def _model_version(client: MlflowClient, ref: str, model_name: str, alias: str) -> ModelVersion | None:
    """The registered version ``ref`` names, or None when ``ref`` is a run id."""
    if ref == "champion":
        name, key = model_name, f"@{alias}"
    elif ref.startswith("models:/"):
        name, sep, key = ref.removeprefix("models:/").rpartition("@")
        if sep:
            key = f"@{key}"
        else:
            name, _, key = ref.removeprefix("models:/").partition("/")
    else:
        return None
    try:
        if key.startswith("@"):
            return client.get_model_version_by_alias(name, key[1:])
        return client.get_model_version(name, key)
    except MlflowException:
        hint = "; promote one with python -m sweep.select" if ref == "champion" else ""
        raise QuantInputError(
            "recipe", f"no model version {name}{'' if key.startswith('@') else '/'}{key}{hint}"
        ) from None


def _resolved_config(client: MlflowClient, run_id: str) -> DictConfig:
    with tempfile.TemporaryDirectory(prefix="recipe-") as tmp:
        try:
            path = client.download_artifacts(run_id, RESOLVED_CONFIG_ARTIFACT, tmp)
        except (MlflowException, OSError):
            raise QuantInputError("recipe", f"run {run_id[:8]} has no {RESOLVED_CONFIG_ARTIFACT} artifact") from None
        return OmegaConf.load(path)


def check_inputs_unchanged(recipe: Recipe, store: WorkStore) -> None:
    """Refuse a recipe whose inputs are gone or changed: the model files (their content identity,
    memoised in ``store``, is part of ``config_hash``: a copy of the same bytes elsewhere passes),
    the BoolQ file (its sha256 is in the result) and the calibration files (sha256 tags, when the
    run has them). Raises :class:`QuantInputError`."""
    cfg = recipe.cfg
    try:
        resolve_model_source(str(cfg.model.path))
    except (QuantInputError, OSError):
        raise QuantInputError("recipe", f"the model of run {recipe.run_id[:8]} is gone: {cfg.model.path}") from None
    identity = path_identity(store, str(cfg.model.path))
    if config_hash(cfg, identity) != recipe.config_hash:
        raise QuantInputError(
            "recipe",
            f"the model files at {cfg.model.path} changed since run {recipe.run_id[:8]} "
            f"(content key {recipe.config_hash} no longer matches; model identity now {identity[:16]})",
        )
    boolq = recipe.result.config
    _check_file("BoolQ data", boolq.get("data_path"), boolq.get("data_sha256"), recipe)
    for key, tag in CALIB_DIGEST_TAGS.items():
        group, field = key.split(".")
        _check_file(field, cfg[group].get(field), recipe.record.tags.get(tag), recipe)


def _check_file(what: str, path: str | None, recorded_sha256: str | None, recipe: Recipe) -> None:
    if not path or not recorded_sha256:
        return
    if not Path(path).is_file():
        raise QuantInputError("recipe", f"the {what} of run {recipe.run_id[:8]} is gone: {path}")
    if sha256_file(path) != recorded_sha256:
        raise QuantInputError("recipe", f"the {what} {path} changed since run {recipe.run_id[:8]} (sha256 differs)")


def recipe_data_files(recipe: Recipe) -> dict[str, str | None]:
    """The recipe's calibration files, by the contexts ``sweep.logged_model`` logs them under."""
    return {"calib": recipe.cfg.calib.get("calib_file"), "anti_calib": recipe.cfg.calib.get("anti_calib_file")}


def input_digests(recipe: Recipe, store: WorkStore) -> dict[str, str]:
    """The content keys of what a rebuild reads: model identity, BoolQ and calibration files."""
    cfg = recipe.cfg
    digests = {
        "fingerprint.model": path_identity(store, str(cfg.model.path))[:16],
        "fingerprint.boolq_data": str(recipe.result.config.get("data_sha256")),
    }
    for key, tag in CALIB_DIGEST_TAGS.items():
        group, field = key.split(".")
        path = cfg[group].get(field)
        digests[tag.replace("data.", "fingerprint.")] = sha256_file(path) if path and Path(path).is_file() else "none"
    return digests


def rebuild(recipe: Recipe, directory: Path) -> Path:
    """Quantize the recipe's config again with today's code into ``directory`` (must not exist);
    nothing is read from any cache. Returns the saved output directory."""
    cfg = recipe.cfg.copy()
    with open_dict(cfg):
        cfg.save_directory = str(directory)
    allow_pickle = bool(cfg.model.get("allow_pickle", False))
    return Path(quantize_to_directory(quant_config_from_hydra(cfg), allow_pickle=allow_pickle)["save_directory"])


def recorded_weights(client: MlflowClient, recipe: Recipe, scratch: Path) -> Path | None:
    """A directory holding the run's saved weights, each file checked against its recorded
    sha256: the ``model/`` artifact (downloaded into ``scratch``), else the run's
    ``save_directory``; None when neither is there any more."""
    hashes = weight_hashes(recipe.record)
    logged = {Path(a.path).name for a in client.list_artifacts(recipe.run_id, WEIGHTS_ARTIFACT_DIR)}
    if hashes and set(hashes) <= logged:
        directory = Path(client.download_artifacts(recipe.run_id, WEIGHTS_ARTIFACT_DIR, str(scratch)))
    else:
        directory = Path(recipe.record.tags.get("save_directory", ""))
    if not hashes or not directory.is_dir():
        return None
    if all((directory / n).is_file() and sha256_file(directory / n) == h for n, h in hashes.items()):
        return directory
    return None
