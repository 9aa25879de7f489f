"""Local BoolQ data: reading the JSONL file, label normalisation, subset selection, hashing."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

_TRUE_STRINGS = frozenset({"true", "yes", "1"})
_FALSE_STRINGS = frozenset({"false", "no", "0"})


def normalise_label(value: Any) -> int:
    """Map a BoolQ label to lm-eval's target index (0 = "no", 1 = "yes").

    Accepts the strings "true"/"false" (any case, also "yes"/"no"/"1"/"0"),
    Python bools, and the integers 0/1.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_STRINGS:
            return 1
        if text in _FALSE_STRINGS:
            return 0
    raise ValueError(f"unrecognised BoolQ label {value!r}; expected 'true'/'false', a bool, or 0/1")


def read_boolq_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a BoolQ JSONL file (blank lines skipped) with labels normalised to 0/1."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"question", "passage", "label"} - row.keys()
            if missing:
                raise ValueError(f"{path}:{line_no}: missing key(s) {sorted(missing)}")
            try:
                label = normalise_label(row["label"])
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: {err}") from None
            rows.append({"question": row["question"], "passage": row["passage"], "label": label})
    if not rows:
        raise ValueError(f"{path}: no BoolQ rows")
    return rows


def select_indices(n: int, limit: int | None, seed: int | None) -> list[int] | None:
    """Pick the evaluated row indices (sorted), or None for "all rows".

    ``limit=None`` means all rows. With ``seed=None`` the first ``limit`` rows are used;
    with a seed, a deterministic ``random.Random(seed)`` sample of ``limit`` rows.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit >= n:
        return None
    if seed is None:
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(n), limit))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a canonical (sorted-key, compact) JSON encoding of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
