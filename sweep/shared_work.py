"""Work that the jobs of a sweep share: the loaded float model, its observed input statistics, the
smoothed model of each anti-outlier setting, and the float model's BoolQ baseline.

Each is computed at most once per process (Hydra's basic launcher runs every job of a multirun
in one process) and, for the model and the statistics, once per machine: a content-keyed
:class:`~sweep.disk_cache.DiskCache` lets later processes and parallel workers reuse them. Every
lookup is recorded as a :class:`CacheEvent` so each job can log what it reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from quant.memo import Codec, content_key
from quant.model_io import LoadedModel, load_model, resolve_model_source
from sweep.disk_cache import DiskCache
from sweep.float_model_cache import float_model_key_parts, read_float_model, write_float_model

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
SMOOTHING_KIND = "smoothing"


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

    Callers must not modify the returned model (``quantize`` with a sharing memo copies it).
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


class SweepMemo:
    """The :class:`quant.memo.Memo` of one float model for the jobs of this process: memory, then
    the disk cache for the steps that have a codec, then ``compute()``; each lookup is an event.

    Only the latest smoothed model is kept (a grid iterates its first axis, anti_method,
    outermost), so memory holds one more model.
    """

    shares = True

    def __init__(self, model_key: str, disk: DiskCache | None = None) -> None:
        self.model_key, self.disk = model_key, disk

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T:
        started = time.perf_counter()
        key = content_key(kind, self.model_key, *key_parts)
        memory_key = (kind, key)
        outcome = "memory"
        if memory_key not in _results:
            if kind == SMOOTHING_KIND:
                for old in [k for k in _results if k[0] == SMOOTHING_KIND]:
                    del _results[old]
            disk = self.disk if codec is not None else None
            value = _read_disk(disk, kind, key, codec) if disk is not None else None
            outcome = "disk"
            if value is None:
                outcome = "computed"
                value = compute()
                if disk is not None:
                    disk.write(kind, key, lambda directory: codec.write(value, directory))
            _results[memory_key] = value
        _record(kind, outcome, key, started)
        return _results[memory_key]


def _read_disk(disk: DiskCache, kind: str, key: str, codec: Codec[T]) -> T | None:
    if not disk.has(kind, key):
        return None
    try:
        return codec.read(disk.entry(kind, key))
    except Exception as exc:  # an unreadable entry is recomputed, never fatal
        log.warning("%s cache entry %s unreadable (%s); computing again", kind, key, exc)
        disk.discard(kind, key)
        return None


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
