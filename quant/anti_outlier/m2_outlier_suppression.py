"""m2 outlier suppression+ [partial]: SmoothQuant-like scaling of the outlier channels only.

Per input channel j (SPEC §3): ``thres_j = cmax_j − (cmax_j + cmin_j)/2`` (half the channel's
range, the extreme of the channel once centred); selected channels get
``s_j = sqrt(thres_j / wmax_j)`` [exact to 2e-7], every other channel ``s_j = 1``. The centring
shift ``(cmax + cmin)/2`` is NOT applied [exact]: no norm bias turns non-zero, no linear gets a
bias, so ``quant_bias = −Σ W_int·input_offset`` as for every other method.

Which channels are selected is the part not reproduced: the reference searches a per-pair
threshold t (selected ⟺ thres_j > t) whose criterion is compiled and unpublished. Here a
channel is selected when, in some anti-outlier batch, one of its values lies more than
``sigma`` (7) standard deviations from the batch mean (mean and std over the whole batch
tensor) — the 7-sigma mask the reference's statistics also record. docs/quantizer.md gives the
measured distance to the reference.
"""

from __future__ import annotations

import torch

from quant.anti_outlier.base import AntiOutlierMethod, PairContext, PairTransform, ParamRule, migration_scales
from quant.arch import NORM_PAIRS


def channel_thresholds(cmax: torch.Tensor, cmin: torch.Tensor) -> torch.Tensor:
    """``thres_j = cmax_j − (cmax_j + cmin_j)/2``: each channel's extreme once centred."""
    return cmax - (cmax + cmin) / 2


def outlier_suppression_transform(ctx: PairContext) -> PairTransform:
    stats = ctx.stats
    thres = channel_thresholds(stats.cmax, stats.cmin)
    outliers = stats.outlier_sigmas > float(ctx.params["sigma"])
    smooth = migration_scales(thres, ctx.weight_column_absmax(), 0.5, 0.5)
    scales = torch.where(outliers, smooth, torch.ones_like(smooth))
    return PairTransform(scales, detail={"outlier_channels": float(outliers.sum())})


METHOD = AntiOutlierMethod(
    name="m2",
    description="Outlier suppression+: SmoothQuant scaling sqrt(thres / wmax) of the outlier channels, no shift",
    pairs=NORM_PAIRS,
    transform_fn=outlier_suppression_transform,
    default_params={"sigma": 7.0},
    param_rules={"sigma": ParamRule(0.0, 1e6)},
)
