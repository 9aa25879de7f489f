"""The paired non-inferiority gate: may a candidate replace the reference on this metric?

One statistic for every decision that compares a quantized model with its reference over the same
examples (``sweep.select``, ``sweep.regress``, ``sweep.tune``). The *drop* is the reference's
metric minus the candidate's, oriented so that positive means the candidate is worse. With a
margin δ and a level α:

- **pass**: the one-sided upper (1 − α) confidence bound of the drop is below δ (non-inferiority
  shown: the candidate is at most δ worse, with confidence 1 − α);
- **fail**: the one-sided lower (1 − α) bound is at least δ (the drop is shown to exceed δ);
- **undecided**: neither; ``n_needed`` says roughly how many examples would decide.

Methods (docs/evaluation.md says why): Tango's asymptotic score interval for the difference of two
paired proportions (per-example correctness), and a studentized paired bootstrap (bootstrap-t)
for the mean of paired continuous scores (per-block log-likelihoods, per-sequence KL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from quant.errors import QuantInputError, invalid_value

PASS = "pass"
FAIL = "fail"
UNDECIDED = "undecided"
TANGO = "tango-score"
BOOTSTRAP_T = "paired-bootstrap-t"
# Below this many paired units a bootstrap has too few distinct resamples to say anything.
MIN_BOOTSTRAP_N = 20
_BISECTION_STEPS = 60  # halves [-1, 1] to ~1e-18: below double precision of a proportion


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one candidate against its reference."""

    status: str  # PASS | FAIL | UNDECIDED
    drop: float  # reference − candidate (positive = candidate worse), point estimate
    upper_bound: float  # one-sided upper (1 − alpha) bound of the drop
    lower_bound: float  # one-sided lower (1 − alpha) bound of the drop
    margin: float
    alpha: float
    n: int
    n_needed: int | None  # rough n that would decide, when undecided (None: decided, or no n would)
    method: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def line(self) -> str:
        """One human-readable line: the status, the drop, its bounds against the margin, n."""
        level = f"{100 * (1 - self.alpha):g}%"
        head = (
            f"{self.status}: drop {self.drop:+.4g}, one-sided {level} bounds "
            f"[{self.lower_bound:+.4g}, {self.upper_bound:+.4g}] vs margin {self.margin:g} (n={self.n}, {self.method})"
        )
        if self.status == PASS:
            return f"{head}; upper bound < margin"
        if self.status == FAIL:
            return f"{head}; lower bound >= margin: the drop exceeds the margin"
        if self.n_needed is None:
            return f"{head}; cannot decide: the estimate sits on the margin"
        return f"{head}; cannot decide at this n, roughly {self.n_needed} examples would"

    def to_metrics(self, prefix: str = "gate_") -> dict[str, float]:
        """Flat numeric metrics for experiment tracking (status as 1 pass / 0 undecided / -1 fail)."""
        code = {PASS: 1.0, UNDECIDED: 0.0, FAIL: -1.0}[self.status]
        values = {
            "status": code,
            "drop": self.drop,
            "upper_bound": self.upper_bound,
            "lower_bound": self.lower_bound,
            "margin": self.margin,
            "alpha": self.alpha,
            "n": float(self.n),
        }
        if self.n_needed is not None:
            values["n_needed"] = float(self.n_needed)
        return {f"{prefix}{key}": float(value) for key, value in values.items()}


def paired_proportions(
    reference_correct: Sequence[bool] | np.ndarray,
    candidate_correct: Sequence[bool] | np.ndarray,
    margin: float = 0.01,
    alpha: float = 0.05,
) -> Verdict:
    """Gate on the accuracy drop over the same examples, by Tango's score interval.

    ``reference_correct[i]`` and ``candidate_correct[i]`` say whether each model got example ``i``
    right (bools or 0/1). The drop is reference accuracy − candidate accuracy."""
    ref = _as_binary(reference_correct, "reference_correct")
    cand = _as_binary(candidate_correct, "candidate_correct")
    _check_paired(ref, cand)
    return paired_counts(int(np.sum(ref & ~cand)), int(np.sum(cand & ~ref)), ref.size, margin, alpha)


def paired_counts(
    reference_only: int, candidate_only: int, n: int, margin: float = 0.01, alpha: float = 0.05
) -> Verdict:
    """:func:`paired_proportions` from the counts alone: ``reference_only`` rows only the
    reference gets right, ``candidate_only`` only the candidate, out of ``n`` paired rows."""
    _check_rule(margin, alpha)
    for name, value in (("n", n), ("reference_only", reference_only), ("candidate_only", candidate_only)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise invalid_value(name, value, "an integer count >= 0")
    if n == 0 or reference_only + candidate_only > n:
        raise QuantInputError("n", f"{n} paired rows cannot hold {reference_only} + {candidate_only} discordant ones")
    b, c = reference_only, candidate_only
    lower, upper = tango_bounds(np.array([b]), np.array([c]), n, alpha)
    drop = (b - c) / n
    n_needed = None
    if _status(float(lower[0]), float(upper[0]), margin) == UNDECIDED:
        per_example_var = _tango_variance(np.array([b]), np.array([c]), n, margin)[0]
        n_needed = _rough_n_needed(drop, margin, float(per_example_var), alpha, n)
    return _verdict(drop, float(lower[0]), float(upper[0]), margin, alpha, n, n_needed, TANGO)


def paired_scores(
    reference_scores: Sequence[float] | np.ndarray,
    candidate_scores: Sequence[float] | np.ndarray,
    margin: float,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    n_bootstrap: int = 4000,
    seed: int = 0,
) -> Verdict:
    """Gate on the mean score drop over the same units, by a studentized paired bootstrap.

    Each unit must be independent of the others (a document, a block of tokens, a BoolQ row):
    bootstrapping correlated units (tokens of one sequence) would understate the uncertainty.
    For ``higher_is_better=False`` (a loss, a KL) the drop is candidate − reference. The bootstrap
    is seeded, so the same scores always give the same verdict. Fewer than ``MIN_BOOTSTRAP_N``
    units never decide."""
    _check_rule(margin, alpha)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 100:
        raise invalid_value("n_bootstrap", n_bootstrap, "an integer >= 100")
    ref = _as_finite(reference_scores, "reference_scores")
    cand = _as_finite(candidate_scores, "candidate_scores")
    _check_paired(ref, cand)
    diffs = ref - cand if higher_is_better else cand - ref  # per-unit drop, positive = worse
    n = diffs.size
    drop = float(diffs.mean())
    if n < MIN_BOOTSTRAP_N:
        spread = float(diffs.std(ddof=1)) if n > 1 else 0.0
        n_needed = _rough_n_needed(drop, margin, max(spread, abs(drop), margin) ** 2, alpha, MIN_BOOTSTRAP_N - 1)
        return _verdict(drop, -math.inf, math.inf, margin, alpha, n, n_needed, BOOTSTRAP_T)
    lower, upper = bootstrap_t_bounds(diffs, alpha, n_bootstrap, np.random.default_rng(seed))
    n_needed = None
    if _status(lower, upper, margin) == UNDECIDED:
        n_needed = _rough_n_needed(drop, margin, float(diffs.var(ddof=1)), alpha, n)
    return _verdict(drop, lower, upper, margin, alpha, n, n_needed, BOOTSTRAP_T)


def tango_bounds(b: np.ndarray, c: np.ndarray, n: int | np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided (1 − alpha) lower and upper bounds of Δ = π_b − π_c, elementwise over arrays.

    ``b`` / ``c``: discordant counts (only the reference / only the candidate right) out of ``n``
    pairs. Each bound inverts Tango's (1998) score test: the Δ0 where
    T(Δ0) = (b − c − nΔ0) / √(n(2·p̃_c(Δ0) + Δ0(1 − Δ0))) equals ±z_(1−α), p̃_c the restricted MLE
    of π_c under Δ = Δ0. T falls monotonically in Δ0, so bisection finds both roots."""
    b = np.asarray(b, dtype=float)
    c = np.asarray(c, dtype=float)
    n = np.broadcast_to(np.asarray(n, dtype=float), b.shape)
    z = float(norm.ppf(1 - alpha))
    return _invert_tango(b, c, n, z), _invert_tango(b, c, n, -z)


def _invert_tango(b: np.ndarray, c: np.ndarray, n: np.ndarray, target: float) -> np.ndarray:
    """The Δ0 in (−1, 1) where T(Δ0) = target (T decreasing): bisection, elementwise."""
    lo = np.full(b.shape, -1.0)
    hi = np.full(b.shape, 1.0)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = _tango_statistic(b, c, n, mid) > target  # the root lies right of mid
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return 0.5 * (lo + hi)


def _tango_statistic(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta0: np.ndarray) -> np.ndarray:
    numerator = b - c - n * delta0
    variance = n * _tango_variance(b, c, n, delta0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = numerator / np.sqrt(variance)
    # 0/0 only at b = c = 0, Δ0 = 0: the data sit exactly on the hypothesis.
    return np.where(numerator == 0, 0.0, stat)


def _tango_variance(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta0: float | np.ndarray) -> np.ndarray:
    """Per-pair variance of (b − c)/n under Δ = Δ0: 2·p̃_c + Δ0(1 − Δ0), p̃_c the restricted MLE.

    p̃_c maximizes b·log(π_c + Δ0) + c·log(π_c) + (n − b − c)·log(1 − 2π_c − Δ0): the larger root
    of 2n·x² + (−b − c + (2n − b + c)Δ0)·x − c·Δ0(1 − Δ0) = 0."""
    quad_a = 2 * n
    quad_b = -b - c + (2 * n - b + c) * delta0
    quad_c = -c * delta0 * (1 - delta0)
    disc = np.maximum(quad_b**2 - 4 * quad_a * quad_c, 0.0)
    p_c = np.maximum((np.sqrt(disc) - quad_b) / (2 * quad_a), 0.0)
    return np.maximum(2 * p_c + delta0 * (1 - delta0), 0.0)


def bootstrap_t_bounds(
    diffs: np.ndarray, alpha: float, n_bootstrap: int, rng: np.random.Generator
) -> tuple[float, float]:
    """One-sided (1 − alpha) lower and upper bounds of the mean of ``diffs`` by the bootstrap-t.

    Resamples units with replacement, studentizes each resample's mean by its own standard error,
    and reads the bounds off the quantiles of that pivot: second-order accurate, so skewed
    per-unit drops (a KL is never negative) keep close to nominal coverage at small n."""
    n = diffs.size
    mean = float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return mean, mean  # every unit has the same drop: no resample differs
    pivots = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // n)  # resamples per batch, bounds the (chunk, n) index array
    for start in range(0, n_bootstrap, chunk):
        stop = min(start + chunk, n_bootstrap)
        sample = diffs[rng.integers(0, n, size=(stop - start, n))]  # (resamples, n)
        sample_se = sample.std(axis=1, ddof=1) / math.sqrt(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            pivot = (sample.mean(axis=1) - mean) / sample_se
        pivots[start:stop] = np.where(sample_se == 0.0, 0.0, pivot)
    low_q, high_q = np.quantile(pivots, [alpha, 1 - alpha])
    return mean - float(high_q) * se, mean - float(low_q) * se


def _rough_n_needed(drop: float, margin: float, per_unit_var: float, alpha: float, n: int) -> int | None:
    """Examples at which a bound would just reach the margin if the estimate and its spread held
    (an even chance of deciding then; ask for about twice as many to decide with good odds)."""
    gap = abs(margin - drop)
    if gap < 1e-12:
        return None
    z = float(norm.ppf(1 - alpha))
    return max(n + 1, math.ceil(z * z * per_unit_var / gap**2))


def _status(lower: float, upper: float, margin: float) -> str:
    if upper < margin:
        return PASS
    if lower >= margin:
        return FAIL
    return UNDECIDED


def _verdict(
    drop: float, lower: float, upper: float, margin: float, alpha: float, n: int, n_needed: int | None, method: str
) -> Verdict:
    status = _status(lower, upper, margin)
    return Verdict(status, drop, upper, lower, float(margin), float(alpha), n, n_needed, method)


def _check_rule(margin: float, alpha: float) -> None:
    if not _is_number(margin) or not 0 <= margin < 1e300:
        raise invalid_value("margin", margin, "a finite number >= 0, in the metric's units")
    if not _is_number(alpha) or not 0 < alpha < 0.5:
        raise invalid_value("alpha", alpha, "a number in (0, 0.5)")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _as_binary(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise QuantInputError(name, "expected a non-empty 1-D sequence of per-example correctness")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise QuantInputError(name, "valid values: True/False or 1/0 per example")
    return array.astype(bool)


def _as_finite(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise QuantInputError(name, "expected a non-empty 1-D sequence of per-unit scores")
    if not np.isfinite(array).all():
        raise QuantInputError(name, "every score must be a finite number (no NaN or inf)")
    return array


def _check_paired(reference: np.ndarray, candidate: np.ndarray) -> None:
    if reference.shape != candidate.shape:
        raise QuantInputError(
            "candidate",
            f"{candidate.size} values for {reference.size} reference values; the gate needs the same examples",
        )
