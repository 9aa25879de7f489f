"""Activation observers: min-max (act 1), the reference's histogram (act 2), auto-mix (act 3)."""

import pytest
import torch

from quant.config import QuantConfig
from quant.observers import AUTO_MIX_RANGE_PARAM, HistogramObserver, MinMaxObserver, observer_factory
from quant.pipeline import quantize
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
    "Ghost in the Shell is an anime film.",
]


def _heavy_tailed_batches(n_batches=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(torch.tensor(2.0))  # infinite variance: long tails
    torch.manual_seed(seed)
    return [t.sample((512, 32)) * 0.5 + 0.2 * torch.rand(1, 32, generator=gen) for _ in range(n_batches)]


def _observed(observer, batches):
    for b in batches:
        observer.update(b)
    return observer.range()


def _literal_walk(obs: HistogramObserver) -> tuple[int, int]:
    """The quantile walk written out bin by bin (no bisection), on the observer's own error."""
    cumulative = torch.cumsum(obs.counts, 0)
    total = float(obs.counts.sum())
    alpha, beta, start, end, best = 0.0, 1.0, 0, obs.bins - 1, float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + 1e-5, beta - 1e-5
        left, right = start, end
        while left < end and cumulative[left] < next_alpha * total:  # float32 tensor vs float: float32
            left += 1
        while right > start and cumulative[right] > next_beta * total:
            right -= 1
        if left - start > end - right:
            candidate, alpha = (left, end), next_alpha
        else:
            candidate, beta = (start, right), next_beta
        if candidate == (start, end):
            continue
        error = obs.clip_error(*candidate)
        if error > best:
            break
        best, (start, end) = error, candidate
    return start, end


def test_histogram_walk_equals_the_literal_walk():
    for seed in range(3):
        for bins in (64, 2048):
            obs = HistogramObserver(bins=bins)
            for b in _heavy_tailed_batches(n_batches=3, seed=seed):
                obs.update(b)
                assert obs.search() == _literal_walk(obs), (seed, bins)


def test_clip_error_is_the_l2_error_of_uniform_bins():
    """Each bin's mass uniform over the bin, every value sent to the centre of its (clamped) target step."""
    obs = HistogramObserver(bins=64, bits=3)  # 8 target steps: steps much wider than bins, and narrower
    obs.update(torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 2.5)
    lo, width, m = float(obs.lo), float(obs.bin_width), 400
    inner = (torch.arange(m, dtype=torch.float64) + 0.5) / m  # sample points inside one bin
    for start, end in [(0, 63), (10, 50), (30, 31), (0, 5), (62, 63)]:
        step = width * (end - start + 1) / 8
        points = lo + width * (torch.arange(64, dtype=torch.float64)[:, None] + inner)  # (bins, m)
        level = torch.clamp(torch.floor((points - (lo + width * start)) / step), 0, 7)
        centre = lo + width * start + (level + 0.5) * step
        direct = float((obs.counts.double()[:, None] / m * (points - centre) ** 2).sum())
        assert obs.clip_error(start, end) == pytest.approx(direct, rel=2e-4), (start, end)


def test_histogram_counts_only_the_integer_truncated_range():
    """The reference's quirk: a batch is counted over [int(lo), int(hi)], read on the grid [lo, hi]."""
    x = torch.linspace(-3.7, 2.6, 10_001)
    obs = HistogramObserver()
    obs.update(x)
    assert (float(obs.lo), float(obs.hi)) == (float(x[0]), float(x[-1]))
    assert float(obs.counts.sum()) == int(((x >= -3) & (x <= 2)).sum())
    small = HistogramObserver()
    small.update(torch.linspace(-0.4, 0.8, 1000))  # int range [0, 0]: histc takes the data's min and max
    assert float(small.counts.sum()) == 1000


def test_batches_on_an_unchanged_range_add_up_to_the_pooled_histogram():
    gen = torch.Generator().manual_seed(5)
    batches = [torch.cat([torch.tensor([-4.5, 5.25]), torch.randn(3000, generator=gen)]) for _ in range(4)]
    obs = HistogramObserver()
    for b in batches:
        obs.update(b)
    pooled = torch.histc(torch.cat(batches), 2048, min=-4, max=5)
    assert (float(obs.lo), float(obs.hi)) == (-4.5, 5.25)
    assert torch.equal(obs.counts, pooled)


def test_a_wider_batch_regrids_the_old_counts_in_place():
    """Incremental, not pooled: the old counts are spread over the new bins that cover the old grid."""
    old = torch.randn(20_000, generator=torch.Generator().manual_seed(6)).clamp(-2.5, 2.5)
    obs = HistogramObserver()
    obs.update(old)
    old_lo, old_hi, old_total = float(obs.lo), float(obs.hi), float(obs.counts.sum())
    fine = (old_hi - old_lo) / (2048 * 128)
    obs.update(torch.tensor([-5.0, 6.0]))  # integer extremes: both inside the truncated range
    lo, hi, width = float(obs.lo), float(obs.hi), float(obs.bin_width)
    assert lo == -5.0 and hi >= 6.0
    ratio = (hi - lo) / (2048 * fine)  # a new bin is a whole number of the old grid's fine bins
    assert abs(ratio - round(ratio)) < 1e-3
    first, last = int((old_lo - lo) / width), int((old_hi - lo) / width)
    counts = obs.counts.clone()
    assert float(counts[0]) == 1 and float(counts[-1]) == 1  # the new batch's two values
    counts[0] -= 1
    counts[-1] -= 1
    assert float(counts[first : last + 1].sum()) == pytest.approx(old_total, rel=1e-6)
    assert float(counts[:first].sum()) == 0 and float(counts[last + 1 :].sum()) == 0


def test_histogram_range_is_a_whole_number_of_bins_of_the_grid():
    for seed in range(3):
        obs = HistogramObserver()
        xmin, xmax = _observed(obs, _heavy_tailed_batches(seed=seed))
        lo, width = float(obs.lo), float(obs.bin_width)
        start, stop = obs.search()
        assert (xmin, xmax) == pytest.approx((lo + width * start, lo + width * (stop + 1)), rel=1e-6, abs=1e-6)
        assert float(obs.lo) <= xmin < xmax <= float(obs.hi)  # hi may lie past the data: the grid was relaxed


def test_histogram_of_constant_inputs_starts_over_with_the_next_batch():
    obs = HistogramObserver()
    obs.update(torch.full((100,), 1.5))
    assert obs.range() == (1.5, 1.5)
    obs.update(torch.linspace(-2.0, 3.0, 500))  # the reference drops the constant batch here
    assert (float(obs.lo), float(obs.hi)) == (-2.0, 3.0)
    assert float(obs.counts.sum()) == 500


def test_auto_mix_rule():
    make = observer_factory(3, {"flat": AUTO_MIX_RANGE_PARAM, "spiky": AUTO_MIX_RANGE_PARAM + 0.1})
    assert isinstance(make("flat"), HistogramObserver)
    assert isinstance(make("spiky"), MinMaxObserver)
    assert isinstance(observer_factory(1)("any"), MinMaxObserver)
    assert isinstance(observer_factory(2)("any"), HistogramObserver)


def test_act_method_3_in_the_pipeline_follows_each_layers_range_param(tiny_tokenizer, monkeypatch):
    # The tiny model's range_params lie in about [3, 11]; a cut inside that range exercises both branches.
    cut = 7.0
    monkeypatch.setattr("quant.observers.AUTO_MIX_RANGE_PARAM", cut)
    cfg = QuantConfig(calib_texts=TEXTS, act_method=3, anti_method="none", disable_names=[])
    result = quantize(build_tiny_llama("llama3"), tiny_tokenizer, cfg)
    rows = [r for r in result.layers if r.status == "quantized"]
    assert rows
    for r in rows:
        assert r.observer == ("histogram" if r.range_param <= cut else "minmax"), r.name
    assert {r.observer for r in rows} == {"histogram", "minmax"}, "the tiny model must exercise both branches"


# act_method 2 in the running pass, against an independent whole-model pass:
# tests/quant/test_running_calibration.py.
