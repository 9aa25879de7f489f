"""Anti-outlier methods behind one registry, selected by the reference's names (m1..m6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.anti_outlier.base import (
    INPUTS_ALL,
    INPUTS_NONE,
    AntiOutlierMethod,
    PairContext,
    add_zero_norm_biases,
    apply_pair_transform,
    pair_contexts,
)
from quant.anti_outlier.m1_smoothquant import METHOD as M1
from quant.anti_outlier.m2_outlier_suppression import METHOD as M2
from quant.anti_outlier.m3_awq import METHOD as M3
from quant.anti_outlier.m4_smooth_optimisation import METHOD as M4
from quant.anti_outlier.m5_cbq import METHOD as M5
from quant.anti_outlier.m6_flex_smooth import METHOD as M6
from quant.calib import Batch
from quant.errors import QuantInputError
from quant.layerwise import iterate_layer_inputs
from quant.observe import InputStats

REGISTRY: dict[str, AntiOutlierMethod] = {m.name: m for m in (M1, M2, M3, M4, M5, M6)}


@dataclass
class AntiOutlierReport:
    """What a method did, per pair (``model.layers.i.<prev>``): scales, shifts, search results."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # per prev output channel
    shifts: dict[str, torch.Tensor] = field(default_factory=dict)
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    input_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # per smoothed linear: its column scales


def get_method(name: str) -> AntiOutlierMethod:
    if name not in REGISTRY:
        raise QuantInputError("anti_method", f"invalid value {name!r}; valid values: none, {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_anti_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The resolved settings of method ``name``; raises QuantInputError for bad ones."""
    if name == "none":
        if params:
            raise QuantInputError("anti_params", f"anti_method none takes no settings, got {sorted(params)}")
        return {}
    return get_method(name).resolve_params(params)


def needs_statistics(name: str) -> bool:
    """Whether method ``name`` reads the one-pass input statistics (``observe_linear_inputs``)."""
    return name != "none" and get_method(name).needs_stats


def apply_anti_outlier(
    model: nn.Module,
    name: str,
    stats: Mapping[str, InputStats] | None,
    params: Mapping[str, Any] | None = None,
    *,
    batches: Sequence[Batch] | None = None,
    weight_bits: int = 8,
    weight_symmetric: bool = True,
) -> AntiOutlierReport:
    """Transform the float model in place with method ``name``; the float function is unchanged.

    ``stats``: the float model's input statistics (methods with ``needs_stats``). ``batches``:
    the anti-outlier data, for methods that search on raw inputs (m3: first batch, m6: all);
    those walk the model one decoder layer at a time, holding one layer's pair inputs only.
    ``weight_bits`` / ``weight_symmetric``: the recipe's weight quantizer (m3's error).
    """
    resolved = check_anti_params(name, params)
    if name == "none":
        return AntiOutlierReport("none")
    method = get_method(name)
    report = AntiOutlierReport(name, resolved)
    contexts = pair_contexts(
        model, method.pairs, stats if method.needs_stats else None, resolved, weight_bits, weight_symmetric
    )
    if method.inputs == INPUTS_NONE:
        for ctx in contexts:
            _apply(ctx, method, report)
    else:
        if not batches:
            raise ValueError(f"anti-outlier method {name} needs calibration batches")
        by_layer: dict[int, list[PairContext]] = {}
        for ctx in contexts:
            by_layer.setdefault(ctx.layer_index, []).append(ctx)
        used = list(batches) if method.inputs == INPUTS_ALL else list(batches[:1])

        def members_of(i: int, _layer: nn.Module) -> dict[str, nn.Module]:
            return {ctx.first_next_name: ctx.nexts[0] for ctx in by_layer.get(i, [])}

        for i, inputs in iterate_layer_inputs(model, used, members_of):
            for ctx in by_layer.get(i, []):
                ctx.inputs = torch.cat(inputs[ctx.first_next_name])  # (tokens, in)
                _apply(ctx, method, report)
                ctx.inputs = None
    if method.adds_norm_bias:
        add_zero_norm_biases(model)
    return report


def _apply(ctx: PairContext, method: AntiOutlierMethod, report: AntiOutlierReport) -> None:
    transform = method.transform_fn(ctx)
    s_prev = apply_pair_transform(ctx, transform)
    report.scales[ctx.name] = s_prev.detach().cpu()
    if transform.shift is not None:
        report.shifts[ctx.name] = transform.shift.detach().cpu()
    if transform.detail:
        report.details[ctx.name] = dict(transform.detail)
    s_next = ctx.to_next_channels(s_prev).detach().cpu()
    for n in ctx.pair.nexts:
        report.input_scales[f"model.layers.{ctx.layer_index}.{n}"] = s_next
