"""The non-inferiority gate: Tango's score bounds, the paired bootstrap-t, and their error rates
against simulated paired outcomes with known true drops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

from eval.noninferiority import (
    BOOTSTRAP_T,
    FAIL,
    MIN_BOOTSTRAP_N,
    PASS,
    TANGO,
    UNDECIDED,
    _tango_statistic,
    _tango_variance,
    paired_proportions,
    paired_scores,
    tango_bounds,
)
from quant.errors import QuantInputError

ALPHA = 0.05
MARGIN = 0.01
SIZES = (50, 100, 200, 400, 800, 1600, 3000)
# Rate of "only the candidate right" rows; "only the reference right" = this + the true drop.
# 0: the candidate never fixes a row the reference gets wrong (accuracies near 1 look like this).
CANDIDATE_ONLY_RATES = (0.0, 0.005, 0.03, 0.1)
REPS = 4000


def _pairs(b: int, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example correctness with ``b`` rows only the reference gets right, ``c`` only the candidate."""
    ref = np.zeros(n, dtype=bool)
    cand = np.zeros(n, dtype=bool)
    ref[:b] = True
    cand[b : b + c] = True
    both = (n - b - c) // 2
    ref[b + c : b + c + both] = cand[b + c : b + c + both] = True
    return ref, cand


def _simulated_rates(true_drop: float, rng: np.random.Generator) -> dict[tuple[float, int], tuple[float, float]]:
    """(candidate-only rate, n) → (pass rate, fail rate) over REPS simulated paired samples."""
    rates = {}
    for pc in CANDIDATE_ONLY_RATES:
        for n in SIZES:
            cells = rng.multinomial(n, [pc + true_drop, pc, 1 - 2 * pc - true_drop], size=REPS)  # (REPS, 3)
            lower, upper = tango_bounds(cells[:, 0], cells[:, 1], n, ALPHA)
            rates[(pc, n)] = (float(np.mean(upper < MARGIN)), float(np.mean(lower >= MARGIN)))
    return rates


@pytest.fixture(scope="module")
def simulation() -> dict[float, dict[tuple[float, int], tuple[float, float]]]:
    rng = np.random.default_rng(20261206)
    return {drop: _simulated_rates(drop, rng) for drop in (0.0, MARGIN / 2, MARGIN, 2 * MARGIN)}


def test_pass_rate_at_the_margin_is_at_most_alpha(simulation) -> None:
    tolerance = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)
    worst = max(simulation[MARGIN].values())
    assert worst[0] <= tolerance, f"pass rate at drop = margin {worst[0]:.3f} > {tolerance:.3f}"
    # Larger true drops pass even less often.
    assert max(p for p, _ in simulation[2 * MARGIN].values()) <= tolerance


def test_fail_rate_below_the_margin_is_at_most_alpha(simulation) -> None:
    tolerance = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)
    for drop in (0.0, MARGIN / 2):
        assert max(f for _, f in simulation[drop].values()) <= tolerance


def test_pass_rate_at_no_drop_rises_with_n(simulation) -> None:
    for pc in CANDIDATE_ONLY_RATES:
        rates = [simulation[0.0][(pc, n)][0] for n in SIZES]
        assert all(later >= earlier - 0.02 for earlier, later in itertools.pairwise(rates)), (pc, rates)
        assert rates[-1] > rates[0] + 0.25 or rates[0] == 1.0, (pc, rates)
    # With few discordant rows the gate becomes sure quickly; with many it needs more n.
    assert simulation[0.0][(0.0, 3000)][0] == 1.0
    assert simulation[0.0][(0.1, 3000)][0] < simulation[0.0][(0.005, 3000)][0]


def test_two_margins_apart_fails_often_at_large_n(simulation) -> None:
    assert simulation[2 * MARGIN][(0.005, 3000)][1] > 0.9


def test_tiny_n_is_undecided_and_says_how_many_would_decide() -> None:
    ref, cand = _pairs(0, 0, 50)  # identical answers on 50 rows: still no proof within 1 point
    verdict = paired_proportions(ref, cand, margin=MARGIN, alpha=ALPHA)
    assert verdict.status == UNDECIDED and verdict.drop == 0.0 and verdict.method == TANGO
    # Zero discordant rows: upper bound z²/(n + z²), below 0.01 from n = 268 on.
    z2 = norm.ppf(1 - ALPHA) ** 2
    assert verdict.upper_bound == pytest.approx(z2 / (50 + z2), rel=1e-9)
    assert verdict.n_needed == 268
    assert paired_proportions(*_pairs(0, 0, 268), margin=MARGIN).status == PASS
    assert paired_proportions(*_pairs(0, 0, 267), margin=MARGIN).status == UNDECIDED
    assert "roughly 268 examples" in verdict.line()


def test_a_real_drop_fails_and_a_small_one_passes_with_enough_n() -> None:
    big = paired_proportions(*_pairs(120, 20, 2000), margin=MARGIN)  # drop 0.05
    assert big.status == FAIL and big.lower_bound >= MARGIN and big.n_needed is None
    assert "exceeds the margin" in big.line()
    small = paired_proportions(*_pairs(22, 20, 3000), margin=MARGIN)  # drop 0.00067
    assert small.status == PASS and small.upper_bound < MARGIN
    assert small.lower_bound < small.drop < small.upper_bound


def test_bounds_are_the_roots_of_tangos_statistic() -> None:
    z = norm.ppf(1 - ALPHA)
    b = np.array([0.0, 3, 10, 40, 2, 150])
    c = np.array([0.0, 1, 12, 5, 9, 140])
    n = np.array([50.0, 80, 300, 1000, 30, 3000])
    lower, upper = tango_bounds(b, c, n, ALPHA)
    assert np.allclose(_tango_statistic(b, c, n, upper), -z, atol=1e-6)
    assert np.allclose(_tango_statistic(b, c, n, lower)[1:], z, atol=1e-6)  # b = c = 0: lower bound at −z²/(n+z²)
    assert np.all(lower < (b - c) / n) and np.all((b - c) / n < upper)


def test_restricted_mle_maximizes_the_likelihood() -> None:
    for b, c, n, delta0 in [(5, 2, 50, 0.03), (3, 9, 40, -0.05), (10, 1, 30, 0.2), (0, 4, 30, 0.01)]:
        grid = np.linspace(1e-7, 0.5, 500_001)
        p_b, p_rest = grid + delta0, 1 - 2 * grid - delta0
        ok = (p_b > 0) & (p_rest > 0)
        loglik = b * np.log(p_b[ok]) + c * np.log(grid[ok]) + (n - b - c) * np.log(p_rest[ok])
        p_c = grid[ok][np.argmax(loglik)]
        variance = _tango_variance(np.array([float(b)]), np.array([float(c)]), np.array([float(n)]), delta0)[0]
        assert variance == pytest.approx(2 * p_c + delta0 * (1 - delta0), abs=1e-5)


def test_verdict_metrics_and_orientation() -> None:
    ref, cand = _pairs(5, 15, 400)  # candidate better: negative drop
    verdict = paired_proportions(ref, cand, margin=0.02)
    assert verdict.drop == pytest.approx(-10 / 400)
    metrics = verdict.to_metrics()
    assert metrics["gate_status"] == 1.0 and metrics["gate_n"] == 400.0
    assert metrics["gate_upper_bound"] == verdict.upper_bound


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"margin": -0.1}, "margin"),
        ({"margin": "0.01"}, "margin"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": True}, "alpha"),
    ],
)
def test_bad_rule_names_the_parameter(kwargs, param) -> None:
    with pytest.raises(QuantInputError, match=f"^{param}: "):
        paired_proportions([True, False], [True, True], **kwargs)


def test_bad_pairs_are_refused() -> None:
    with pytest.raises(QuantInputError, match="^candidate: .*same examples"):
        paired_proportions([True, False], [True])
    with pytest.raises(QuantInputError, match="^reference_correct: "):
        paired_proportions([0.5, 1], [1, 1])
    with pytest.raises(QuantInputError, match="^candidate_correct: "):
        paired_proportions([1], [])
    with pytest.raises(QuantInputError, match="^candidate_scores: .*finite"):
        paired_scores([1.0, 2.0], [1.0, math.nan], margin=0.1)
    with pytest.raises(QuantInputError, match="^n_bootstrap: "):
        paired_scores([1.0, 2.0], [1.0, 2.0], margin=0.1, n_bootstrap=10)


# --- continuous scores: the paired bootstrap-t ---------------------------------------------------

SCORE_MARGIN = 0.05
SCORE_REPS = 500


def _score_pass_fail_rates(true_drop: float, n: int, skewed: bool, rng: np.random.Generator) -> tuple[float, float]:
    """Pass / fail rates of the gate on per-unit drops with sd 0.2 and mean ``true_drop``."""
    passes = fails = 0
    for rep in range(SCORE_REPS):
        noise = (rng.gamma(1.0, 1.0, n) - 1.0) if skewed else rng.standard_normal(n)  # unit variance
        drops = true_drop + 0.2 * noise
        verdict = paired_scores(np.zeros(n), drops, SCORE_MARGIN, higher_is_better=False, n_bootstrap=1000, seed=rep)
        passes += verdict.status == PASS
        fails += verdict.status == FAIL
    return passes / SCORE_REPS, fails / SCORE_REPS


@pytest.mark.parametrize("skewed", [False, True], ids=["normal", "exponential"])
def test_bootstrap_error_rates(skewed: bool) -> None:
    rng = np.random.default_rng(7 + skewed)
    tolerance = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SCORE_REPS)
    at_margin = [_score_pass_fail_rates(SCORE_MARGIN, n, skewed, rng) for n in (30, 120)]
    assert max(p for p, _ in at_margin) <= tolerance, at_margin
    no_drop = [_score_pass_fail_rates(0.0, n, skewed, rng)[0] for n in (30, 120)]
    assert no_drop[1] > no_drop[0] + 0.2 and no_drop[1] > 0.6, no_drop


def test_bootstrap_matches_the_normal_bound_at_large_n() -> None:
    rng = np.random.default_rng(3)
    drops = rng.normal(0.01, 0.2, 3000)
    verdict = paired_scores(np.zeros(3000), drops, margin=0.05, higher_is_better=False)
    half_width = norm.ppf(0.95) * drops.std(ddof=1) / math.sqrt(3000)
    assert verdict.upper_bound - verdict.drop == pytest.approx(half_width, rel=0.1)
    assert verdict.drop - verdict.lower_bound == pytest.approx(half_width, rel=0.1)
    assert verdict.method == BOOTSTRAP_T and verdict.status == PASS


def test_scores_orientation_determinism_and_small_n() -> None:
    ref = np.linspace(1.0, 2.0, 200)
    better_is_lower = paired_scores(ref, ref + 0.3, margin=0.1, higher_is_better=False)
    assert better_is_lower.drop == pytest.approx(0.3) and better_is_lower.status == FAIL
    higher = paired_scores(ref, ref + 0.3, margin=0.1)
    assert higher.drop == pytest.approx(-0.3) and higher.status == PASS
    noisy = ref + np.random.default_rng(0).normal(0, 0.1, 200)
    assert paired_scores(ref, noisy, 0.01) == paired_scores(ref, noisy, 0.01)  # seeded: reproducible
    few = paired_scores(ref[: MIN_BOOTSTRAP_N - 1], ref[: MIN_BOOTSTRAP_N - 1], margin=0.1)
    assert few.status == UNDECIDED and few.n_needed is not None and few.n_needed >= MIN_BOOTSTRAP_N
