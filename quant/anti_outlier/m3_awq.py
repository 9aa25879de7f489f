"""m3 AWQ [exact]: activation-aware scales searched on the first calibration batch.

``m_j = mean_t |x_tj|``; for a ratio r, ``s = clamp(m^r, min=1e-4)`` then
``s /= sqrt(max(s)·min(s))``. r runs over ``{i / n_grid : 0 ≤ i < n_grid}`` (the reference's
{0, 0.05, …, 0.95}) and the r of least output error of the next linears with their weights
quantized as the recipe quantizes them (w_bit, w_sym) wins:
``mean((x/s)·Q(W·diag(s))ᵀ − x·Wᵀ)²`` over the stacked outputs. Ties keep the smaller r.
"""

from __future__ import annotations

import torch

from quant.anti_outlier.base import INPUTS_FIRST_BATCH, AntiOutlierMethod, PairContext, PairTransform, ParamRule
from quant.arch import NORM_PAIRS
from quant.quantizers import fake_quantize_weight

_MIN_SCALE = 1e-4


def awq_scales(mean_abs: torch.Tensor, ratio: float) -> torch.Tensor:
    """``s = clamp(m^r, 1e-4) / sqrt(max(s)·min(s))``."""
    s = mean_abs.pow(ratio).clamp(min=_MIN_SCALE)
    return s / (s.max() * s.min()).sqrt()


def weight_quant_error(
    x: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bits: int, symmetric: bool
) -> float:
    """Mean squared output error against ``reference = x·Wᵀ`` with weights quantized after scaling."""
    quantized = fake_quantize_weight(weight * scales, bits, symmetric) / scales  # back to x's basis
    return float((x @ quantized.T - reference).pow(2).mean())


def awq_transform(ctx: PairContext) -> PairTransform:
    x = ctx.inputs  # (tokens, in) of the first batch
    weight = ctx.stacked_weight()
    reference = x @ weight.T  # (tokens, Σ out)
    mean_abs = x.abs().mean(dim=0)
    n_grid = int(ctx.params["n_grid"])
    best: tuple[float, float, torch.Tensor] | None = None  # (error, ratio, scales)
    for i in range(n_grid):
        ratio = i / n_grid
        scales = awq_scales(mean_abs, ratio)
        error = weight_quant_error(x, reference, weight, scales, ctx.weight_bits, ctx.weight_symmetric)
        if best is None or error < best[0]:
            best = (error, ratio, scales)
    error, ratio, scales = best
    return PairTransform(scales, detail={"ratio": ratio, "error": error})


METHOD = AntiOutlierMethod(
    name="m3",
    description="AWQ: per-channel scales m^r, r searched for the least quantized-weight output error",
    pairs=NORM_PAIRS,
    transform_fn=awq_transform,
    default_params={"n_grid": 20},
    param_rules={"n_grid": ParamRule(1, 1000, integer=True)},
    inputs=INPUTS_FIRST_BATCH,
    needs_stats=False,
)
