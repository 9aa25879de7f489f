"""A streaming safetensors writer: tensors are written as they come, shard by shard.

Each tensor's bytes go to the open shard's spill file at once, so the caller may free the
tensor. A shard is closed before it would exceed the size limit (a tensor larger than the limit
gets a shard of its own) and then assembled into its final file: the safetensors
header, then the tensors in safetensors' own order (dtype, then name), copied from the spill
file in chunks. The bytes are those of ``safetensors.torch.save_file(tensors, path,
metadata={"format": "pt"})`` for the same tensors (a test holds this against safetensors).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

COPY_CHUNK = 64 * 2**20
# safetensors' Dtype enum order: a file stores the larger dtypes first, then names in order.
_DTYPE_ORDER = ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64")
_DTYPE_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint64: "U64",
}
METADATA = {"format": "pt"}


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: list[int]
    spill_offset: int
    nbytes: int


@dataclass
class _Shard:
    spill: Path
    entries: list[_Entry] = field(default_factory=list)
    nbytes: int = 0


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of ``tensor`` as safetensors stores them, as a view of its memory
    (a CPU tensor is not copied: a 4 GB embedding table is written without a second 4 GB)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # (numel,)
    return memoryview(flat.view(torch.uint8).numpy())


def safetensors_header(entries: list[_Entry]) -> bytes:
    """The length-prefixed JSON header for ``entries`` in file order, padded with spaces to 8 bytes."""
    header: dict[str, object] = {"__metadata__": METADATA}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def file_order(entries: list[_Entry]) -> list[_Entry]:
    """safetensors' order: larger dtypes first (descending enum order), then by name."""
    return sorted(entries, key=lambda e: (-_DTYPE_ORDER.index(e.dtype), e.name))


class ShardWriter:
    """Writes tensors into ``<stem>.safetensors``, or with ``max_bytes`` into numbered shards.

    ``file_name(index, count)`` names shard ``index`` of ``count`` (1-based); ``single_name`` is the
    file when there is one unsharded file (``max_bytes`` None). :meth:`close` returns
    ``(paths, weight_map, total bytes)``.
    """

    def __init__(self, directory: Path, single_name: str, shard_name, max_bytes: int | None = None) -> None:
        self.directory = directory
        self.single_name = single_name
        self.shard_name = shard_name
        self.max_bytes = max_bytes
        self.names: list[str] = []
        self._open: _Shard | None = None
        self._closed: list[tuple[Path, list[str]]] = []  # assembled shards under temporary names
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor now (its bytes go to disk; the caller may free it)."""
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be saved in safetensors")
        data = tensor_bytes(tensor)
        if self._would_overflow(len(data)):
            self._assemble()
        if self._open is None:
            self._open = _Shard(self.directory / f".shard-{len(self._closed) + 1}.spill")
        shard = self._open
        with open(shard.spill, "ab") as f:
            f.write(data)
        shard.entries.append(_Entry(name, _DTYPE_NAMES[tensor.dtype], list(tensor.shape), shard.nbytes, len(data)))
        shard.nbytes += len(data)
        self.names.append(name)
        self.total_bytes += len(data)

    def _would_overflow(self, nbytes: int) -> bool:
        """Whether adding ``nbytes`` would push a non-empty open shard over the limit."""
        shard = self._open
        if shard is None or not shard.entries or self.max_bytes is None:
            return False
        return shard.nbytes + nbytes > self.max_bytes

    def _assemble(self) -> None:
        """Close the open shard: header and tensors in file order into its final bytes."""
        shard, self._open = self._open, None
        path = self.directory / f".shard-{len(self._closed) + 1}.safetensors"
        with open(shard.spill, "a+b") as src, open(path, "wb") as dst:
            ordered = file_order(shard.entries)
            dst.write(safetensors_header(ordered))
            for e in ordered:
                src.seek(e.spill_offset)
                left = e.nbytes
                while left:
                    chunk = src.read(min(COPY_CHUNK, left))
                    dst.write(chunk)
                    left -= len(chunk)
        shard.spill.unlink()
        self._closed.append((path, [e.name for e in shard.entries]))

    def close(self) -> tuple[list[Path], dict[str, str]]:
        """Assemble the last shard and give every file its final name; returns the paths and weight map."""
        if self._open is not None or not self._closed:
            if self._open is None:
                self._open = _Shard(self.directory / ".shard-1.spill")
                self._open.spill.touch()
            self._assemble()
        count = len(self._closed)
        paths, weight_map = [], {}
        for i, (tmp, names) in enumerate(self._closed, start=1):
            final = self.directory / (self.single_name if self.max_bytes is None else self.shard_name(i, count))
            os.replace(tmp, final)
            paths.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        return paths, weight_map


def save_module_tensors(module: torch.nn.Module, path: Path) -> Path:
    """``module``'s state dict as one safetensors file, written tensor by tensor (no second copy of
    the whole model in memory, as ``safetensors.torch.save_model`` makes); tensors that share memory
    (tied embeddings) are written once, under the name ``save_model`` keeps (the first in sort order)."""
    kept: dict[tuple[int, int, tuple[int, ...]], tuple[str, torch.Tensor]] = {}
    for name, tensor in module.state_dict().items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where not in kept or name < kept[where][0]:
            kept[where] = (name, tensor)
    writer = ShardWriter(path.parent, path.name, None)
    for name, tensor in kept.values():
        writer.add(name, tensor)
    writer.close()
    return path
