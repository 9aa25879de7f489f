"""m1 SmoothQuant [exact]: ``s = clamp(amax^α / wmax^(1−α), min=1e-5)`` with α = 0.5."""

from __future__ import annotations

from quant.anti_outlier.base import AntiOutlierMethod, PairContext, PairTransform, ParamRule, migration_scales
from quant.arch import NORM_PAIRS


def smoothquant_transform(ctx: PairContext) -> PairTransform:
    """Per input channel: activation absmax^α over weight column absmax^(1−α)."""
    alpha = float(ctx.params["alpha"])
    return PairTransform(migration_scales(ctx.stats.amax, ctx.weight_column_absmax(), alpha, 1 - alpha))


METHOD = AntiOutlierMethod(
    name="m1",
    description="SmoothQuant: migrate activation outliers into the weights, per input channel",
    pairs=NORM_PAIRS,
    transform_fn=smoothquant_transform,
    default_params={"alpha": 0.5},
    param_rules={"alpha": ParamRule(0.0, 1.0)},
)
