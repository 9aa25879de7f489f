"""A disk cache of evaluation results keyed by content, shared by every process of a sweep.

One JSON file per key under ``<directory>/<kind>/<key>.json`` holding the key's fields and the
result. Files are written to a temporary name and renamed into place (``os.replace``), so
parallel writers never leave a torn file: the last complete write wins, and since equal keys
mean equal inputs, every writer writes the same result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from eval.data import sha256_json

log = logging.getLogger(__name__)
T = TypeVar("T")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A result and where it came from: ``hit`` is True when it was read from disk."""

    value: T
    hit: bool
    key: str
    path: Path | None  # None when the cache is disabled
    seconds: float  # time to read it (hit) or to compute and store it (miss)


class ResultCache:
    """Content-keyed JSON results on disk; counts its own hits and misses.

    ``directory=None`` disables it: every lookup misses and nothing is written.
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory).expanduser().resolve()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key_of(fields: Mapping[str, Any]) -> str:
        """The content key: SHA-256 of the canonical JSON of ``fields``."""
        return sha256_json({"format": FORMAT_VERSION, **fields})

    def path_for(self, kind: str, key: str) -> Path | None:
        return None if self.directory is None else self.directory / kind / f"{key}.json"

    def load(self, kind: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored payload for these fields, or None (absent, unreadable, or other fields)."""
        path = self.path_for(kind, self.key_of(fields))
        if path is None:
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable cache entry %s: %s", path, err)
            return None
        if entry.get("fields") != json.loads(json.dumps(fields, default=str)):
            log.warning("ignoring cache entry %s: its key fields differ", path)
            return None
        return entry["result"]

    def store(self, kind: str, fields: Mapping[str, Any], result: Mapping[str, Any]) -> Path | None:
        """Write one entry atomically (temporary file in the same folder, then ``os.replace``)."""
        path = self.path_for(kind, self.key_of(fields))
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"fields": fields, "result": result}, indent=1, default=str) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(
        self,
        kind: str,
        fields: Mapping[str, Any],
        compute: Callable[[], T],
        encode: Callable[[T], Mapping[str, Any]],
        decode: Callable[[dict[str, Any]], T],
    ) -> Cached[T]:
        """The cached result for ``fields``, or ``compute()`` it and store it."""
        start = time.perf_counter()
        key = self.key_of(fields)
        payload = self.load(kind, fields)
        if payload is not None:
            self.hits += 1
            log.info("%s cache hit: %s", kind, key[:16])
            return Cached(decode(payload), True, key, self.path_for(kind, key), time.perf_counter() - start)
        self.misses += 1
        log.info("%s cache miss: %s", kind, key[:16])
        value = compute()
        path = self.store(kind, fields, encode(value))
        return Cached(value, False, key, path, time.perf_counter() - start)
