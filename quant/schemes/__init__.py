"""Every weight/activation scheme of the reference behind one registry keyed by quant type.

Each scheme is a :class:`~quant.qlinear.QuantLinear` subclass whose persistent buffers are
exactly its saved tensors (SPEC §7) and whose forward computes from them; it is built from a
float linear (``from_float``) when quantizing and from the saved tensor shapes
(``from_saved``) when reloading.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from quant.arch import get_module, set_module
from quant.config import GROUP_SIZES, QuantConfig
from quant.errors import QuantInputError
from quant.qlinear import QuantLinear
from quant.quant_types import QuantType
from quant.quantizers import sqnr_db
from quant.schemes.dynamic import DynamicLinear
from quant.schemes.spec import LinearSpec, linear_spec
from quant.schemes.static import StaticActLinear, pdmix_phase
from quant.schemes.w4a8_dynamic import ROW_PARALLEL_SCALE_BIAS_CHUNKS, W4A8DynamicLinear
from quant.schemes.weight_only import WeightOnlyLinear

SCHEMES: dict[QuantType, type[QuantLinear]] = {
    QuantType.W8A16: WeightOnlyLinear,
    QuantType.W4A16: WeightOnlyLinear,
    QuantType.W8A8: StaticActLinear,
    QuantType.W8A8S: StaticActLinear,
    QuantType.W8A8_MIX: StaticActLinear,
    QuantType.W8A8_DYNAMIC: DynamicLinear,
    QuantType.W4A8_DYNAMIC: W4A8DynamicLinear,
}

__all__ = [
    "SCHEMES",
    "DynamicLinear",
    "LinearSpec",
    "StaticActLinear",
    "W4A8DynamicLinear",
    "WeightOnlyLinear",
    "check_shapes",
    "linear_spec",
    "module_from_saved",
    "pdmix_phase",
    "quantize_linear",
    "quantize_linears",
]


def check_shapes(model: nn.Module, names: Sequence[str], cfg: QuantConfig) -> None:
    """Stop before any work when the model's shapes do not fit the scheme (group_size, tp_size, packing)."""
    for name in names:
        linear = get_module(model, name)
        spec = linear_spec(cfg, name)
        k, n = linear.in_features, linear.out_features
        if spec.group_size is not None and k % spec.group_size:
            valid = [g for g in GROUP_SIZES if all(get_module(model, m).in_features % g == 0 for m in names)]
            raise QuantInputError(
                "group_size",
                f"{spec.group_size} does not divide in_features {k} of {name}; "
                f"valid for this model: {', '.join(map(str, valid)) or 'none'}",
            )
        if spec.act_shards > 1 and k % spec.act_shards:
            raise QuantInputError(
                "tp_size", f"{spec.act_shards} does not divide in_features {k} of row-parallel layer {name}"
            )
        if spec.quant_type == QuantType.W4A8_DYNAMIC and n % 2:
            raise QuantInputError("w_bit", f"4 (W4A8_DYNAMIC) packs pairs of rows; {name} has {n} output rows (odd)")
        if spec.quant_type == QuantType.W4A8_DYNAMIC and spec.row_parallel and k % ROW_PARALLEL_SCALE_BIAS_CHUNKS:
            raise QuantInputError(
                "w_bit",
                f"4 (W4A8_DYNAMIC) cuts a row-parallel layer's scale_bias into {ROW_PARALLEL_SCALE_BIAS_CHUNKS} "
                f"column chunks; in_features {k} of {name} is not divisible by it",
            )


def quantize_linear(linear: nn.Linear, cfg: QuantConfig, name: str) -> tuple[QuantLinear, float]:
    """The scheme module of linear ``name`` (its full name) under ``cfg``, and its weight's SQNR in dB."""
    spec = linear_spec(cfg, name)
    with torch.no_grad():
        module = SCHEMES[spec.quant_type].from_float(linear, spec)
        return module, sqnr_db(linear.weight, module.dequantized_weight())


def quantize_linears(model: nn.Module, names: Sequence[str], cfg: QuantConfig) -> dict[str, float]:
    """Replace each named linear by its scheme's module; returns each weight's SQNR in dB."""
    sqnr: dict[str, float] = {}
    for name in names:
        module, sqnr[name] = quantize_linear(get_module(model, name), cfg, name)
        set_module(model, name, module)
    return sqnr


def module_from_saved(quant_type: str, linear: nn.Linear, tensors: dict[str, torch.Tensor]) -> QuantLinear:
    """An empty module of ``quant_type`` shaped like its saved ``tensors`` (keyed by suffix)."""
    return SCHEMES[quant_type].from_saved(linear, quant_type, tensors)
