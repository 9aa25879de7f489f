"""Paired comparison of two BoolQ runs on the same examples (e.g. float reference vs quantized)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from eval.boolq import BoolQExample, BoolQResult


@dataclass(frozen=True)
class BoolQComparison:
    """Paired statistics of ``candidate`` against ``reference`` over the same BoolQ rows.

    ``n_reference_only``: rows the reference gets right and the candidate wrong (McNemar's b);
    ``n_candidate_only``: the other way round (c). ``mean_kl`` is the mean over rows of
    KL(reference ‖ candidate) between the 2-way softmaxes of (ll_no, ll_yes), in nats.
    """

    n: int
    reference_accuracy: float
    candidate_accuracy: float
    accuracy_delta: float
    flip_rate: float
    n_flips: int
    n_reference_only: int
    n_candidate_only: int
    mcnemar_p: float
    mean_kl: float

    def to_metrics(self, prefix: str = "boolq_") -> dict[str, float]:
        """Flat metrics for experiment tracking."""
        return {f"{prefix}{key}": float(value) for key, value in asdict(self).items()}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``min(b, c)`` in ``b + c`` trials at 1/2."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integer arithmetic until the final division


def binary_kl(ref_lls: tuple[float, float], cand_lls: tuple[float, float]) -> float:
    """KL(p ‖ q) in nats, p and q the softmaxes of two log-likelihood pairs."""
    log_p = _log_softmax(ref_lls)
    log_q = _log_softmax(cand_lls)
    return max(0.0, sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q)))


def _log_softmax(values: tuple[float, float]) -> list[float]:
    top = max(values)
    log_norm = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_norm for v in values]


def compare_boolq(reference: BoolQResult, candidate: BoolQResult) -> BoolQComparison:
    """Compare two BoolQ results row by row; raises ValueError unless they cover the same rows."""
    ref_rows = _by_index(reference.per_example, "reference")
    cand_rows = _by_index(candidate.per_example, "candidate")
    if ref_rows.keys() != cand_rows.keys():
        only_ref = sorted(ref_rows.keys() - cand_rows.keys())[:5]
        only_cand = sorted(cand_rows.keys() - ref_rows.keys())[:5]
        raise ValueError(
            f"results cover different examples (only in reference: {only_ref}..., only in candidate: {only_cand}...)"
        )
    if not ref_rows:
        raise ValueError("no examples to compare")
    ref_sha = reference.config.get("data_sha256")
    cand_sha = candidate.config.get("data_sha256")
    if ref_sha and cand_sha and ref_sha != cand_sha:
        raise ValueError("results come from different data files (data_sha256 differs)")

    b = c = flips = 0
    kl_total = 0.0
    for index, ref in ref_rows.items():
        cand = cand_rows[index]
        if ref.gold != cand.gold:
            raise ValueError(f"example {index} has gold {ref.gold} in reference but {cand.gold} in candidate")
        flips += ref.pred != cand.pred
        b += ref.correct and not cand.correct
        c += cand.correct and not ref.correct
        kl_total += binary_kl((ref.ll_no, ref.ll_yes), (cand.ll_no, cand.ll_yes))

    n = len(ref_rows)
    ref_acc = sum(ex.correct for ex in ref_rows.values()) / n
    cand_acc = sum(ex.correct for ex in cand_rows.values()) / n
    return BoolQComparison(
        n=n,
        reference_accuracy=ref_acc,
        candidate_accuracy=cand_acc,
        accuracy_delta=cand_acc - ref_acc,
        flip_rate=flips / n,
        n_flips=flips,
        n_reference_only=b,
        n_candidate_only=c,
        mcnemar_p=mcnemar_exact_p(b, c),
        mean_kl=kl_total / n,
    )


def _by_index(rows: list[BoolQExample], name: str) -> dict[int, BoolQExample]:
    out = {ex.index: ex for ex in rows}
    if len(out) != len(rows):
        raise ValueError(f"{name} result has duplicate example indices")
    return out
