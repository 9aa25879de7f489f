"""BoolQ zero-shot accuracy through lm-eval (HFLM + simple_evaluate), with per-example results."""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from eval.data import read_boolq_jsonl, sha256_file
from eval.harness import check_eval_arguments, run_lm_eval
from eval.task import (
    BUILTIN_TASK_NAME,
    LOCAL_TASK_NAME,
    builtin_boolq_config,
    local_boolq_config,
    task_config_hash,
)

CHOICES = ("no", "yes")  # lm-eval's doc_to_choice order: index 0 = "no", 1 = "yes"


@dataclass(frozen=True)
class BoolQExample:
    """One evaluated BoolQ row: its index in the data file, lm-eval's log-likelihoods and verdict."""

    index: int
    gold: int
    ll_yes: float
    ll_no: float
    pred: int
    correct: bool


@dataclass
class BoolQResult:
    """Accuracy (lm-eval's ``acc``), its standard error, and what produced it."""

    accuracy: float
    stderr: float
    n: int
    per_example: list[BoolQExample]
    config: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    def to_metrics(self, prefix: str = "boolq_") -> dict[str, float]:
        """Flat metrics for experiment tracking (e.g. ``mlflow.log_metrics``)."""
        return {
            f"{prefix}acc": self.accuracy,
            f"{prefix}acc_stderr": self.stderr,
            f"{prefix}n": float(self.n),
            f"{prefix}eval_seconds": self.elapsed,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN stderr becomes None)."""
        out = asdict(self)
        if math.isnan(self.stderr):
            out["stderr"] = None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoolQResult:
        """Inverse of :meth:`to_dict`."""
        stderr = data.get("stderr")
        return cls(
            accuracy=float(data["accuracy"]),
            stderr=math.nan if stderr is None else float(stderr),
            n=int(data["n"]),
            per_example=[BoolQExample(**row) for row in data["per_example"]],
            config=dict(data.get("config", {})),
            elapsed=float(data.get("elapsed", 0.0)),
        )


def boolq_identity(
    data_path: str | Path | None,
    *,
    limit: int | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    add_bos_token: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Everything apart from the model that defines a BoolQ result, known before evaluating:
    task, data content hash, subset, batch size, BOS, device, lm-eval version, task hash."""
    import lm_eval

    if data_path is None:
        task_name, task_cfg = BUILTIN_TASK_NAME, builtin_boolq_config()
        data_info = {"data_sha256": None, "dataset": _hub_name(task_cfg)}
    else:
        path = Path(data_path).resolve()
        task_name, task_cfg = LOCAL_TASK_NAME, local_boolq_config(path)
        data_info = {"data_sha256": sha256_file(path), "dataset": "json"}
    return {
        "task": task_name,
        **data_info,
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
        "add_bos_token": add_bos_token,
        "device": str(device),
        "num_fewshot": 0,
        "lm_eval_version": lm_eval.__version__,
        "task_config_hash": task_config_hash(task_cfg),
    }


def evaluate_boolq(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    data_path: str | Path | None,
    limit: int | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    add_bos_token: bool = True,
    device: str = "cpu",
) -> BoolQResult:
    """Zero-shot BoolQ accuracy of an in-memory HF causal LM, computed by lm-eval.

    The task is lm-eval's own ``boolq`` (prompt, " no"/" yes" choices, ``acc``); with
    ``data_path`` it reads that local JSONL (labels "true"/"false", bool or 0/1) offline,
    with ``data_path=None`` it uses lm-eval's hub dataset (needs network).

    ``limit=None`` evaluates every row; otherwise ``seed=None`` takes the first ``limit``
    rows and a seed takes a deterministic random sample of ``limit`` rows.

    ``add_bos_token`` is handed to lm-eval's HFLM. With an in-memory tokenizer it only sets
    ``add_special_tokens`` when encoding, so BOS is prepended only if the tokenizer's own
    template adds one (LLaMA's does); ``config["bos_prepended"]`` records what happened.

    The model is moved to ``device`` (in place) if it is elsewhere; HFLM puts it in eval mode.
    lm-eval's ``simple_evaluate`` reseeds Python's, NumPy's and torch's global RNGs.
    """
    from lm_eval.tasks import TaskManager

    check_eval_arguments(limit, seed, batch_size)
    identity = boolq_identity(
        data_path, limit=limit, seed=seed, batch_size=batch_size, add_bos_token=add_bos_token, device=device
    )
    task_name = identity["task"]
    rows = None if data_path is None else read_boolq_jsonl(data_path)
    with tempfile.TemporaryDirectory(prefix="boolq-datasets-") as cache_dir:
        if data_path is None:
            spec: Any = BUILTIN_TASK_NAME
            task_manager = TaskManager()
        else:
            spec = local_boolq_config(data_path, cache_dir)
            task_manager = TaskManager(include_defaults=False)
        run = run_lm_eval(
            model,
            tokenizer,
            spec,
            task_manager,
            limit=limit,
            seed=seed,
            batch_size=batch_size,
            add_bos_token=add_bos_token,
            device=device,
        )

    n_total = run.n_total[task_name]
    if rows is not None and n_total != len(rows):
        raise RuntimeError(f"lm-eval loaded {n_total} rows from {data_path}, expected {len(rows)}")
    per_example = _parse_samples(run.samples(task_name), rows)
    metrics = run.output["results"][task_name]
    accuracy = float(metrics["acc,none"])
    if not math.isclose(accuracy, sum(ex.correct for ex in per_example) / len(per_example)):
        raise RuntimeError("lm-eval's aggregate accuracy disagrees with its per-example results")
    stderr = metrics.get("acc_stderr,none")
    indices = run.indices[task_name]
    config = {
        **identity,
        **run.settings,
        "data_path": None if data_path is None else str(Path(data_path).resolve()),
        "n_total": n_total,
        "selection": "all" if indices is None else ("first" if seed is None else "seeded"),
    }
    return BoolQResult(
        accuracy=accuracy,
        stderr=float(stderr) if isinstance(stderr, (int, float)) else math.nan,
        n=len(per_example),
        per_example=per_example,
        config=config,
        elapsed=run.elapsed,
    )


def _hub_name(cfg: dict[str, Any]) -> str:
    return "/".join(str(part) for part in (cfg.get("dataset_path"), cfg.get("dataset_name")) if part)


def _parse_samples(samples: list[dict[str, Any]], rows: list[dict[str, Any]] | None) -> list[BoolQExample]:
    """Turn lm-eval's logged samples (``log_samples=True``) into :class:`BoolQExample` rows."""
    examples = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        index = int(sample["doc_id"])
        continuations = [args[1] for args in sample["arguments"]]
        if continuations != [f" {choice}" for choice in CHOICES]:
            raise RuntimeError(f"unexpected BoolQ continuations {continuations!r}")
        (ll_no, _), (ll_yes, _) = sample["filtered_resps"]
        doc = sample["doc"]
        if rows is not None:
            row = rows[index]
            if any(doc[key] != row[key] for key in ("question", "passage", "label")):
                raise RuntimeError(f"lm-eval's doc {index} does not match row {index} of the data file")
        gold = int(sample["target"])
        pred = int(ll_yes > ll_no)  # ties go to index 0, like lm-eval's argmax
        correct = bool(sample["acc"])
        if correct != (pred == gold):
            raise RuntimeError(f"doc {index}: lm-eval's acc disagrees with its log-likelihoods")
        examples.append(BoolQExample(index, gold, float(ll_yes), float(ll_no), pred, correct))
    return examples


def write_per_example(result: BoolQResult, path: str | Path) -> Path:
    """Write a result to ``.json`` (everything: metrics, config, rows) or ``.csv`` (rows only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        names = [f.name for f in fields(BoolQExample)]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            writer.writerows(asdict(ex) for ex in result.per_example)
    else:
        raise ValueError(f"per-example output must end in .json or .csv, got {path.name!r}")
    return path


def load_boolq_result(path: str | Path) -> BoolQResult:
    """Read a result written by :func:`write_per_example` as JSON."""
    return BoolQResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
