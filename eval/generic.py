"""Any lm-eval task, group or tag by name, through the same code path as BoolQ (:func:`eval.harness.run_lm_eval`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.harness import check_eval_arguments, run_lm_eval
from eval.task import task_config_hash


@dataclass(frozen=True)
class TaskExample:
    """One evaluated row: its index in the task's evaluation split, lm-eval's target, its
    filtered responses (e.g. ``[[loglik, is_greedy], ...]`` per choice) and per-row metric values."""

    index: int
    target: Any
    responses: Any
    metrics: dict[str, Any]


@dataclass
class TaskResult:
    """lm-eval's aggregate metrics per task and group, and each leaf task's rows.

    ``metrics[name]`` holds lm-eval's keys as it reports them, e.g. ``{"acc,none": 0.62,
    "acc_stderr,none": 0.03}``.
    """

    name: str
    metrics: dict[str, dict[str, float]]
    per_example: dict[str, list[TaskExample]]
    config: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat numeric metrics ``{prefix}{task}.{metric}.{filter}`` for experiment tracking."""
        flat = {}
        for task, values in self.metrics.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    flat[f"{prefix}{task}.{key.replace(',', '.')}"] = float(value)
        return flat

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN metrics become None)."""
        out = asdict(self)
        out["metrics"] = {
            task: {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}
            for task, values in self.metrics.items()
        }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            metrics={
                task: {k: math.nan if v is None else v for k, v in values.items()}
                for task, values in data["metrics"].items()
            },
            per_example={task: [TaskExample(**row) for row in rows] for task, rows in data["per_example"].items()},
            config=dict(data.get("config", {})),
            elapsed=float(data.get("elapsed", 0.0)),
        )


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str,
    *,
    include_path: str | Path | None = None,
    include_defaults: bool = True,
    limit: int | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    add_bos_token: bool = True,
    device: str = "cpu",
    num_fewshot: int | None = None,
) -> TaskResult:
    """Evaluate an in-memory HF causal LM on any lm-eval task, group or tag named ``task``.

    ``include_path``: a folder of local task YAMLs to add to lm-eval's registry;
    ``include_defaults=False`` skips indexing lm-eval's shipped tasks (faster, local tasks only).
    Tasks from the hub need network. ``limit``/``seed`` choose rows per leaf task as in
    :func:`eval.boolq.evaluate_boolq`; ``num_fewshot=None`` keeps each task's own setting.
    """
    from lm_eval.tasks import TaskManager

    check_eval_arguments(limit, seed, batch_size)
    task_manager = TaskManager(
        include_path=None if include_path is None else str(include_path), include_defaults=include_defaults
    )
    if task not in task_manager.all_tasks:
        raise ValueError(f"lm-eval has no task, group or tag named {task!r} (include_path={include_path})")
    run = run_lm_eval(
        model,
        tokenizer,
        task,
        task_manager,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        add_bos_token=add_bos_token,
        device=device,
        num_fewshot=num_fewshot,
    )
    per_example = {}
    for name, task_obj in run.tasks.items():
        metric_names = list(task_obj.aggregation())
        per_example[name] = [
            TaskExample(
                index=int(sample["doc_id"]),
                target=_plain(sample["target"]),
                responses=_plain(sample["filtered_resps"]),
                metrics=_plain({m: sample[m] for m in metric_names if m in sample}),
            )
            for sample in run.samples(name)
        ]
    results = run.output["results"]
    metrics = {name: {k: v for k, v in values.items() if k != "alias"} for name, values in results.items()}
    config = {
        "task": task,
        "include_path": None if include_path is None else str(Path(include_path).resolve()),
        "limit": limit,
        "seed": seed,
        "num_fewshot": num_fewshot,
        **run.settings,
        "groups": run.groups,
        "n_total": run.n_total,
        "n_evaluated": {name: len(rows) for name, rows in per_example.items()},
        "task_config_hash": {name: _loaded_task_hash(t) for name, t in run.tasks.items()},
    }
    return TaskResult(name=task, metrics=metrics, per_example=per_example, config=config, elapsed=run.elapsed)


def _plain(value: Any) -> Any:
    """JSON-plain copy (tuples become lists) so a result equals itself after a JSON round trip."""
    return json.loads(json.dumps(value, default=str))


def _loaded_task_hash(task: Any) -> str:
    """Hash of a loaded task's full config (lm-eval's dump), dataset location left out."""
    return task_config_hash(task.dump_config())
