"""Float-model evaluations through the disk cache: computed once per (model, tokenizer, eval config).

The key is content only: the model's tensors and config (:func:`eval.fingerprint.model_sha256`),
the tokenizer (:func:`eval.fingerprint.tokenizer_sha256`), the evaluation's own identity (data
hash, subset, batch size, BOS, device, lm-eval version, task hash) and the torch/transformers
versions. A copied or re-timestamped model file still hits; changed weights never do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eval.boolq import BoolQResult, boolq_identity, evaluate_boolq
from eval.cache import Cached, ResultCache
from eval.data import sha256_file
from eval.fingerprint import model_sha256, tokenizer_sha256
from eval.perplexity import PerplexityResult, wikitext_perplexity

BOOLQ_KIND = "boolq"
PERPLEXITY_KIND = "perplexity"


def model_fields(model: torch.nn.Module, tokenizer: Any) -> dict[str, str]:
    """The model part of a cache key (hashes every tensor: about a second per 500 MB)."""
    import transformers

    return {
        "model_sha256": model_sha256(model),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def cached_boolq(
    cache: ResultCache,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    data_path: str | Path | None,
    limit: int | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    add_bos_token: bool = True,
    device: str = "cpu",
    model_key: dict[str, str] | None = None,
) -> Cached[BoolQResult]:
    """:func:`eval.boolq.evaluate_boolq`, read from ``cache`` when the same evaluation was stored.

    ``model_key``: precomputed :func:`model_fields` (saves re-hashing the model).
    """
    eval_args = {
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
        "add_bos_token": add_bos_token,
        "device": device,
    }
    fields = {**(model_key or model_fields(model, tokenizer)), "eval": boolq_identity(data_path, **eval_args)}
    return cache.get_or_compute(
        BOOLQ_KIND,
        fields,
        lambda: evaluate_boolq(model, tokenizer, data_path=data_path, **eval_args),
        BoolQResult.to_dict,
        BoolQResult.from_dict,
    )


def cached_perplexity(
    cache: ResultCache,
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | Path,
    *,
    max_tokens: int = 4096,
    block_size: int = 512,
    stride: int | None = None,
    add_bos: bool | None = None,
    model_key: dict[str, str] | None = None,
) -> Cached[PerplexityResult]:
    """:func:`eval.perplexity.wikitext_perplexity`, read from ``cache`` when stored before."""
    args = {"max_tokens": max_tokens, "block_size": block_size, "stride": stride, "add_bos": add_bos}
    device = str(next(model.parameters()).device)
    fields = {
        **(model_key or model_fields(model, tokenizer)),
        "eval": {"data_sha256": sha256_file(path), "device": device, **args},
    }
    return cache.get_or_compute(
        PERPLEXITY_KIND,
        fields,
        lambda: wikitext_perplexity(model, tokenizer, path, **args),
        PerplexityResult.to_dict,
        PerplexityResult.from_dict,
    )


@dataclass
class FloatBaseline:
    """The float model's evaluations; ``source`` is ``disk`` when every one came from the cache."""

    boolq: BoolQResult
    perplexity: PerplexityResult | None
    source: str  # "computed" | "disk" (callers may add "memory" for their own in-process reuse)
    cache_key: str
    seconds: float


def float_baseline(
    cache: ResultCache,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    boolq: dict[str, Any],
    perplexity: dict[str, Any] | None = None,
) -> FloatBaseline:
    """BoolQ (``boolq``: :func:`cached_boolq` arguments) and optionally perplexity (``perplexity``:
    :func:`cached_perplexity` arguments, ``path`` included) of the float model, through ``cache``.
    The model is hashed once for both keys."""
    start = time.perf_counter()
    model_key = model_fields(model, tokenizer)
    boolq_out = cached_boolq(cache, model, tokenizer, model_key=model_key, **boolq)
    ppl_out = None
    if perplexity is not None:
        ppl_out = cached_perplexity(cache, model, tokenizer, model_key=model_key, **perplexity)
    hit = boolq_out.hit and (ppl_out is None or ppl_out.hit)
    return FloatBaseline(
        boolq=boolq_out.value,
        perplexity=None if ppl_out is None else ppl_out.value,
        source="disk" if hit else "computed",
        cache_key=boolq_out.key,
        seconds=time.perf_counter() - start,
    )
