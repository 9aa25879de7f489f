"""The float model's evaluations that a quantized model is compared with: BoolQ, and perplexity.

:func:`float_baseline` computes them; :func:`evaluation_identity` is everything apart from the
model that defines them (data content hashes, subset, batch size, BOS, device, lm-eval version,
task hash), known before evaluating. Caching is the caller's: the sweep keeps baselines in its
work store (``sweep.shared_work.baseline``) under the model's content identity and this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eval.boolq import BoolQResult, boolq_identity, evaluate_boolq
from eval.data import sha256_file
from eval.perplexity import PerplexityResult, wikitext_perplexity


@dataclass
class FloatBaseline:
    """The float model's evaluations."""

    boolq: BoolQResult
    perplexity: PerplexityResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "boolq": self.boolq.to_dict(),
            "perplexity": None if self.perplexity is None else self.perplexity.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FloatBaseline:
        ppl = data.get("perplexity")
        return cls(BoolQResult.from_dict(data["boolq"]), None if ppl is None else PerplexityResult.from_dict(ppl))


def evaluation_identity(boolq: dict[str, Any], perplexity: dict[str, Any] | None) -> dict[str, Any]:
    """What defines the evaluations besides the model: ``boolq`` as :func:`float_baseline` takes it,
    ``perplexity`` too (its data file by content)."""
    boolq_args = {k: v for k, v in boolq.items() if k != "data_path"}
    identity: dict[str, Any] = {"boolq": boolq_identity(boolq.get("data_path"), **boolq_args)}
    if perplexity is not None:
        identity["perplexity"] = {
            "data_sha256": sha256_file(perplexity["path"]),
            **{k: v for k, v in perplexity.items() if k != "path"},
        }
    return identity


def float_baseline(
    model: torch.nn.Module, tokenizer: Any, *, boolq: dict[str, Any], perplexity: dict[str, Any] | None = None
) -> FloatBaseline:
    """BoolQ (``boolq``: :func:`eval.boolq.evaluate_boolq` arguments) and optionally perplexity
    (``perplexity``: :func:`eval.perplexity.wikitext_perplexity` arguments, ``path`` included)."""
    boolq_result = evaluate_boolq(model, tokenizer, **boolq)
    ppl = None if perplexity is None else wikitext_perplexity(model, tokenizer, **perplexity)
    return FloatBaseline(boolq_result, ppl)
