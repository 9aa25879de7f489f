"""Anti-outlier methods behind one registry, selected by the reference's names (m1..m6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.anti_outlier.base import (
    AntiOutlierMethod,
    add_zero_norm_biases,
    apply_pair_scales,
    pair_contexts,
)
from quant.anti_outlier.m1_smoothquant import METHOD as M1
from quant.errors import QuantInputError
from quant.observe import InputStats

REGISTRY: dict[str, AntiOutlierMethod] = {m.name: m for m in (M1,)}


@dataclass
class AntiOutlierReport:
    """What a method did: per pair (``layer.prev``) the scales it applied."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)


def get_method(name: str) -> AntiOutlierMethod:
    if name not in REGISTRY:
        raise QuantInputError("anti_method", f"invalid value {name!r}; valid values: none, {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve_params(method: AntiOutlierMethod, params: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults overridden by ``params``; unknown keys are rejected."""
    unknown = sorted(set(params) - set(method.default_params))
    if unknown:
        valid = ", ".join(method.default_params) or "none"
        raise QuantInputError("anti_params", f"{unknown[0]!r} is not a setting of {method.name}; valid: {valid}")
    return {**method.default_params, **params}


def apply_anti_outlier(
    model: nn.Module, name: str, stats: dict[str, InputStats], params: dict[str, Any] | None = None
) -> AntiOutlierReport:
    """Transform the float model in place with method ``name``; the float function is unchanged."""
    if name == "none":
        return AntiOutlierReport("none")
    method = get_method(name)
    resolved = resolve_params(method, params or {})
    report = AntiOutlierReport(name, resolved)
    for ctx in pair_contexts(model, method.pairs, stats, resolved):
        scales = method.scale_fn(ctx)
        apply_pair_scales(ctx, scales)
        report.scales[f"model.layers.{ctx.layer_index}.{ctx.pair.prev}"] = scales.detach().cpu()
    if method.adds_norm_bias:
        add_zero_norm_biases(model)
    return report
