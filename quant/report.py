"""The per-layer report of a run: for every linear, what was measured and what was decided."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from quant.arch import get_module
from quant.input_stats import InputStats
from quant.quant_types import QuantType
from quant.running_pass import ActivationRange

STATUS_QUANTIZED, STATUS_FLOAT = "quantized", "float"


@dataclass
class LayerReport:
    """One linear's outcome: quantized or kept float (and why), its statistics, scales and error.

    ``range_param``: the disable_level score of its input (SPEC §5), after anti-outlier, on the
    first calibration batches. ``quantile_score``: the disable_threshold score (down_proj only),
    before anti-outlier on the anti-outlier data, when it was computed. ``smooth_scale_*``: the anti-outlier scales
    on its input columns. ``sqnr_db``: its output against the float linear's on the same
    calibration inputs (None for float layers; None in JSON when infinite).
    """

    name: str
    status: str  # "quantized" or "float"
    reason: str = ""
    quant_type: str = QuantType.FLOAT
    range_param: float | None = None
    quantile_score: float | None = None
    observer: str | None = None
    input_min: float | list[float] | None = None  # lists: one value per shard (tp_size)
    input_max: float | list[float] | None = None
    input_scale: float | list[float] | None = None
    input_offset: float | list[float] | None = None
    weight_scale_min: float | None = None
    weight_scale_max: float | None = None
    smooth_scale_min: float | None = None
    smooth_scale_max: float | None = None
    sqnr_db: float | None = None
    weight_sqnr_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def build_layer_report(
    model: nn.Module,
    name: str,
    float_layers: Mapping[str, str],
    stats: Mapping[str, InputStats],
    ranges: Mapping[str, ActivationRange],
    sqnr: Mapping[str, float],
    smooth_scales: Mapping[str, torch.Tensor],
    weight_sqnr: Mapping[str, float] | None = None,
    threshold_scores: Mapping[str, float | None] | None = None,
) -> LayerReport:
    """The report row of linear ``name`` from what the pipeline's steps returned."""
    observed = stats.get(name)
    report = LayerReport(
        name,
        STATUS_FLOAT if name in float_layers else STATUS_QUANTIZED,
        float_layers.get(name, ""),
        range_param=observed.range_param if observed else None,
        quantile_score=(threshold_scores or {}).get(name),
        sqnr_db=sqnr.get(name),
        weight_sqnr_db=(weight_sqnr or {}).get(name),
    )
    if name in smooth_scales:
        report.smooth_scale_min = float(smooth_scales[name].min())
        report.smooth_scale_max = float(smooth_scales[name].max())
    if report.status == STATUS_FLOAT:
        return report
    module = get_module(model, name)
    report.quant_type = module.quant_type
    report.weight_scale_min = float(module.weight_scale.min())
    report.weight_scale_max = float(module.weight_scale.max())
    if name in ranges:
        rng = ranges[name]
        report.observer, report.input_min, report.input_max = rng.observer, rng.xmin, rng.xmax
        report.input_scale, report.input_offset = rng.scale, rng.offset
    return report
