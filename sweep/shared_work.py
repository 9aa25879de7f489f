"""Work that the jobs of a sweep share: the loaded float model, its observed input statistics, the
smoothed model of each anti-outlier setting, and the float model's BoolQ baseline.

Each is computed at most once per process (Hydra's basic launcher runs every job of a multirun
in one process) and, for the model and the statistics, once per machine: a content-keyed
:class:`~sweep.disk_cache.DiskCache` lets later processes and parallel workers reuse them. Every
lookup is recorded as a :class:`CacheEvent` so each job can log what it reused.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from quant.anti_outlier import needs_statistics
from quant.calib import Batch
from quant.config import QuantConfig
from quant.model_io import LoadedModel, load_model, resolve_model_source
from quant.observe import InputStats
from quant.pipeline import (
    Smoothing,
    anti_outlier_batches,
    anti_outlier_choice,
    observe_float_model,
    observed_linears,
    smooth,
    smoothing_settings,
)
from sweep.disk_cache import DiskCache, content_key
from sweep.float_model_cache import float_model_key_parts, read_float_model, write_float_model
from sweep.observation_cache import batches_digest, observation_key_parts, read_stats, write_stats

log = logging.getLogger(__name__)
T = TypeVar("T")

# Which model sources the disk cache keeps: "converted" = those whose loading converts the
# weights (GGUF), "all", or "none".
FLOAT_MODEL_DISK_POLICIES = ("converted", "all", "none")


@dataclass(frozen=True)
class CacheEvent:
    """One lookup of shared work: where the value came from and how long getting it took."""

    kind: str  # "float_model", "observation", "baseline", ...
    outcome: str  # "memory", "disk" or "computed"
    key: str
    seconds: float

    @property
    def hit(self) -> bool:
        return self.outcome != "computed"


_models: dict[tuple, tuple[LoadedModel, str]] = {}  # memory key -> (model, content key)
_results: dict[tuple, Any] = {}
_events: list[CacheEvent] = []
_smoothed: dict[str, tuple[LoadedModel, Smoothing]] = {}  # at most one entry


def reset_events() -> None:
    """Start recording a new job's lookups."""
    _events.clear()


def events() -> list[CacheEvent]:
    """The lookups recorded since the last :func:`reset_events`."""
    return list(_events)


def _record(kind: str, outcome: str, key: str, started: float) -> None:
    event = CacheEvent(kind, outcome, key, time.perf_counter() - started)
    _events.append(event)
    where = f"cache hit in {outcome}" if event.hit else "computed"
    log.info("%s: %s (key %s, %.1f s)", kind, where, key, event.seconds)


def float_model(
    model_path: str,
    *,
    device_type: str = "cpu",
    trust_remote_code: bool = False,
    tokenizer_args: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    disk: DiskCache | None = None,
    disk_policy: str = "converted",
) -> LoadedModel:
    """The loaded float model for these arguments: from memory, the disk cache, or its source.

    Callers must not modify the returned model: quantize a :func:`private_copy` of it.
    """
    started = time.perf_counter()
    tokenizer_key = repr(sorted((tokenizer_args or {}).items()))
    memory_key = (model_path, device_type, trust_remote_code, tokenizer_key, allow_pickle)
    if memory_key in _models:
        loaded, key = _models[memory_key]
        _record("float_model", "memory", key, started)
        return loaded
    source = resolve_model_source(model_path)
    use_disk = disk is not None and (disk_policy == "all" or (disk_policy == "converted" and source.kind == "gguf"))
    key = content_key(*float_model_key_parts(source, device_type, trust_remote_code))
    loaded = _read_disk_model(disk, key, source, device_type, trust_remote_code, tokenizer_args) if use_disk else None
    outcome = "disk"
    if loaded is None:
        outcome = "computed"
        loaded = load_model(
            model_path,
            device_type=device_type,
            trust_remote_code=trust_remote_code,
            tokenizer_args=tokenizer_args,
            allow_pickle=allow_pickle,
        )
        if use_disk:
            disk.write("float_model", key, lambda directory: write_float_model(directory, loaded))
    _models[memory_key] = (loaded, key)
    _record("float_model", outcome, key, started)
    return loaded


def _read_disk_model(
    disk: DiskCache,
    key: str,
    source: Any,
    device_type: str,
    trust_remote_code: bool,
    tokenizer_args: dict[str, Any] | None,
) -> LoadedModel | None:
    if not disk.has("float_model", key):
        return None
    try:
        return read_float_model(
            disk.entry("float_model", key),
            source,
            device_type=device_type,
            trust_remote_code=trust_remote_code,
            tokenizer_args=tokenizer_args,
        )
    except Exception as exc:  # an unreadable entry is recomputed, never fatal
        log.warning("float model cache entry %s unreadable (%s); reloading from the source", key, exc)
        disk.discard("float_model", key)
        return None


def private_copy(loaded: LoadedModel) -> LoadedModel:
    """A copy whose model a job may transform in place (the tokenizer is shared, read-only)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


def float_observation(
    loaded: LoadedModel, batches: Sequence[Batch], cfg: QuantConfig, disk: DiskCache | None = None
) -> dict[str, InputStats]:
    """The float model's input statistics over ``batches`` (what ``quantize(anti_stats=...)`` takes).

    Returns a private copy: an anti-outlier method may modify it without touching the cache.
    """
    started = time.perf_counter()
    model = loaded.model
    parameter = next(model.parameters())
    names = observed_linears(model, cfg)
    device = str(parameter.device)
    key = content_key(*observation_key_parts(loaded.fingerprint, parameter.dtype, device, batches, names))
    memory_key = ("observation", key)
    outcome = "memory"
    if memory_key not in _results:
        stats = _read_disk_stats(disk, key, parameter.device) if disk is not None else None
        outcome = "disk"
        if stats is None:
            outcome = "computed"
            stats = observe_float_model(model, batches, cfg)
            if disk is not None:
                disk.write("observation", key, lambda directory: write_stats(directory, stats))
        _results[memory_key] = stats
    _record("observation", outcome, key, started)
    return copy.deepcopy(_results[memory_key])


def _read_disk_stats(disk: DiskCache, key: str, device: Any) -> dict[str, InputStats] | None:
    if not disk.has("observation", key):
        return None
    try:
        return read_stats(disk.entry("observation", key), device)
    except Exception as exc:  # an unreadable entry is recomputed, never fatal
        log.warning("observation cache entry %s unreadable (%s); observing again", key, exc)
        disk.discard("observation", key)
        return None


def smoothed_model(
    loaded: LoadedModel, batches: Sequence[Batch], cfg: QuantConfig, disk: DiskCache | None = None
) -> tuple[LoadedModel, Smoothing]:
    """The float model after ``cfg``'s anti-outlier method, and its :class:`Smoothing`.

    Shared by every recipe with the same :func:`~quant.pipeline.smoothing_settings` (they differ
    only in act_method and the float-layer choices): the anti-outlier method, its search if it
    has one, and the range_param observation run once. Only the latest smoothed model is kept
    (a grid iterates its first axis, anti_method, outermost), so memory holds one more model.
    Callers quantize a :func:`private_copy` of the model with a copy of the smoothing.
    """
    started = time.perf_counter()
    device = next(loaded.model.parameters()).device
    anti_batches = anti_outlier_batches(loaded.tokenizer, cfg, device, batches)
    settings = smoothing_settings(cfg)
    key = content_key("smoothing", loaded.fingerprint, batches_digest(batches), batches_digest(anti_batches), settings)
    outcome = "memory"
    if key not in _smoothed:
        outcome = "computed"
        _smoothed.clear()
        method, _ = anti_outlier_choice(cfg)
        anti_stats = float_observation(loaded, anti_batches, cfg, disk) if needs_statistics(method) else None
        # "none" transforms nothing (it only observes), so it may run on the shared float model itself.
        target = loaded if method == "none" else private_copy(loaded)
        _smoothed[key] = (target, smooth(target.model, batches, cfg, anti_stats, anti_batches))
    _record("smoothing", outcome, key, started)
    target, smoothing = _smoothed[key]
    return target, copy.deepcopy(smoothing)


def memoized(kind: str, key: tuple, compute: Callable[[], T]) -> T:
    """``compute()`` once per ``(kind, key)`` in this process; each lookup is recorded as an event."""
    started = time.perf_counter()
    full_key = (kind, *key)
    outcome = "memory"
    if full_key not in _results:
        outcome = "computed"
        _results[full_key] = compute()
    _record(kind, outcome, content_key(*key), started)
    return _results[full_key]
