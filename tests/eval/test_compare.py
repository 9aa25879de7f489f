"""Paired BoolQ comparison: McNemar's exact test, flip rate, KL, mismatch errors."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import binomtest

from eval.boolq import BoolQExample, BoolQResult, evaluate_boolq
from eval.compare import binary_kl, compare_boolq, mcnemar_exact_p

LOG_HALF = math.log(0.5)


def _example(index: int, gold: int, pred: int, p_yes: float = 0.0) -> BoolQExample:
    """A row whose 2-way distribution puts ``p_yes`` on "yes" (default: decided by ``pred``)."""
    p_yes = p_yes or (0.8 if pred == 1 else 0.2)
    return BoolQExample(index, gold, math.log(p_yes), math.log(1 - p_yes), pred, pred == gold)


def _result(rows: list[BoolQExample], sha: str | None = "abc") -> BoolQResult:
    acc = sum(r.correct for r in rows) / len(rows)
    return BoolQResult(accuracy=acc, stderr=0.0, n=len(rows), per_example=rows, config={"data_sha256": sha})


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 5, 0.0625),  # 2 * (1/2)^5
        (5, 0, 0.0625),
        (3, 3, 1.0),
        (0, 0, 1.0),
        (0, 1, 1.0),
        (1, 4, 0.375),  # 2 * (1 + 5) / 32
        (0, 10, 2 / 1024),
    ],
)
def test_mcnemar_hand_computed(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(2, 9), (10, 25), (40, 41), (120, 80), (700, 650)])
def test_mcnemar_matches_scipy(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_all_flips_one_way():
    ref = _result([_example(i, gold=1, pred=1) for i in range(10)])
    cand = _result([_example(i, gold=1, pred=0 if i < 5 else 1) for i in range(10)])
    cmp = compare_boolq(ref, cand)
    assert (cmp.n_reference_only, cmp.n_candidate_only, cmp.n_flips) == (5, 0, 5)
    assert cmp.flip_rate == 0.5
    assert cmp.mcnemar_p == pytest.approx(0.0625)
    assert cmp.reference_accuracy == 1.0 and cmp.candidate_accuracy == 0.5
    assert cmp.accuracy_delta == pytest.approx(-0.5)
    # 5 rows unchanged (KL 0), 5 rows 0.8 -> 0.2 on "yes".
    kl_row = 0.8 * math.log(0.8 / 0.2) + 0.2 * math.log(0.2 / 0.8)
    assert cmp.mean_kl == pytest.approx(kl_row / 2)


def test_balanced_flips_and_order_independence():
    golds = [1, 0, 1, 0, 1, 0]
    ref_preds = [1, 0, 0, 1, 1, 0]
    cand_preds = [0, 1, 1, 0, 1, 0]  # rows 0,1 lost, rows 2,3 gained
    ref = _result([_example(i, g, p) for i, (g, p) in enumerate(zip(golds, ref_preds))])
    rows = [_example(i, g, p) for i, (g, p) in enumerate(zip(golds, cand_preds))]
    random.Random(0).shuffle(rows)
    cmp = compare_boolq(ref, _result(rows))
    assert (cmp.n_reference_only, cmp.n_candidate_only) == (2, 2)
    assert cmp.flip_rate == pytest.approx(4 / 6) and cmp.mcnemar_p == 1.0
    assert cmp.accuracy_delta == 0.0
    assert set(cmp.to_metrics()) >= {"boolq_flip_rate", "boolq_mcnemar_p", "boolq_mean_kl"}


def test_kl_values():
    assert binary_kl((-0.3, -1.2), (-0.3, -1.2)) == 0.0
    assert binary_kl((-0.3, -1.2), (-5.3, -6.2)) == pytest.approx(0.0, abs=1e-15)  # shift-invariant
    p, q = (LOG_HALF, LOG_HALF), (math.log(0.25), math.log(0.75))
    assert binary_kl(p, q) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert binary_kl(q, p) != pytest.approx(binary_kl(p, q))  # not symmetric


def test_identical_results_have_zero_kl_and_no_flips():
    rows = [_example(i, i % 2, (i // 2) % 2, p_yes=0.1 + 0.1 * i) for i in range(8)]
    cmp = compare_boolq(_result(rows), _result(list(rows)))
    assert cmp.mean_kl == 0.0 and cmp.flip_rate == 0.0 and cmp.mcnemar_p == 1.0
    assert cmp.accuracy_delta == 0.0


def test_mismatched_examples_raise():
    ref = _result([_example(i, 1, 1) for i in range(4)])
    with pytest.raises(ValueError, match="different examples"):
        compare_boolq(ref, _result([_example(i, 1, 1) for i in range(1, 5)]))
    with pytest.raises(ValueError, match="different examples"):
        compare_boolq(ref, _result([_example(i, 1, 1) for i in range(3)]))
    with pytest.raises(ValueError, match="gold"):
        compare_boolq(ref, _result([_example(i, int(i != 2), 1) for i in range(4)]))
    with pytest.raises(ValueError, match="data files"):
        compare_boolq(ref, _result([_example(i, 1, 1) for i in range(4)], sha="def"))
    with pytest.raises(ValueError, match="duplicate"):
        compare_boolq(ref, _result([_example(i, 1, 1) for i in (0, 1, 2, 2)]))


def test_compare_real_runs_of_the_same_model(tiny_model, tiny_tokenizer, tiny_boolq_file):
    a = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=None)
    b = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=None, batch_size=1)
    cmp = compare_boolq(a, b)
    assert cmp.n == 8 and cmp.n_flips == 0 and cmp.mcnemar_p == 1.0
    assert cmp.mean_kl == pytest.approx(0.0, abs=1e-8)
    other = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=4, seed=3)
    with pytest.raises(ValueError):
        compare_boolq(a, other)
