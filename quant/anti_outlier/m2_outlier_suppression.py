"""m2 outlier suppression+ [partial]: shift every channel to centre it, scale only outlier channels.

Per input channel j (SPEC §3): the shift is ``z_j = (cmax_j + cmin_j) / 2``, which leaves the
shifted channel within ``±thres_j`` with ``thres_j = cmax_j − z_j``. A channel is an outlier
when, in any batch, one of its values lies more than ``sigma`` (7) standard deviations from
the batch mean (mean and std over the whole batch tensor); outliers get
``s_j = sqrt(thres_j / wmax_j)``, every other channel ``s_j = 1``. The norm's output becomes
``(y − z) / s``: its bias turns non-zero and the next linears gain the bias ``W·z``.

Not reproduced: the reference adds a few more channels by a range search.
"""

from __future__ import annotations

import torch

from quant.anti_outlier.base import AntiOutlierMethod, PairContext, PairTransform, ParamRule, migration_scales
from quant.arch import NORM_PAIRS


def outlier_suppression_transform(ctx: PairContext) -> PairTransform:
    stats = ctx.stats
    shift = (stats.cmax + stats.cmin) / 2
    thres = stats.cmax - shift  # = (cmax − cmin) / 2 >= 0
    outliers = stats.outlier_sigmas > float(ctx.params["sigma"])
    smooth = migration_scales(thres, ctx.weight_column_absmax(), 0.5, 0.5)
    scales = torch.where(outliers, smooth, torch.ones_like(smooth))
    return PairTransform(scales, shift=shift, detail={"outlier_channels": float(outliers.sum())})


METHOD = AntiOutlierMethod(
    name="m2",
    description="Outlier suppression+: channel-wise shift, then SmoothQuant scaling of outlier channels",
    pairs=NORM_PAIRS,
    transform_fn=outlier_suppression_transform,
    default_params={"sigma": 7.0},
    param_rules={"sigma": ParamRule(0.0, 1e6)},
)
