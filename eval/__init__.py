"""Evaluation for the quantization sweeps: BoolQ accuracy (through lm-eval), any other lm-eval task,
WikiText-2 perplexity, paired comparison with the float model.

Import submodules explicitly (``from eval.boolq import evaluate_boolq``): the package name
``eval`` shadows the builtin only if it is bound as a bare name. ``eval.baseline`` (cached float
evaluations) and ``eval.fingerprint`` (content digests) import transformers and are not re-exported.
"""

from eval.boolq import BoolQExample, BoolQResult, evaluate_boolq, load_boolq_result, write_per_example
from eval.cache import Cached, ResultCache
from eval.compare import BoolQComparison, binary_kl, compare_boolq, mcnemar_exact_p
from eval.data import normalise_label, read_boolq_jsonl, select_indices
from eval.generic import TaskExample, TaskResult, evaluate_task
from eval.perplexity import PerplexityResult, read_raw_text, wikitext_perplexity

__all__ = [
    "BoolQComparison",
    "BoolQExample",
    "BoolQResult",
    "Cached",
    "PerplexityResult",
    "ResultCache",
    "TaskExample",
    "TaskResult",
    "binary_kl",
    "compare_boolq",
    "evaluate_boolq",
    "evaluate_task",
    "load_boolq_result",
    "mcnemar_exact_p",
    "normalise_label",
    "read_boolq_jsonl",
    "read_raw_text",
    "select_indices",
    "wikitext_perplexity",
    "write_per_example",
]
