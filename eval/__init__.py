"""Evaluation for the quantization sweeps: BoolQ accuracy (through lm-eval), any other lm-eval task,
WikiText-2 perplexity, paired comparison with the float model.

Import submodules explicitly (``from eval.boolq import evaluate_boolq``): the package name
``eval`` shadows the builtin only if it is bound as a bare name. ``eval.baseline`` (float
evaluations) and ``eval.fingerprint`` (content digests) import transformers and are not re-exported.
The names below are loaded on first use, so that light modules (``eval.data``) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BoolQExample": "eval.boolq",
    "BoolQResult": "eval.boolq",
    "evaluate_boolq": "eval.boolq",
    "load_boolq_result": "eval.boolq",
    "write_per_example": "eval.boolq",
    "BoolQComparison": "eval.compare",
    "binary_kl": "eval.compare",
    "compare_boolq": "eval.compare",
    "mcnemar_exact_p": "eval.compare",
    "normalise_label": "eval.data",
    "read_boolq_jsonl": "eval.data",
    "select_indices": "eval.data",
    "TaskExample": "eval.generic",
    "TaskResult": "eval.generic",
    "evaluate_task": "eval.generic",
    "PerplexityResult": "eval.perplexity",
    "read_raw_text": "eval.perplexity",
    "wikitext_perplexity": "eval.perplexity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
