"""m5 CBQ [exact per SPEC §3, outlier rule as read here]: scale only the outlier channels.

Each side of the input is handled alike: the positive side by the channel maxima
``cmax_j``, the negative side by ``−cmin_j`` (both clamped at 0). Outlier channels of one
side: a coarse cut by the 1.5·IQR fence over channels (20th / 80th percentiles,
``fence = q80 + 1.5·(q80 − q20)``), refined by Otsu's threshold over the same values: a
channel is an outlier when it is above both. Outliers get
``s_j = (v_j / max over non-outliers v)^0.7``, others 1; the scale is the max of both sides.
"""

from __future__ import annotations

import torch

from quant.anti_outlier.base import AntiOutlierMethod, PairContext, PairTransform, ParamRule
from quant.arch import NORM_PAIRS

_MIN_VALUE = 1e-5


def otsu_threshold(values: torch.Tensor) -> float:
    """Otsu's split of 1-D values: the cut maximising the between-class variance ``w0·w1·(μ0 − μ1)²``.

    Exact over the sorted values (every gap between two distinct values is a candidate);
    returns the lower value of the best gap, so ``values > threshold`` is the upper class.
    """
    ordered = values.double().sort().values
    n = ordered.numel()
    if n < 2:
        return float(ordered.max()) if n else 0.0
    csum = torch.cumsum(ordered, 0)
    k = torch.arange(1, n, dtype=torch.float64)  # size of the lower class
    mean_low = csum[:-1] / k
    mean_high = (csum[-1] - csum[:-1]) / (n - k)
    between = (k / n) * (1 - k / n) * (mean_low - mean_high) ** 2  # (n - 1,)
    between[ordered[1:] == ordered[:-1]] = -1.0  # no cut between equal values
    return float(ordered[int(torch.argmax(between))])


def outlier_mask(values: torch.Tensor, low_q: float, high_q: float, iqr_factor: float) -> torch.Tensor:
    """Channels above both the IQR fence and Otsu's threshold (see module docstring)."""
    q_low, q_high = torch.quantile(values.double(), torch.tensor([low_q, high_q], dtype=torch.float64))
    fence = float(q_high + iqr_factor * (q_high - q_low))
    return (values > fence) & (values > otsu_threshold(values))


def side_scales(values: torch.Tensor, params: dict) -> torch.Tensor:
    """Scales from one side's per-channel extremes: ``(v / max non-outlier v)^power`` for outliers, else 1."""
    outliers = outlier_mask(values, params["low_quantile"], params["high_quantile"], params["iqr_factor"])
    ones = torch.ones_like(values)
    if not outliers.any() or outliers.all():
        return ones
    normal_max = values[~outliers].max().clamp(min=_MIN_VALUE)
    return torch.where(outliers, (values / normal_max).pow(float(params["power"])), ones)


def cbq_transform(ctx: PairContext) -> PairTransform:
    positive = side_scales(ctx.stats.cmax.clamp(min=0), ctx.params)
    negative = side_scales((-ctx.stats.cmin).clamp(min=0), ctx.params)
    scales = torch.maximum(positive, negative)
    return PairTransform(scales, detail={"outlier_channels": float((scales != 1).sum())})


METHOD = AntiOutlierMethod(
    name="m5",
    description="CBQ: IQR-fence + Otsu outlier channels scaled by (cmax / max normal cmax)^0.7",
    pairs=NORM_PAIRS,
    transform_fn=cbq_transform,
    default_params={"power": 0.7, "iqr_factor": 1.5, "low_quantile": 0.2, "high_quantile": 0.8},
    param_rules={
        "power": ParamRule(0.0, 1.0),
        "iqr_factor": ParamRule(0.0, 100.0),
        "low_quantile": ParamRule(0.0, 1.0),
        "high_quantile": ParamRule(0.0, 1.0),
    },
)
