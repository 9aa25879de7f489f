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
    PairTransform,
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
from quant.arch import layer_name
from quant.calib_data import Batch
from quant.errors import QuantInputError
from quant.input_stats import InputStats
from quant.layerwise import iterate_layer_inputs

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
    # per pair, the transform as chosen (what :func:`reapply_layer` applies again to the float layer)
    transforms: dict[str, PairTransform] = field(default_factory=dict)


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
    if method.needs_stats and stats is None:
        raise ValueError(f"anti-outlier method {name} needs the input statistics (observe_linear_inputs)")
    report = AntiOutlierReport(name, resolved)
    contexts = pair_contexts(
        model, method.pairs, stats if method.needs_stats else None, resolved, weight_bits, weight_symmetric
    )
    by_layer: dict[int, list[PairContext]] = {}
    for ctx in contexts:
        by_layer.setdefault(ctx.layer_index, []).append(ctx)
    if method.inputs == INPUTS_NONE:
        for layer_contexts in by_layer.values():
            smooth_layer(layer_contexts, method, report)
    else:
        if not batches:
            raise ValueError(f"anti-outlier method {name} needs calibration batches")

        def members_of(i: int, _layer: nn.Module) -> dict[str, nn.Module]:
            return searched_members(by_layer.get(i, []))

        for i, inputs in iterate_layer_inputs(model, method_inputs_batches(name, batches), members_of):
            smooth_layer(by_layer.get(i, []), method, report, inputs)
    if method.adds_norm_bias:
        add_zero_norm_biases(model)
    return report


def method_inputs_batches(name: str, batches: Sequence[Batch]) -> list[Batch]:
    """The anti-outlier batches whose raw pair inputs method ``name`` searches on (none, first, all)."""
    inputs = get_method(name).inputs if name != "none" else INPUTS_NONE
    return [] if inputs == INPUTS_NONE else list(batches) if inputs == INPUTS_ALL else list(batches[:1])


def searched_members(contexts: Sequence[PairContext]) -> dict[str, nn.Module]:
    """The modules whose raw inputs a searching method needs: each pair's first next linear."""
    return {ctx.first_next_name: ctx.nexts[0] for ctx in contexts}


def smooth_layer(
    contexts: Sequence[PairContext],
    method: AntiOutlierMethod,
    report: AntiOutlierReport,
    inputs: Mapping[str, Sequence[torch.Tensor]] | None = None,
) -> None:
    """Transform one decoder layer's pairs in order, recording each transform in ``report``.

    ``inputs``: per first next linear, its raw inputs (tokens, in) per batch of
    :func:`method_inputs_batches` (searching methods only). Norm biases are not added here.
    """
    for ctx in contexts:
        if method.inputs != INPUTS_NONE:
            ctx.inputs = torch.cat(list(inputs[ctx.first_next_name]))  # (tokens, in)
        _apply(ctx, method, report)
        ctx.inputs = None


def reapply_layer(contexts: Sequence[PairContext], report: AntiOutlierReport) -> None:
    """Apply the transforms ``report`` recorded for these pairs again, to the same float layer read
    anew: the same weights as after :func:`smooth_layer`, bit for bit (norm biases not added)."""
    for ctx in contexts:
        apply_pair_transform(ctx, report.transforms[ctx.name])


def _apply(ctx: PairContext, method: AntiOutlierMethod, report: AntiOutlierReport) -> None:
    transform = method.transform_fn(ctx)
    report.transforms[ctx.name] = transform
    s_prev = apply_pair_transform(ctx, transform)
    report.scales[ctx.name] = s_prev.detach().cpu()
    if transform.shift is not None:
        report.shifts[ctx.name] = transform.shift.detach().cpu()
    if transform.detail:
        report.details[ctx.name] = dict(transform.detail)
    s_next = ctx.to_next_channels(s_prev).detach().cpu()
    for n in ctx.pair.nexts:
        report.input_scales[layer_name(ctx.layer_index, n)] = s_next
