"""m1 SmoothQuant [exact]: ``s = clamp(amax^α / wmax^(1−α), min=1e-5)`` with α = 0.5."""

from __future__ import annotations

import torch

from quant.anti_outlier.base import AntiOutlierMethod, PairContext
from quant.arch import NORM_PAIRS

_MIN_SCALE = 1e-5


def smoothquant_scales(ctx: PairContext) -> torch.Tensor:
    """Per input channel: activation absmax^α over weight column absmax^(1−α)."""
    alpha = float(ctx.params.get("alpha", 0.5))
    amax = ctx.stats.amax
    wmax = ctx.weight_column_absmax().to(amax.device).clamp(min=_MIN_SCALE)
    return (amax.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=_MIN_SCALE)


METHOD = AntiOutlierMethod(
    name="m1",
    description="SmoothQuant: migrate activation outliers into the weights, per input channel",
    pairs=NORM_PAIRS,
    scale_fn=smoothquant_scales,
    default_params={"alpha": 0.5},
)
