"""W8A16 / W4A16: integer weights, float activations.

Saved per linear: ``weight`` int8 (n, k), ``weight_scale`` and ``weight_offset`` float32
(n, 1) per channel or (n, k / group_size) per group, plus ``bias`` when the linear has one.
W4A16 weights are stored unpacked in int8, like the reference's low-bit W4A16 output.
Forward: ``y = x · ((W_int − offset) · scale)ᵀ (+ bias)``.
"""

from __future__ import annotations

import torch
from torch import nn

from quant.qlinear import QuantLinear
from quant.quantizers import dequantize_grouped
from quant.schemes.spec import LinearSpec


class WeightOnlyLinear(QuantLinear):
    """Per-channel, per-group or per-tensor integer weights; the input stays float."""

    def __init__(
        self, in_features: int, out_features: int, quant_type: str, groups: int = 1, has_bias: bool = False
    ) -> None:
        super().__init__(in_features, out_features, quant_type)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("weight_offset", torch.zeros(out_features, groups))
        if has_bias:
            self.register_buffer("bias", torch.zeros(out_features))
        self.group_size = in_features // groups if groups > 1 else None

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: LinearSpec) -> WeightOnlyLinear:
        qweight = spec.quantize_weight(linear.weight)
        layer = cls(linear.in_features, linear.out_features, spec.quant_type, qweight.groups, linear.bias is not None)
        return layer.fill_from_float(linear, qweight)

    @classmethod
    def from_saved(cls, linear: nn.Linear, quant_type: str, tensors: dict[str, torch.Tensor]) -> WeightOnlyLinear:
        """An empty module shaped like the saved tensors (``tensors`` keyed by suffix)."""
        groups = tensors["weight_scale"].shape[1]
        return cls(linear.in_features, linear.out_features, quant_type, groups, "bias" in tensors)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_grouped(self.weight, self.weight_scale, self.weight_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.float_linear(x, getattr(self, "bias", None))
