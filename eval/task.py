"""lm-eval task configs for BoolQ: lm-eval's own ``boolq`` task, optionally re-pointed at a local JSONL."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from eval.data import normalise_label, sha256_json

BUILTIN_TASK_NAME = "boolq"
LOCAL_TASK_NAME = "boolq_local"

# The fields that define lm-eval's BoolQ (lm_eval/tasks/super_glue/boolq/default.yaml).
# They are read from lm-eval's own YAML; this copy only guards against silent drift.
EXPECTED_BOOLQ_FIELDS: dict[str, Any] = {
    "output_type": "multiple_choice",
    "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
    "doc_to_target": "label",
    "doc_to_choice": ["no", "yes"],
    "metric_list": [{"metric": "acc"}],
}


def builtin_boolq_yaml() -> Path:
    """Path of the ``boolq`` task YAML shipped inside the installed lm-eval."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / "super_glue" / "boolq" / "default.yaml"
    if path.is_file():
        return path
    # Layout changed: ask lm-eval's index (slow: it scans every shipped task YAML).
    from lm_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(BUILTIN_TASK_NAME)
    if entry is None or entry.yaml_path is None:
        raise RuntimeError("the installed lm-eval has no 'boolq' task YAML")
    return Path(entry.yaml_path)


def builtin_boolq_config() -> dict[str, Any]:
    """lm-eval's own ``boolq`` task config as a dict, checked against the expected prompt/choices."""
    cfg = yaml.safe_load(builtin_boolq_yaml().read_text(encoding="utf-8"))
    drift = {k: cfg.get(k) for k, v in EXPECTED_BOOLQ_FIELDS.items() if cfg.get(k) != v}
    if drift or cfg.get("task") != BUILTIN_TASK_NAME:
        raise RuntimeError(f"lm-eval's boolq task differs from the expected definition: {drift}")
    return cfg


def labels_to_index(dataset: Any) -> Any:
    """``process_docs`` hook: labels "true"/"false" (or bool/int) -> 1/0, as lm-eval's target index."""
    return dataset.map(lambda doc: {"label": normalise_label(doc["label"])})


def local_boolq_config(data_path: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """lm-eval's ``boolq`` config reading a local JSONL through the ``json`` dataset builder.

    Only the data source changes (``dataset_path: json`` + ``data_files``, a ``process_docs``
    label mapping, no training split); prompt, choices, target and metric are lm-eval's.
    """
    cfg = builtin_boolq_config()
    cfg.pop("tag", None)
    dataset_kwargs: dict[str, Any] = {"data_files": {"validation": str(Path(data_path).resolve())}}
    if cache_dir is not None:
        dataset_kwargs.update(cache_dir=str(cache_dir), keep_in_memory=True)
    cfg.update(
        task=LOCAL_TASK_NAME,
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs=dataset_kwargs,
        training_split=None,
        validation_split="validation",
        process_docs=labels_to_index,
    )
    return cfg


def task_config_hash(cfg: dict[str, Any]) -> str:
    """SHA-256 of a task config, independent of where the local data file lives.

    ``dataset_kwargs`` (file path, cache dir) are left out (the data file has its own hash)
    and callables are named by module and qualified name.
    """
    ident = copy.copy(cfg)
    ident.pop("dataset_kwargs", None)
    for key, value in ident.items():
        if callable(value):
            ident[key] = f"{value.__module__}.{value.__qualname__}"
    return sha256_json(ident)
