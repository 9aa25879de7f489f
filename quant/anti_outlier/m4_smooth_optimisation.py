"""m4 smooth optimisation [exact]: ``s = clamp(amax^0.9 / wmax^0.1, 1e-5)`` on all four pairs.

norm → q/k/v, norm → gate/up, up → down, and v → o. For v → o under GQA the scales of the
query heads that share one KV head are averaged (``PairContext.to_prev_channels``): v_proj
rows are divided by ``s_v`` (n_kv · head_dim) and o_proj columns multiplied by ``s_v``
repeated for each query head of the group.
"""

from __future__ import annotations

from quant.anti_outlier.base import AntiOutlierMethod, PairContext, PairTransform, ParamRule, migration_scales
from quant.arch import LINEAR_PAIRS, NORM_PAIRS


def smooth_optimisation_transform(ctx: PairContext) -> PairTransform:
    alpha, beta = float(ctx.params["alpha"]), float(ctx.params["beta"])
    return PairTransform(migration_scales(ctx.stats.amax, ctx.weight_column_absmax(), alpha, beta))


METHOD = AntiOutlierMethod(
    name="m4",
    description="Smooth optimisation: SmoothQuant-like scaling with α 0.9 / β 0.1, also on v→o and up→down",
    pairs=NORM_PAIRS + LINEAR_PAIRS,
    transform_fn=smooth_optimisation_transform,
    default_params={"alpha": 0.9, "beta": 0.1},
    param_rules={"alpha": ParamRule(0.0, 1.0), "beta": ParamRule(0.0, 1.0)},
)
