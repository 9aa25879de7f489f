"""Activation observers (SPEC §4): they see a linear's calibration inputs and propose its range.

- act_method 1, :class:`MinMaxObserver` [exact]: the mean over batches of each batch's min / max.
- act_method 2, :class:`HistogramObserver` [exact]: the reference's running 2048-bin histogram and
  greedy L2 clipping walk (torch 1.x's HistogramObserver, integer-truncated histogram range included).
- act_method 3, auto-mix [exact]: histogram when the linear's ``range_param`` ≤ 50, else min-max.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy
import torch

from quant.errors import QuantInputError

AUTO_MIX_RANGE_PARAM = 50.0  # act_method 3: range_param <= this -> histogram (SPEC §4)
QUANTILE_STEP = 1e-5  # the histogram walk moves an end by this fraction of the total count per step


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
    """act_method 2 [exact]: the reference's running 2048-bin histogram and its greedy L2 clipping walk.

    The reference's observer is a compiled variant of torch 1.x's ``HistogramObserver`` (bins 2048,
    upsample rate 128, 256 target bins), updated with every calibration batch and searched after
    every batch (the running pass fake-quantizes batch b with the range after batches 0..b).
    Reproduced here operation for operation in float32, because the walk's stopping point is
    sensitive to the last bit of its error sums:

    - Histogram: the first batch sets the grid ``[lo, hi]`` = its min/max (``bins`` equal bins).
      A later batch that extends the range widens the grid to a whole multiple ``ratio`` of the
      old grid's ``upsample_rate`` × finer resolution, relaxing only ``hi``; the old counts are
      spread evenly over that fine grid and summed back into the new bins.
    - Quirk kept on purpose: each batch is counted with ``torch.histc(x, bins, int(lo), int(hi))``,
      the range truncated toward zero to integers (as torch 1.x did), while the counts are read on
      the grid ``[lo, hi]``. Values beyond the integer range are not counted and the counted ones
      are read as if spread over the whole grid, which is why the reference clips hard.
    - Search: starting from all bins, move the lower or upper end inward by quantile steps of
      1e-5 of the total count (the end whose step gives up more bins), and keep going while the expected
      L2 error of quantizing the histogram to ``2^bits`` levels over the kept bins does not grow.
      The range is the kept bins' outer edges on the grid (an integer number of bins).
    """

    def __init__(self, bins: int = 2048, upsample_rate: int = 128, bits: int = 8) -> None:
        self.name = "histogram"
        self.bins = bins
        self.upsample_rate = upsample_rate
        self.levels = 2**bits
        self.counts: torch.Tensor | None = None  # (bins,) float32 on the CPU
        self.lo = torch.tensor(math.inf)  # grid ends, float32 scalars
        self.hi = torch.tensor(-math.inf)
        self._range: tuple[float, float] | None = None  # cached search result since the last update

    @property
    def bin_width(self) -> torch.Tensor:
        return (self.hi - self.lo) / self.bins

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        x_lo, x_hi = (v.cpu() for v in torch.aminmax(x))
        self._range = None
        if self.counts is None or self.lo == self.hi:  # first batch, or every value so far equal: start over
            self.lo, self.hi = x_lo, x_hi
            self.counts = _truncated_histc(x, self.bins, x_lo, x_hi)
            return
        lo, hi = torch.minimum(x_lo, self.lo), torch.maximum(x_hi, self.hi)
        hi, ratio, shift = self._widened_grid(lo, hi)
        counts = _truncated_histc(x, self.bins, lo, hi)
        if lo == self.lo and hi == self.hi:
            counts += self.counts
        else:
            counts += self._regridded(ratio, shift)
        self.counts, self.lo, self.hi = counts, lo, hi

    def _widened_grid(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """The new grid's ``hi``, how many fine bins make one new bin, and where the old grid starts (fine bins)."""
        fine = (self.hi - self.lo) / (self.bins * self.upsample_rate)  # fine-bin width, float32
        ratio = int(torch.ceil((hi - lo) / (self.bins * fine)))
        hi = hi + (ratio * (self.bins * fine) - (hi - lo))  # relax hi only: (hi − lo) = ratio · bins · fine
        shift = int(torch.round((self.lo - lo) / fine))
        return hi, ratio, shift

    def _regridded(self, ratio: int, shift: int) -> torch.Tensor:
        """The old counts on the new grid: each old bin spread evenly over ``upsample_rate`` fine bins."""
        assert self.counts is not None
        fine = self.counts.repeat_interleave(self.upsample_rate)  # (bins·upsample,) un-normalised
        wide = torch.zeros(self.bins * ratio)  # (bins·ratio,) fine bins of the new grid
        fine = fine[: wide.numel() - shift]  # a rounding edge could overhang by a fine bin
        wide[shift : shift + fine.numel()] = fine
        upto = torch.cumsum(wide, 0, dtype=torch.float64)[ratio - 1 :: ratio]  # (bins,) mass up to each right edge
        before = torch.zeros(self.bins)  # float32, as the reference: the running sums are rounded here
        before[1:] = upto[:-1]
        return ((upto - before) / self.upsample_rate).float()

    def clip_error(self, start: int, end: int) -> float:
        """Expected L2 error of quantizing the histogram to ``levels`` steps over bins ``start..end`` (inclusive).

        Values are uniform within each bin; a bin's mass is integrated over the target steps it
        spans (its first, the whole ones between, its last), each step's values going to its
        centre; bins outside the kept range fall into the first / last step.
        """
        assert self.counts is not None
        width = (float(self.hi) - float(self.lo)) / self.bins
        step = width * (end - start + 1) / self.levels
        if step == 0.0:
            return 0.0
        begin = (torch.arange(self.bins) - start) * width  # (bins,) each bin's left edge from the clip start
        stop = begin + width
        first = torch.clamp(torch.div(begin, step, rounding_mode="floor"), 0, self.levels - 1)
        last = torch.clamp(torch.div(stop, step, rounding_mode="floor"), 0, self.levels - 1)
        density = self.counts / width
        half = step / 2
        head = _square_integral(begin - (first + 0.5) * step, torch.ones(self.bins) * half, density)
        whole = (last - first - 1) * _square_integral(torch.tensor(-half), torch.tensor(half), density)
        tail = _square_integral(torch.tensor(-half), stop - (last * step + half), density)
        return float((head + whole + tail).sum())

    def search(self) -> tuple[int, int]:
        """The greedy quantile walk: the first and last bin kept."""
        if self.counts is None:
            raise RuntimeError("HistogramObserver.search() before any update()")
        total = float(self.counts.sum())
        start, end = 0, self.bins - 1
        if total == 0.0:  # nothing counted: the walk would never evaluate a candidate
            return start, end
        cumulative = torch.cumsum(self.counts, 0).tolist()  # float32 values, non-decreasing
        alpha, beta, best = 0.0, 1.0, math.inf
        while alpha < beta:
            next_alpha, next_beta = alpha + QUANTILE_STEP, beta - QUANTILE_STEP
            # first bin from start whose cumulative count reaches next_alpha·total (compared in float32) ...
            left = min(max(bisect.bisect_left(cumulative, _float32(next_alpha * total)), start), end)
            # ... and last bin down from end whose cumulative count is within next_beta·total
            right = min(max(bisect.bisect_right(cumulative, _float32(next_beta * total)) - 1, start), end)
            if left - start > end - right:
                candidate, alpha = (left, end), next_alpha
            else:
                candidate, beta = (start, right), next_beta
            if candidate == (start, end):
                continue
            error = self.clip_error(*candidate)
            if error > best:
                break
            best, (start, end) = error, candidate
        return start, end

    def range(self) -> tuple[float, float]:
        if self._range is None:
            start, end = self.search()
            width = self.bin_width
            self._range = float(self.lo + width * start), float(self.lo + width * (end + 1))
        return self._range


def _truncated_histc(x: torch.Tensor, bins: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``bins`` counts of ``x`` over ``[int(lo), int(hi)]`` (truncated toward zero: the reference's quirk), float32 CPU.

    torch.histc's own rule applies when the two integers are equal: the data's min and max are used.
    """
    return torch.histc(x, bins, min=int(lo), max=int(hi)).float().cpu()


def _square_integral(begin: torch.Tensor, end: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """``density · ∫_begin^end t² dt`` (cubes as products, in float32, as the reference evaluates them)."""
    return density * ((end * end * end - begin * begin * begin) / 3)


def _float32(value: float) -> float:
    """``value`` rounded to float32 (torch compares a float32 tensor with a Python float in float32)."""
    return float(numpy.float32(value))


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
