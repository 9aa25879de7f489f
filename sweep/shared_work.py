"""Work that the jobs of one sweep process share: the loaded float model and its baseline.

Hydra's basic launcher runs every job of a multirun in this process, so an in-process cache
pays the model load and the float model's evaluation once per sweep.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from quant.model_io import LoadedModel, load_model

log = logging.getLogger(__name__)
T = TypeVar("T")

_models: dict[tuple, LoadedModel] = {}
_results: dict[tuple, Any] = {}
cache_hits: dict[str, int] = {"model": 0, "baseline": 0}


def float_model(
    model_path: str,
    *,
    device_type: str = "cpu",
    trust_remote_code: bool = False,
    tokenizer_args: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """The loaded float model for these arguments, loaded at most once per process.

    Callers must not modify the returned model: quantize a :func:`private_copy` of it.
    """
    key = (model_path, device_type, trust_remote_code, repr(sorted((tokenizer_args or {}).items())), allow_pickle)
    if key in _models:
        cache_hits["model"] += 1
        log.info("float model cache hit: %s", model_path)
        return _models[key]
    loaded = load_model(
        model_path,
        device_type=device_type,
        trust_remote_code=trust_remote_code,
        tokenizer_args=tokenizer_args,
        allow_pickle=allow_pickle,
    )
    _models[key] = loaded
    return loaded


def private_copy(loaded: LoadedModel) -> LoadedModel:
    """A copy whose model a job may transform in place (the tokenizer is shared, read-only)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


def memoized(kind: str, key: tuple, compute: Callable[[], T]) -> T:
    """``compute()`` once per ``(kind, key)`` in this process; hits are counted in ``cache_hits``."""
    full_key = (kind, *key)
    if full_key in _results:
        cache_hits[kind] = cache_hits.get(kind, 0) + 1
        log.info("%s cache hit", kind)
        return _results[full_key]
    value = compute()
    _results[full_key] = value
    return value
