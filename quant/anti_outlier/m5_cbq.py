"""m5 CBQ [exact]: scale only the outlier channels of each side of the input.

Per side (SPEC §3; the channel selection as the reference's own source states it): the positive
side judges the channel maxima ``cmax_j``, the negative side the channel minima ``cmin_j``.

1. Coarse cut, an IQR fence over the channels (20th / 80th percentiles, linear interpolation):
   positive candidates ``cmax > q80 + 1.5·(q80 − q20)``, negative ``cmin < q20 − 1.5·(q80 − q20)``.
2. Fine cut, when there are two candidates or more: the candidates are sorted from the most
   extreme inwards and split into an outer part (the outliers) and an inner part; the split
   maximises ``gap − var(inner)``, with ``gap`` the distance between the innermost outlier and
   the outermost inner value and ``var`` the unbiased variance (0 for one value). Ties: see
   :func:`split_gap_minus_spread`. The outliers are the channels beyond the outermost inner value (with fewer than
   two candidates: beyond the fence).
3. Outliers get ``(v_j / M)^0.7`` with M the most extreme non-outlier value of the side (max
   cmax, resp. min cmin), the others 1; the scale is the max of both sides (the positive side
   alone when M of the negative side is 0); a zero scale becomes 1.
"""

from __future__ import annotations

import torch

from quant.anti_outlier.base import AntiOutlierMethod, PairContext, PairTransform, ParamRule
from quant.arch import NORM_PAIRS


def split_gap_minus_spread(extremes: torch.Tensor, fewer_first: bool = True) -> int:
    """How many of ``extremes`` (sorted from the most extreme inwards, at least 2) are outliers.

    The split k (outer = the first k, inner = the rest, k = 1 … n−1) maximising
    ``|outer[k−1] − inner[0]| − var(inner)``. Of equal maxima the first in search order wins:
    the reference searches the positive side from few outliers up and the negative side from
    many down (``fewer_first``).
    """
    n = extremes.numel()
    best_k, best = 1, None
    for k in range(1, n) if fewer_first else range(n - 1, 0, -1):
        inner = extremes[k:]
        spread = torch.var(inner) if inner.numel() > 1 else torch.zeros(())
        metric = (extremes[k - 1] - inner[0]).abs() - spread
        if best is None or metric > best:
            best_k, best = k, metric
    return best_k


def side_outliers(values: torch.Tensor, positive: bool, params: dict) -> torch.Tensor:
    """The outlier channels of one side: ``values`` are cmax (positive) or cmin (negative)."""
    q_low, q_high = torch.quantile(
        values.float(), torch.tensor([params["low_quantile"], params["high_quantile"]], dtype=torch.float32)
    )
    iqr = q_high - q_low
    fence = q_high + params["iqr_factor"] * iqr if positive else q_low - params["iqr_factor"] * iqr
    beyond = values > fence if positive else values < fence
    if int(beyond.sum()) > 1:
        extremes = values[beyond].sort(descending=positive).values  # most extreme first
        k = split_gap_minus_spread(extremes, fewer_first=positive)
        fence = extremes[k]  # the outermost inner value
        beyond = values > fence if positive else values < fence
    return beyond


def cbq_scales(cmax: torch.Tensor, cmin: torch.Tensor, params: dict) -> torch.Tensor:
    """Per-channel scales from the channel extremes (module docstring, step 3)."""
    power = float(params["power"])
    pos_out = side_outliers(cmax, True, params)
    neg_out = side_outliers(cmin, False, params)
    ones = torch.ones_like(cmax, dtype=torch.float32)
    pos_ref = cmax[~pos_out].max()
    neg_ref = cmin[~neg_out].min()
    # The power runs on the outlier channels alone, as the reference's does: torch's vectorised
    # pow and its scalar tail can differ by an ulp, and an ulp in a scale moves later layers' ranges.
    pos, neg = ones.clone(), ones.clone()
    pos[pos_out] = (cmax.float()[pos_out] / pos_ref).pow(power)
    neg[neg_out] = (cmin.float()[neg_out] / neg_ref).pow(power)
    scales = torch.maximum(pos, neg) if neg_ref != 0 else pos
    return torch.where(scales == 0, ones, scales)


def cbq_transform(ctx: PairContext) -> PairTransform:
    scales = cbq_scales(ctx.stats.cmax, ctx.stats.cmin, ctx.params)
    return PairTransform(scales, detail={"outlier_channels": float((scales != 1).sum())})


METHOD = AntiOutlierMethod(
    name="m5",
    description="CBQ: IQR-fenced, gap-split outlier channels scaled by (extreme / most extreme normal)^0.7",
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
