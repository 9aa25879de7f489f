"""How ``quant.pipeline.quantize`` shares work between recipes: a memo it asks for each shareable step.

The pipeline owns the order of the steps; a :class:`Memo` only decides where a step's value comes
from (this process's memory, a store on disk, or ``compute()``). The keys are content: the memo
is scoped to one float model (its identity is the memo's business), and ``key_parts`` name
everything else the step depends on. A ``codec`` says how the value is written to and read from a
directory; a step without one is shared in memory only.

``quant-llama`` passes :data:`NO_MEMO`: every step is computed once, on the caller's model, in place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Codec(Protocol[T]):
    """Writes a step's value into a directory and reads it back."""

    def write(self, value: T, directory: Path) -> None: ...

    def read(self, directory: Path) -> T: ...


class Memo(Protocol):
    """Where the shareable steps of one float model's recipes come from.

    ``shares``: whether values outlive the call that computed them. The pipeline then treats the
    float model and every returned value as read-only (it works on copies); without sharing it
    transforms the caller's model in place, as a single run should.
    """

    shares: bool

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T: ...


class NoMemo:
    """Nothing is shared: every step is computed (``quant-llama``, one recipe per process)."""

    shares = False

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T:
        return compute()


NO_MEMO = NoMemo()


def content_key(*parts: Any) -> str:
    """A short hex digest of ``parts`` (bytes hashed as they are, anything else as sorted JSON)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode()
        digest.update(len(data).to_bytes(8, "little"))  # length prefix: ("ab", "c") != ("a", "bc")
        digest.update(data)
    return digest.hexdigest()[:24]


class MemoryMemo:
    """This process's memory only, one float model: e.g. a benchmark quantizing many recipes.

    ``computed`` counts the calls of each kind that had to compute (what a test can assert on).
    """

    shares = True

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], Any] = {}
        self.computed: dict[str, int] = {}

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T:
        key = (kind, content_key(*key_parts))
        if key not in self._values:
            self.computed[kind] = self.computed.get(kind, 0) + 1
            self._values[key] = compute()
        return self._values[key]


class Preset:
    """Another memo, except that the steps named in ``values`` take the given value (never computed).

    For benchmarks that feed the very same calibration batches to another tool, or a model without
    a tokenizer: ``Preset(NO_MEMO, calib_data=batches)``. The pipeline never modifies them.
    """

    def __init__(self, memo: Memo, **values: Any) -> None:
        self._memo, self._values = memo, values
        self.shares = memo.shares

    def get_or_compute(
        self, kind: str, key_parts: Sequence[Any], compute: Callable[[], T], codec: Codec[T] | None = None
    ) -> T:
        if kind in self._values:
            return self._values[kind]
        return self._memo.get_or_compute(kind, key_parts, compute, codec)
