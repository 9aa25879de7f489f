"""W8A8_DYNAMIC: int8 per-channel weights, int8 activations quantized per token at run time.

Only weight tensors are saved (SPEC §4): ``weight`` int8 (n, k), ``weight_scale`` and
``weight_offset`` float32 (n, 1), plus ``bias`` when the linear has one. Each token's
activation range is its own min/max widened to include 0 (asymmetric, SPEC §4 [exact]):
``y = fq(x) · ((W_int − offset) · scale)ᵀ (+ bias)``, where ``fq`` quantizes and dequantizes.
"""

from __future__ import annotations

import torch
from torch import nn

from quant.int_matmul import dynamic_int8_linear, kernel_applies
from quant.qlinear import QuantLinear
from quant.quant_types import QuantType
from quant.quantizers import dequantize_grouped, fake_quantize_per_token
from quant.schemes.spec import LinearSpec


class DynamicLinear(QuantLinear):
    """Per-channel (or per-tensor) int8 weights and per-token asymmetric int8 activations."""

    def __init__(self, in_features: int, out_features: int, has_bias: bool = False) -> None:
        super().__init__(in_features, out_features, QuantType.W8A8_DYNAMIC)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, 1))
        self.register_buffer("weight_offset", torch.zeros(out_features, 1))
        if has_bias:
            self.register_buffer("bias", torch.zeros(out_features))

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: LinearSpec) -> DynamicLinear:
        qweight = spec.quantize_weight(linear.weight)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        return layer.fill_from_float(linear, qweight)

    @classmethod
    def from_saved(cls, linear: nn.Linear, _quant_type: str, tensors: dict[str, torch.Tensor]) -> DynamicLinear:
        """An empty module shaped like the saved tensors (``tensors`` keyed by suffix)."""
        return cls(linear.in_features, linear.out_features, "bias" in tensors)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_grouped(self.weight, self.weight_scale, self.weight_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = getattr(self, "bias", None)
        if kernel_applies(x, self.in_features, self.out_features, cpu=False):  # see quant.int_matmul: CUDA only
            return dynamic_int8_linear(x, self.weight, self.weight_scale, self.weight_offset, bias).to(x.dtype)
        return self.float_linear(fake_quantize_per_token(x), bias).to(x.dtype)
