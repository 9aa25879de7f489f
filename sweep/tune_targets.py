"""What ``sweep.tune`` races candidates on: per-unit scores of a candidate model against the float
model, and the gate's verdict on the first units scored.

- :class:`TokenTarget` (``kl``, ``nll``): units are the workbench's WikiText-2 token blocks; a
  block's score is its mean KL(float ‖ candidate) of next-token distributions, or its mean NLL
  (paired with float's); the gate is the bootstrap on per-block scores.
- :class:`BoolQTarget` (``boolq_acc``): units are the first rows of a BoolQ file, evaluated
  through lm-eval; a row's score is 1 when the candidate answers it right; the gate is the score
  interval on the paired counts (rows only float gets right, rows only the candidate gets right),
  as ``sweep.select`` gates BoolQ runs.

Both score any range of units on demand, so a rung only evaluates the units it adds.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from eval.boolq import evaluate_boolq
from eval.data import read_boolq_jsonl
from eval.noninferiority import Verdict, paired_counts, paired_scores
from eval.token_scores import FloatReference, score_blocks
from quant.errors import QuantInputError, invalid_value

TOKEN_METRICS = ("kl", "nll")
BOOLQ_METRIC = "boolq_acc"
METRICS = (*TOKEN_METRICS, BOOLQ_METRIC)


class TuneTarget(Protocol):
    """Per-unit scores of a candidate, and the gate on a prefix of them."""

    metric: str
    unit_name: str  # "blocks", "examples": how the cost table counts units
    n_units: int  # how many units there are (the last rung)

    def scores(self, model: nn.Module, indices: range) -> np.ndarray: ...

    def verdict(self, scores: np.ndarray, margin: float, alpha: float) -> Verdict: ...


@dataclass
class TokenTarget:
    """KL or NLL per token block, against the workbench's float reference."""

    metric: str
    reference: FloatReference
    unit_name: str = "blocks"

    @property
    def n_units(self) -> int:
        return self.reference.blocks.n_blocks

    def scores(self, model: nn.Module, indices: range) -> np.ndarray:
        result = score_blocks(model, self.reference, indices)
        return result.kl if self.metric == "kl" else result.nll

    def verdict(self, scores: np.ndarray, margin: float, alpha: float) -> Verdict:
        """The mean KL against 0 (float against itself), or the NLL paired with float's."""
        units = scores.size
        reference = np.zeros(units) if self.metric == "kl" else self.reference.nll[:units]
        return paired_scores(reference, scores, margin, alpha, higher_is_better=False)


@dataclass
class BoolQTarget:
    """BoolQ correctness per row of ``data_path`` (its first ``n_units`` rows), paired with float's.

    The float model's rows are evaluated on demand too, up to the furthest rung asked about.
    """

    float_model: nn.Module
    tokenizer: Any
    data_path: Path
    n_units: int
    batch_size: int = 8
    add_bos_token: bool = True
    metric: str = BOOLQ_METRIC
    unit_name: str = "examples"
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _float_correct: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __post_init__(self) -> None:
        try:
            self._rows = read_boolq_jsonl(self.data_path)[: self.n_units]
        except (OSError, ValueError) as exc:
            raise QuantInputError("boolq.data_path", f"cannot read BoolQ rows from {self.data_path}: {exc}") from None
        if len(self._rows) < self.n_units:
            raise invalid_value("rungs", self.n_units, f"at most the {len(self._rows)} rows of {self.data_path}")

    def scores(self, model: nn.Module, indices: range) -> np.ndarray:
        """1.0 for each row of ``indices`` the model answers right, else 0.0 (lm-eval's ``acc``)."""
        return self._correct(model, indices)

    def verdict(self, scores: np.ndarray, margin: float, alpha: float) -> Verdict:
        units = scores.size
        self._evaluate_float(units)
        reference, candidate = self._float_correct[:units] > 0.5, scores > 0.5
        return paired_counts(
            int(np.sum(reference & ~candidate)), int(np.sum(~reference & candidate)), units, margin, alpha
        )

    def _evaluate_float(self, units: int) -> None:
        have = self._float_correct.size
        if have < units:
            more = self._correct(self.float_model, range(have, units))
            self._float_correct = np.concatenate([self._float_correct, more])

    def _correct(self, model: nn.Module, indices: Sequence[int]) -> np.ndarray:
        indices = list(indices)
        with tempfile.TemporaryDirectory(prefix="tune-boolq-") as tmp:
            subset = Path(tmp) / "rows.jsonl"
            lines = (json.dumps(self._rows[i]) for i in indices)
            subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
            device = str(next(model.parameters()).device)
            result = evaluate_boolq(
                model,
                self.tokenizer,
                data_path=subset,
                batch_size=self.batch_size,
                add_bos_token=self.add_bos_token,
                device=device,
            )
        return np.array([float(example.correct) for example in result.per_example])  # in row order
