"""Progress a user can see: one tqdm bar per stage, a float-layer summary line, the peak memory.

Bars go to stderr and show only when stderr is a terminal and quiet mode is off (``--quiet`` of
``quant-llama``, ``quiet=true`` of a sweep job: harness extensions). The layer loops call
:func:`stage` (``observe 3/30 layer``) and :func:`batches` (a nested bar over one layer's
calibration batches); both are plain iterations when bars are off.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

T = TypeVar("T")

_state = {"quiet": False, "hf_bars_silenced": False}


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar of this process off (True), transformers' own (weight loading)
    included, or back on where stderr is a terminal."""
    _state["quiet"] = bool(quiet)
    if quiet and hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        _state["hf_bars_silenced"] = True
    elif not quiet and _state["hf_bars_silenced"]:
        hf_logging.enable_progress_bar()
        _state["hf_bars_silenced"] = False


@contextlib.contextmanager
def quiet_mode(quiet: bool) -> Iterator[None]:
    """``set_quiet(quiet)`` inside the block, the previous setting after it."""
    before = _state["quiet"]
    set_quiet(quiet)
    try:
        yield
    finally:
        set_quiet(before)


def bars_enabled() -> bool:
    """Whether bars are drawn now: not quiet, and stderr is a terminal."""
    stream = sys.stderr
    return not _state["quiet"] and hasattr(stream, "isatty") and stream.isatty()


def stage(name: str, items: Iterable[T], total: int | None = None, unit: str = "layer") -> Iterator[T]:
    """Iterate ``items`` under a bar ``name: i/N unit`` (one bar per stage, removed when it ends)."""
    with tqdm(
        items, desc=name, total=total, unit=unit, file=sys.stderr, leave=False, disable=not bars_enabled()
    ) as bar:
        yield from bar


def batches(items: Iterable[T], total: int | None = None, name: str = "calibration batches") -> Iterator[T]:
    """A nested bar (second line) over one layer's calibration batches."""
    with tqdm(
        items,
        desc=f"  {name}",
        total=total,
        unit="batch",
        file=sys.stderr,
        leave=False,
        position=1,
        disable=not bars_enabled(),
    ) as bar:
        yield from bar


def reason_kind(reason: str) -> str:
    """The kind of a float-layer reason: the text before its first ':' (``disable_level L3``)."""
    return reason.split(":", 1)[0].strip()


def float_layers_summary(float_layers: Mapping[str, str], report_file: str | None = None) -> str:
    """One line for every linear kept in float: the count and the count per kind of reason."""
    if not float_layers:
        return "no linear kept in float"
    kinds = Counter(reason_kind(r) for r in float_layers.values())
    parts = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    where = f"; the full list is in {report_file}" if report_file else ""
    return f"{len(float_layers)} linears kept in float ({parts}){where}"


def release_free_heap() -> None:
    """Collect garbage and hand freed malloc arenas back to the OS: glibc keeps them otherwise, so a
    stage's freed transients (an evaluation's logits) would stay resident under the next one's."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_line() -> str:
    """``peak memory: 1.23 GB RSS`` plus each CUDA device's peak allocated bytes where there is one."""
    parts = [f"{peak_rss_bytes() / 1e9:.2f} GB RSS"]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            parts.append(f"cuda:{i} {torch.cuda.max_memory_allocated(i) / 1e9:.2f} GB")
    return "peak memory: " + ", ".join(parts)
