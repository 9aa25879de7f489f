"""The one lm-eval code path: an in-memory model in HFLM, tasks loaded, rows chosen, ``simple_evaluate``.

BoolQ (:mod:`eval.boolq`) and any other task (:mod:`eval.generic`) both run through
:func:`run_lm_eval`; only the reading of the results differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from eval.data import select_indices


@dataclass
class LmEvalRun:
    """What one ``simple_evaluate`` call produced, and the settings it ran with.

    ``indices[task]`` is the sorted list of evaluated row indices, or None for every row.
    """

    output: dict[str, Any]
    tasks: dict[str, Any]  # leaf task name -> lm-eval Task
    groups: list[str]
    n_total: dict[str, int]
    indices: dict[str, list[int] | None]
    settings: dict[str, Any]
    elapsed: float

    def samples(self, task_name: str) -> list[dict[str, Any]]:
        """lm-eval's logged samples of one leaf task, sorted by row index."""
        return sorted(self.output["samples"][task_name], key=lambda s: s["doc_id"])


def check_eval_arguments(limit: int | None, seed: int | None, batch_size: int) -> None:
    """Reject a bad subset or batch size before any work (ValueError naming the argument)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    select_indices(1, limit, seed)


def run_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    spec: str | dict[str, Any],
    task_manager: Any,
    *,
    limit: int | None,
    seed: int | None,
    batch_size: int,
    add_bos_token: bool,
    device: str,
    num_fewshot: int | None = None,
) -> LmEvalRun:
    """Evaluate ``model`` on one task, group or tag (a name or a task config dict) with lm-eval.

    Each leaf task evaluates the rows :func:`eval.data.select_indices` picks from its own
    evaluation split (``limit``/``seed``); lm-eval's ``doc_id`` is the row index. The model is
    moved to ``device`` in place if it is elsewhere. lm-eval reseeds Python's, NumPy's and
    torch's global RNGs. The returned samples are checked to cover exactly the chosen rows.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    check_eval_arguments(limit, seed, batch_size)
    start = time.perf_counter()
    _move_to(model, device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token)
    loaded = task_manager.load([spec])
    tasks: dict[str, Any] = loaded["tasks"]
    if not tasks:
        raise ValueError(f"lm-eval found no task for {spec if isinstance(spec, str) else spec.get('task')!r}")
    n_total = {name: len(task.eval_docs) for name, task in tasks.items()}
    indices = {name: select_indices(n, limit, seed) for name, n in n_total.items()}
    chosen = {name: rows for name, rows in indices.items() if rows is not None}
    roots = _top_level(loaded)
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=roots,
        task_manager=task_manager,
        batch_size=batch_size,
        num_fewshot=num_fewshot,
        log_samples=True,
        samples=chosen or None,
    )
    for name, rows in indices.items():
        got = [int(s["doc_id"]) for s in output["samples"][name]]
        if sorted(got) != (list(range(n_total[name])) if rows is None else rows):
            raise RuntimeError(f"lm-eval evaluated a different set of rows of {name!r} than was selected")
    settings = {
        "batch_size": batch_size,
        "add_bos_token": add_bos_token,
        "bos_prepended": _bos_prepended(lm),
        "device": str(device),
        "lm_eval_version": lm_eval.__version__,
    }
    return LmEvalRun(
        output=output,
        tasks=tasks,
        groups=sorted(loaded["groups"]),
        n_total=n_total,
        indices=indices,
        settings=settings,
        elapsed=time.perf_counter() - start,
    )


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The groups that no other group contains, plus the tasks outside every group."""
    children = {child for names in loaded["group_map"].values() for child in names}
    grouped = {id(task) for group in loaded["groups"].values() for task in group.get_all_tasks()}
    roots = [group for name, group in loaded["groups"].items() if name not in children]
    return roots + [task for task in loaded["tasks"].values() if id(task) not in grouped]


def _move_to(model: torch.nn.Module, device: str) -> None:
    target = torch.device(device)
    current = getattr(model, "device", None) or next(model.parameters()).device
    if current != target:
        model.to(target)


def _bos_prepended(lm: Any) -> bool:
    """Whether HFLM's encoding of a context starts with the tokenizer's BOS."""
    bos = lm.tokenizer.bos_token_id
    return bos is not None and lm.tok_encode("Answer")[:1] == [bos]
