"""Which saved tensors changed between two quantized outputs, and by how much.

Tells "the bytes moved" apart from "the accuracy moved": each tensor is compared by its sha256
(dtype, shape, bytes); a changed one reports its largest error relative to the reference tensor's
largest magnitude and the fraction of its elements that differ (for int8 weights: the fraction of
integers that changed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.fingerprint import tensor_sha256
from quant.reload import find_description, read_tensors

CHANGED = "changed"
RESHAPED = "shape or dtype changed"
ONLY_REFERENCE = "only in the reference"
ONLY_CANDIDATE = "only in the candidate"


@dataclass(frozen=True)
class TensorChange:
    """One tensor that is not byte-identical in both outputs."""

    name: str
    status: str  # CHANGED | RESHAPED | ONLY_REFERENCE | ONLY_CANDIDATE
    dtype: str
    numel: int
    max_abs_error: float | None = None  # max |candidate − reference| (CHANGED only)
    max_rel_error: float | None = None  # max_abs_error / max |reference|
    changed_fraction: float | None = None  # elements that differ / numel


@dataclass(frozen=True)
class TensorDiff:
    """All tensors of a reference and a candidate output, compared by sha256."""

    n_tensors: int
    n_identical: int
    changes: list[TensorChange] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.changes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts and every change (largest relative error first)."""
        return {
            "n_tensors": self.n_tensors,
            "n_identical": self.n_identical,
            "changes": [asdict(c) for c in self.changes],
        }

    def summary(self, limit: int = 10) -> str:
        """A few lines: counts, then the ``limit`` most changed tensors."""
        if self.identical:
            return f"tensors: all {self.n_tensors} identical (sha256)"
        lines = [f"tensors: {len(self.changes)} of {self.n_tensors} differ (sha256), {self.n_identical} identical"]
        for change in self.changes[:limit]:
            if change.status == CHANGED:
                lines.append(
                    f"  {change.name} ({change.dtype}): max rel error {change.max_rel_error:.3g}, "
                    f"{100 * change.changed_fraction:.2f}% of {change.numel} elements changed"
                )
            else:
                lines.append(f"  {change.name} ({change.dtype}): {change.status}")
        if len(self.changes) > limit:
            lines.append(f"  ... and {len(self.changes) - limit} more (see the tensor diff artifact)")
        return "\n".join(lines)

    def to_metrics(self, prefix: str = "tensors_") -> dict[str, float]:
        """Counts and the largest relative error and changed fraction over all tensors."""
        changed = [c for c in self.changes if c.status == CHANGED]
        return {
            f"{prefix}n": float(self.n_tensors),
            f"{prefix}changed": float(len(self.changes)),
            f"{prefix}max_rel_error": max((c.max_rel_error for c in changed), default=0.0),
            f"{prefix}max_changed_fraction": max((c.changed_fraction for c in changed), default=0.0),
        }


def diff_tensors(reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor]) -> TensorDiff:
    """Compare two ``{name: tensor}`` sets; changes sorted by relative error, largest first."""
    changes: list[TensorChange] = []
    for name in sorted(reference.keys() | candidate.keys()):
        ref, cand = reference.get(name), candidate.get(name)
        if ref is None or cand is None:
            present = cand if ref is None else ref
            status = ONLY_CANDIDATE if ref is None else ONLY_REFERENCE
            changes.append(TensorChange(name, status, str(present.dtype), present.numel()))
        elif ref.dtype != cand.dtype or ref.shape != cand.shape:
            changes.append(TensorChange(name, RESHAPED, f"{ref.dtype} -> {cand.dtype}", ref.numel()))
        elif tensor_sha256(ref) != tensor_sha256(cand):
            changes.append(_measure(name, ref, cand))
    changes.sort(key=lambda c: (c.status != CHANGED, -(c.max_rel_error or 0.0), c.name))
    n_tensors = len(reference.keys() | candidate.keys())
    return TensorDiff(n_tensors, n_tensors - len(changes), changes)


def _measure(name: str, reference: torch.Tensor, candidate: torch.Tensor) -> TensorChange:
    ref = reference.detach().to("cpu", torch.float64)
    cand = candidate.detach().to("cpu", torch.float64)
    error = (cand - ref).abs()
    max_abs = float(error.max()) if error.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (math.inf if max_abs > 0 else 0.0)
    # NaN != NaN: count bitwise differences, so a NaN in the same place is no change.
    differs = (reference.detach().cpu() != candidate.detach().cpu()) & ~(reference.isnan() & candidate.isnan())
    fraction = float(differs.sum()) / max(reference.numel(), 1)
    return TensorChange(name, CHANGED, str(reference.dtype), reference.numel(), max_abs, max_rel, fraction)


def read_saved_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved quantized output directory (single file or shards)."""
    directory = Path(directory)
    quant_type = json.loads(find_description(directory).read_text())["model_quant_type"]
    return read_tensors(directory, quant_type)


def diff_saved(reference_dir: str | Path, candidate_dir: str | Path) -> TensorDiff:
    """:func:`diff_tensors` of two saved output directories."""
    return diff_tensors(read_saved_tensors(reference_dir), read_saved_tensors(candidate_dir))
