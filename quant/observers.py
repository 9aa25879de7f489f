"""Activation observers (SPEC §4): they see a linear's calibration inputs and propose its range.

- act_method 1, :class:`MinMaxObserver` [exact]: the mean over batches of each batch's min / max.
- act_method 2, :class:`HistogramObserver`: the clipping range of least expected quantization
  MSE over a histogram of every calibration value (method in the class docstring).
- act_method 3, auto-mix [exact]: histogram when the linear's ``range_param`` ≤ 50, else min-max.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from quant.errors import QuantInputError

AUTO_MIX_RANGE_PARAM = 50.0  # act_method 3: range_param <= this -> histogram (SPEC §4)


class ActivationObserver(Protocol):
    """Accumulates one linear's inputs over calibration batches and proposes a clipping range."""

    name: str

    def update(self, x: torch.Tensor) -> None: ...

    def range(self) -> tuple[float, float]: ...


ObserverFactory = Callable[[str], ActivationObserver]


@dataclass
class MinMaxObserver:
    """act_method 1 [exact]: the MEAN over batches of each batch's min and max."""

    name: str = "minmax"
    mins: list[float] = field(default_factory=list)
    maxs: list[float] = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        self.mins.append(float(x.min()))
        self.maxs.append(float(x.max()))

    def range(self) -> tuple[float, float]:
        # float32 means of the float32 extremes, as the reference computes them (bit for bit).
        mins = torch.tensor(self.mins, dtype=torch.float32).mean()
        maxs = torch.tensor(self.maxs, dtype=torch.float32).mean()
        return float(mins), float(maxs)


class HistogramObserver:
    """act_method 2: the MSE-optimal clipping range over a histogram of all calibration values.

    Histogram: ``2·bins_per_side`` equal bins over ``[-R, R]`` with R a power of two. When a
    value beyond R arrives, R doubles and each pair of adjacent bins merges into one, so the
    histogram stays exactly the one a single pass over all values would give on that grid.

    Search: candidate lower ends ``a ≤ 0`` and upper ends ``b ≥ 0`` (the quantizer's range
    always includes 0) spaced geometrically from one bin width to the observed extreme, which
    is itself a candidate (no clipping). For each pair the expected squared error, with every
    value at its bin centre c (bin width w), is

        Σ_{c<a} n·((c−a)² + w²/12) + Σ_{c>b} n·((c−b)² + w²/12) + N_in·Δ²/12,  Δ = (b−a)/(2^bits − 1)

    (clipping error of the values outside, uniform rounding error of those inside). The pair
    of least error wins; prefix sums make the whole grid one vectorised evaluation.
    """

    def __init__(self, bins_per_side: int = 16384, candidates_per_side: int = 512, bits: int = 8) -> None:
        if bins_per_side % 2:
            raise ValueError("bins_per_side must be even (bins merge in pairs)")
        self.name = "histogram"
        self.bins_per_side = bins_per_side
        self.candidates_per_side = candidates_per_side
        self.bits = bits
        self.radius = 0.0
        self.counts: torch.Tensor | None = None  # (2 * bins_per_side,) float64
        self.min_value = math.inf
        self.max_value = -math.inf

    @property
    def bin_width(self) -> float:
        return self.radius / self.bins_per_side

    def update(self, x: torch.Tensor) -> None:
        values = x.detach().reshape(-1).float()
        lo, hi = float(values.min()), float(values.max())
        self.min_value, self.max_value = min(self.min_value, lo), max(self.max_value, hi)
        peak = max(abs(lo), abs(hi), 1e-12)
        if self.counts is None:
            self.radius = 2.0 ** math.ceil(math.log2(peak))
            self.counts = torch.zeros(2 * self.bins_per_side, dtype=torch.float64)
        while peak > self.radius:
            self._double_radius()
        hist = torch.histc(values, bins=2 * self.bins_per_side, min=-self.radius, max=self.radius)
        self.counts += hist.double()

    def _double_radius(self) -> None:
        assert self.counts is not None
        merged = self.counts.view(self.bins_per_side, 2).sum(dim=1)  # (bins_per_side,) pairs of bins
        self.counts = torch.zeros_like(self.counts)
        quarter = self.bins_per_side // 2
        self.counts[quarter : quarter + self.bins_per_side] = merged  # old range = middle half
        self.radius *= 2

    def bin_centers(self) -> torch.Tensor:
        w = self.bin_width
        return -self.radius + w * (torch.arange(2 * self.bins_per_side, dtype=torch.float64) + 0.5)

    def _candidates(self, extreme: float) -> torch.Tensor:
        """0, the observed extreme, and geometric steps between one bin width and it (same sign)."""
        if extreme == 0.0:
            return torch.zeros(1, dtype=torch.float64)
        mags = torch.logspace(
            math.log10(self.bin_width), math.log10(abs(extreme)), self.candidates_per_side, dtype=torch.float64
        )
        mags = torch.cat([mags.new_zeros(1), mags[mags < abs(extreme)], mags.new_tensor([abs(extreme)])])
        return math.copysign(1.0, extreme) * mags

    def expected_error(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Expected squared quantization error of clipping to [a_i, b_j]: shape (len(a), len(b))."""
        assert self.counts is not None
        n, c, w2 = self.counts, self.bin_centers(), self.bin_width**2 / 12
        s0, s1, s2 = (torch.cat([n.new_zeros(1), torch.cumsum(n * c**k, 0)]) for k in (0, 1, 2))  # prefix sums
        below = torch.searchsorted(c, a)  # bins with centre < a
        above = torch.searchsorted(c, b, right=True)  # bins with centre <= b
        low_n, low_1, low_2 = s0[below], s1[below], s2[below]
        high_n, high_1, high_2 = s0[-1] - s0[above], s1[-1] - s1[above], s2[-1] - s2[above]
        low_err = low_2 - 2 * a * low_1 + a**2 * low_n + low_n * w2  # (len(a),)
        high_err = high_2 - 2 * b * high_1 + b**2 * high_n + high_n * w2  # (len(b),)
        inside = s0[-1] - low_n[:, None] - high_n[None, :]  # (len(a), len(b))
        step = (b[None, :] - a[:, None]) / (2**self.bits - 1)
        return low_err[:, None] + high_err[None, :] + inside * step**2 / 12

    def range(self) -> tuple[float, float]:
        if self.counts is None:
            raise RuntimeError("HistogramObserver.range() before any update()")
        a = self._candidates(min(self.min_value, 0.0))
        b = self._candidates(max(self.max_value, 0.0))
        errors = self.expected_error(a, b)
        best = int(torch.argmin(errors))
        return float(a[best // len(b)]), float(b[best % len(b)])


def observer_factory(act_method: int, range_params: Mapping[str, float] | None = None) -> ObserverFactory:
    """The observer for each linear under ``act_method`` (1 min-max, 2 histogram, 3 auto-mix)."""
    if act_method == 1:
        return lambda _name: MinMaxObserver()
    if act_method == 2:
        return lambda _name: HistogramObserver()
    if act_method == 3:
        params = dict(range_params or {})

        def auto_mix(name: str) -> ActivationObserver:
            if name not in params:
                raise KeyError(f"act_method 3 needs the range_param of {name}")
            return HistogramObserver() if params[name] <= AUTO_MIX_RANGE_PARAM else MinMaxObserver()

        return auto_mix
    raise QuantInputError("act_method", f"invalid value {act_method!r}; valid values: 1, 2, 3")
