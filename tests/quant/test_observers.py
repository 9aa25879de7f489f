"""Activation observers: min-max (act 1), MSE-optimal histogram (act 2), auto-mix (act 3)."""

import pytest
import torch

from quant.config import QuantConfig
from quant.observers import AUTO_MIX_RANGE_PARAM, HistogramObserver, MinMaxObserver, observer_factory
from quant.pipeline import quantize
from quant.quantizers import activation_params, quantize_activation
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
    "Ghost in the Shell is an anime film.",
]


def _quant_mse(x: torch.Tensor, xmin: float, xmax: float) -> float:
    """Real int8 quantize → dequantize MSE of ``x`` with the static range [xmin, xmax]."""
    scale, offset = activation_params(xmin, xmax)
    x_hat = (quantize_activation(x, scale, offset) - offset) * scale
    return float((x_hat - x).double().pow(2).mean())


def _heavy_tailed_batches(n_batches=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(torch.tensor(2.0))  # infinite variance: long tails
    torch.manual_seed(seed)
    return [t.sample((512, 32)) * 0.5 + 0.2 * torch.rand(1, 32, generator=gen) for _ in range(n_batches)]


def _observed(observer, batches):
    for b in batches:
        observer.update(b)
    return observer.range()


def test_histogram_never_worse_than_minmax_on_heavy_tailed_data():
    for seed in range(4):
        batches = _heavy_tailed_batches(seed=seed)
        x = torch.cat([b.reshape(-1) for b in batches])
        mse_minmax = _quant_mse(x, *_observed(MinMaxObserver(), batches))
        mse_hist = _quant_mse(x, *_observed(HistogramObserver(), batches))
        assert mse_hist <= mse_minmax, seed
    assert mse_hist < 0.5 * mse_minmax  # and on such tails by a wide margin


def test_histogram_range_is_near_the_brute_force_mse_optimum():
    batches = _heavy_tailed_batches(n_batches=1, seed=7)
    x = batches[0].reshape(-1)
    xmin, xmax = float(x.min()), float(x.max())
    grid = torch.logspace(-3, 0, 40).tolist()  # fractions of the extremes; the optimum clips hard
    best = min(_quant_mse(x, xmin * a, xmax * b) for a in grid for b in grid)
    chosen = _quant_mse(x, *_observed(HistogramObserver(), batches))
    assert chosen <= 1.03 * best


def test_histogram_growth_merges_bins_exactly():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(4000, generator=gen) * 0.7  # radius 4 at first
    large = torch.randn(4000, generator=gen) * 9.0  # then 64: four doublings
    grown = HistogramObserver(bins_per_side=256)
    grown.update(small)
    grown.update(large)
    at_once = HistogramObserver(bins_per_side=256)
    at_once.update(torch.cat([large, small]))
    assert grown.radius == at_once.radius
    assert torch.equal(grown.counts, at_once.counts)
    assert float(grown.counts.sum()) == 8000


def test_histogram_expected_error_matches_direct_sum():
    obs = HistogramObserver(bins_per_side=64)
    obs.update(torch.randn(1000, generator=torch.Generator().manual_seed(2)))
    a, b = torch.tensor([-1.3, -0.2], dtype=torch.float64), torch.tensor([0.0, 0.9, 2.5], dtype=torch.float64)
    c, n, w = obs.bin_centers(), obs.counts, obs.bin_width
    for i, lo in enumerate(a.tolist()):
        for j, hi in enumerate(b.tolist()):
            step = (hi - lo) / 255
            clip_low = ((c - lo) ** 2 + w**2 / 12) * (c < lo)
            clip_high = ((c - hi) ** 2 + w**2 / 12) * (c > hi)
            inside = step**2 / 12 * ((c >= lo) & (c <= hi))
            direct = float((n * (clip_low + clip_high + inside)).sum())
            assert float(obs.expected_error(a, b)[i, j]) == pytest.approx(direct, rel=1e-9)


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
