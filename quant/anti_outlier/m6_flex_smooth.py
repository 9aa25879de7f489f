"""m6 Flex smooth [exact]: ``s = clamp(amax^α / wmax^β, 1e-5)`` with (α, β) searched on all tokens.

Pairs: norm → q/k/v, norm → gate/up and up → down (every o_proj is excluded, so v → o is
skipped); the norms get no bias. amax is over all tokens of all anti-outlier batches.
Stage 1: α over ``{i / alpha_steps : 0 ≤ i ≤ alpha_steps}`` with β = 1 − α. Stage 2: β over
``{i / beta_steps}`` at that α, kept only if not worse. The error of a candidate is

    RMS(Q_a(x/s)·Q_w(W·diag(s))ᵀ − x·Wᵀ) / RMS(x·Wᵀ)

with Q_w int8 symmetric per output row and Q_a int8 asymmetric per tensor (its own min/max),
whatever the recipe's bits. Ties keep the earlier grid point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quant.anti_outlier.base import (
    INPUTS_ALL,
    AntiOutlierMethod,
    PairContext,
    PairTransform,
    ParamRule,
    migration_scales,
)
from quant.arch import LINEAR_PAIRS, NORM_PAIRS
from quant.quantizers import fake_quantize_activation_per_tensor, fake_quantize_weight

FLEX_PAIRS = NORM_PAIRS + tuple(p for p in LINEAR_PAIRS if not any(n.endswith("o_proj") for n in p.nexts))


def reference_rms(reference: torch.Tensor) -> torch.Tensor:
    """``RMS(x·Wᵀ)``, the denominator of :func:`flex_error` (computed once per pair)."""
    return reference.pow(2).mean().sqrt().clamp(min=1e-30)


def flex_error(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, reference: torch.Tensor, rms_ref: torch.Tensor
) -> float:
    """``RMS(Q_a(x/s)·Q_w(W·s)ᵀ − x·Wᵀ) / RMS(x·Wᵀ)`` with int8 quantizers (see module docstring)."""
    approx = fake_quantize_activation_per_tensor(x / scales) @ fake_quantize_weight(weight * scales, 8, True).T
    diff = approx.sub_(reference)  # (tokens, Σ out), in place: the product is not needed again
    return float(diff.mul_(diff).mean().sqrt() / rms_ref)


def _argmin(grid: list[float], error_of: Callable[[float], float]) -> tuple[float, float]:
    """The first grid value of least error, and that error."""
    best_value, best_error = grid[0], error_of(grid[0])
    for value in grid[1:]:
        error = error_of(value)
        if error < best_error:
            best_value, best_error = value, error
    return best_value, best_error


def flex_smooth_transform(ctx: PairContext) -> PairTransform:
    x = ctx.inputs  # (tokens, in): every token of every batch
    weight = ctx.stacked_weight()
    reference = x @ weight.T  # (tokens, Σ out)
    rms_ref = reference_rms(reference)
    amax = x.abs().amax(dim=0)
    wmax = ctx.weight_column_absmax()

    def error_at(alpha: float, beta: float) -> float:
        return flex_error(x, weight, migration_scales(amax, wmax, alpha, beta), reference, rms_ref)

    alphas = [i / int(ctx.params["alpha_steps"]) for i in range(int(ctx.params["alpha_steps"]) + 1)]
    alpha, error = _argmin(alphas, lambda a: error_at(a, 1 - a))
    beta = 1 - alpha
    betas = [i / int(ctx.params["beta_steps"]) for i in range(int(ctx.params["beta_steps"]) + 1)]
    beta2, error2 = _argmin(betas, lambda b: error_at(alpha, b))
    if error2 <= error:
        beta, error = beta2, error2
    scales = migration_scales(amax, wmax, alpha, beta)
    return PairTransform(scales, detail={"alpha": alpha, "beta": beta, "error": error})


METHOD = AntiOutlierMethod(
    name="m6",
    description="Flex smooth: amax^α / wmax^β with α, then β, searched for the least int8 output error",
    pairs=FLEX_PAIRS,
    transform_fn=flex_smooth_transform,
    adds_norm_bias=False,
    default_params={"alpha_steps": 20, "beta_steps": 20},
    param_rules={"alpha_steps": ParamRule(1, 1000, integer=True), "beta_steps": ParamRule(1, 1000, integer=True)},
    inputs=INPUTS_ALL,
    needs_stats=False,
)
