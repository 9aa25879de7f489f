"""The sweep's one work store: what jobs share, in this process's memory over one on-disk layout.

A value is found by ``(kind, key)``, the key a content hash (:func:`quant.memo.content_key`) of
everything the value depends on. :meth:`WorkStore.lookup` tries memory, then disk (for kinds
with a codec), then computes, and returns the value with a :class:`CacheEvent` saying where it
came from. One store is created per process (``sweep.app.main``) and handed to every job.

On disk an entry is the directory ``<root>/<kind>/<key>/``: the codec's files plus
``entry.json`` (kind, key, format), written last. The entry is filled under a temporary name
beside its place and renamed into place in one step, so a reader sees no entry or a complete one;
a killed writer leaves only a ``.<key>.tmp-*`` directory, which nothing reads as an entry and
the next store opened on ``root`` removes once it is stale. When two writers race, the first
rename wins: the loser drops its own result and reads the winner's back, so every process goes
on with the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from quant.memo import Codec, content_key

log = logging.getLogger(__name__)
T = TypeVar("T")

ENTRY_FILE = "entry.json"
FORMAT_VERSION = 1
STALE_TMP_S = 24 * 3600  # a temporary entry this old belongs to a writer that died
# Kinds whose memory layer keeps only the latest value: a smoothed model is a whole model copy,
# and a grid iterates its first axis (anti_method) outermost, so one is all it needs.
LATEST_ONLY = frozenset({"smoothing"})

MEMORY, DISK, COMPUTED = "memory", "disk", "computed"


@dataclass(frozen=True)
class CacheEvent:
    """One lookup: which value (kind, key), where it came from, and how long getting it took.

    ``where``: ``memory``, the entry's directory (a disk hit, or where a computed value was
    stored), or ``computed`` when it was not stored.
    """

    kind: str
    outcome: str  # MEMORY, DISK or COMPUTED
    key: str
    seconds: float
    where: str

    @property
    def hit(self) -> bool:
        return self.outcome != COMPUTED


@dataclass(frozen=True)
class Lookup(Generic[T]):
    value: T
    event: CacheEvent


class WorkStore:
    """Memory over ``root`` (None: memory only). Values handed out are shared: callers must not
    modify them (the pipeline copies what it transforms)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root).expanduser().resolve()
        self._memory: dict[tuple[str, str], Any] = {}
        self._events: list[CacheEvent] = []
        if self.root is not None:
            self._remove_stale_tmp()

    def entry(self, kind: str, key: str) -> Path | None:
        """Where the entry of ``(kind, key)`` lives on disk (it may not exist); None without a root."""
        return None if self.root is None else self.root / kind / key

    def has_entry(self, kind: str, key: str) -> bool:
        """Whether a complete entry is on disk (its ``entry.json`` names it)."""
        directory = self.entry(kind, key)
        if directory is None:
            return False
        try:
            meta = json.loads((directory / ENTRY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return meta == _entry_meta(kind, key)

    def lookup(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> Lookup[T]:
        """The value of ``(kind, content_key(kind, *key_parts))``: memory → disk (with a codec) → compute."""
        started = time.perf_counter()
        key = content_key(kind, *key_parts)
        if (kind, key) in self._memory:
            return self._found(kind, key, self._memory[(kind, key)], MEMORY, MEMORY, started)
        if kind in LATEST_ONLY:  # free the previous value before computing the next one
            for old in [k for k in self._memory if k[0] == kind]:
                del self._memory[old]
        disk = codec is not None and self.root is not None
        value = self._read(kind, key, codec) if disk else None
        if value is not None:
            return self._found(kind, key, value, DISK, str(self.entry(kind, key)), started)
        value = compute()
        where = COMPUTED
        if disk:
            value = self._write(kind, key, value, codec)
            where = str(self.entry(kind, key))
        return self._found(kind, key, value, COMPUTED, where, started)

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T:
        """:meth:`lookup`'s value alone."""
        return self.lookup(kind, key_parts, compute, codec).value

    def memo(self, scope: Sequence[Any]) -> ScopedMemo:
        """A :class:`quant.memo.Memo` for one float model: every key starts with ``scope``."""
        return ScopedMemo(self, list(scope))

    def take_events(self) -> list[CacheEvent]:
        """The lookups since the last call (a job takes them at its start and its end)."""
        events, self._events = self._events, []
        return events

    def _found(self, kind: str, key: str, value: T, outcome: str, where: str, started: float) -> Lookup[T]:
        self._memory[(kind, key)] = value
        event = CacheEvent(kind, outcome, key, time.perf_counter() - started, where)
        self._events.append(event)
        log.info("%s: %s (key %s, %.1f s)", kind, f"hit in {outcome}" if event.hit else "computed", key, event.seconds)
        return Lookup(value, event)

    def _read(self, kind: str, key: str, codec: Codec[T]) -> T | None:
        if not self.has_entry(kind, key):
            return None
        try:
            return codec.read(self.entry(kind, key))
        except Exception as exc:  # an unreadable entry is recomputed, never fatal
            log.warning("%s entry %s unreadable (%s); computing again", kind, key, exc)
            self._discard(kind, key)
            return None

    def _write(self, kind: str, key: str, value: T, codec: Codec[T]) -> T:
        """Publish ``value``; if another process published first, return theirs (read back)."""
        final = self.entry(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
        try:
            codec.write(value, tmp)
            (tmp / ENTRY_FILE).write_text(json.dumps(_entry_meta(kind, key)), encoding="utf-8")
            os.rename(tmp, final)  # atomic; fails when ``final`` exists (another writer won)
            return value
        except OSError:
            if not self.has_entry(kind, key):
                raise
            log.info("%s entry %s was written by another process first; reading theirs", kind, key)
            return codec.read(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, kind: str, key: str) -> None:
        """Remove an unreadable entry: renamed away first, so no reader sees it half-deleted."""
        final = self.entry(kind, key)
        doomed = Path(tempfile.mkdtemp(prefix=f".{key}.discard-", dir=final.parent))
        with contextlib.suppress(OSError):  # another process discarded or replaced it meanwhile
            os.rename(final, doomed / key)
        shutil.rmtree(doomed, ignore_errors=True)

    def _remove_stale_tmp(self) -> None:
        """Remove the temporary entries of writers that died (older than STALE_TMP_S)."""
        if not self.root.is_dir():
            return
        now = time.time()
        for tmp in self.root.glob("*/.*.tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(tmp, ignore_errors=True)


class ScopedMemo:
    """The store seen by ``quant.pipeline.quantize`` for one float model (keys prefixed by its scope)."""

    shares = True

    def __init__(self, store: WorkStore, scope: list[Any]) -> None:
        self.store, self.scope = store, scope

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T:
        return self.store.get_or_compute(kind, [*self.scope, *key_parts], compute, codec)


def _entry_meta(kind: str, key: str) -> dict[str, Any]:
    return {"kind": kind, "key": key, "format": FORMAT_VERSION}


class JsonCodec(Generic[T]):
    """A value kept as one JSON file, through ``encode`` / ``decode``."""

    FILE = "value.json"

    def __init__(self, encode: Callable[[T], Any], decode: Callable[[Any], T]) -> None:
        self.encode, self.decode = encode, decode

    def write(self, value: T, directory: Path) -> None:
        text = json.dumps(self.encode(value), indent=1, sort_keys=True, default=str)
        (directory / self.FILE).write_text(text + "\n", encoding="utf-8")

    def read(self, directory: Path) -> T:
        return self.decode(json.loads((directory / self.FILE).read_text(encoding="utf-8")))
