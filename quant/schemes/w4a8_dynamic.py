"""W4A8_DYNAMIC: two-stage int4 weights, int8 activations quantized per token at run time.

Weights (SPEC §4 [exact]): stage 1 symmetric per-channel int8 (``weight_scale``,
``weight_offset`` (n, 1)); stage 2 symmetric per-group int4 of those integers
(``weight_scale_second`` (n, k / group_size), ``weight_offset_second`` int64 zeros of the same
shape). The int4 values are packed two per byte along the rows: ``weight`` int8 (n / 2, k).
``scale_bias`` float32 (n, S) = 8 · Σ_k of the dequantized weight, summed over each of the S
input shards of a row-parallel layer under ``tp_size`` (S = 1 otherwise); it serves the
Ascend int4 kernel and plays no part in this fake-quant forward.

Activations: symmetric per token (``scale = max|x_token| / 127``), as the reference sets
``a_sym`` for W4A8. ``y = fq(x) · (q4 · scale_second · scale)ᵀ (+ bias)``.
"""

from __future__ import annotations

import torch
from torch import nn

from quant.qlinear import QuantLinear
from quant.quantizers import dequantize_grouped, fake_quantize_per_token, quantize_weight_two_stage
from quant.schemes.packing import pack_int4, unpack_int4
from quant.schemes.spec import LinearSpec

SCALE_BIAS_FACTOR = 8


class W4A8DynamicLinear(QuantLinear):
    """Two-stage int4 weights (packed) and per-token symmetric int8 activations."""

    def __init__(
        self, in_features: int, out_features: int, groups: int, shards: int = 1, has_bias: bool = False
    ) -> None:
        super().__init__(in_features, out_features, "W4A8_DYNAMIC")
        n, k = out_features, in_features
        self.group_size = k // groups
        self.register_buffer("weight", torch.zeros(n // 2, k, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(n, 1))
        self.register_buffer("weight_offset", torch.zeros(n, 1))
        self.register_buffer("weight_scale_second", torch.ones(n, groups))
        self.register_buffer("weight_offset_second", torch.zeros(n, groups, dtype=torch.int64))
        self.register_buffer("scale_bias", torch.zeros(n, shards))
        if has_bias:
            self.register_buffer("bias", torch.zeros(n))

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: LinearSpec) -> W4A8DynamicLinear:
        two_stage = quantize_weight_two_stage(linear.weight, spec.group_size)
        groups = two_stage.scale_second.shape[1]
        has_bias = linear.bias is not None
        layer = cls(linear.in_features, linear.out_features, groups, spec.act_shards, has_bias)
        layer.to(linear.weight.device)
        layer.weight.copy_(pack_int4(two_stage.q4))
        layer.weight_scale.copy_(two_stage.scale)
        layer.weight_scale_second.copy_(two_stage.scale_second)
        n, s = linear.out_features, spec.act_shards
        deq = two_stage.dequantize()  # (n, k)
        layer.scale_bias.copy_(SCALE_BIAS_FACTOR * deq.view(n, s, -1).sum(dim=2))  # (n, S, k/S) -> (n, S)
        if has_bias:
            layer.bias.copy_(linear.bias.detach().float())
        layer.refresh()
        return layer

    @classmethod
    def from_saved(cls, linear: nn.Linear, _quant_type: str, tensors: dict[str, torch.Tensor]) -> W4A8DynamicLinear:
        """An empty module shaped like the saved tensors (``tensors`` keyed by suffix)."""
        groups = tensors["weight_scale_second"].shape[1]
        shards = tensors["scale_bias"].shape[1]
        return cls(linear.in_features, linear.out_features, groups, shards, "bias" in tensors)

    def int4_values(self) -> torch.Tensor:
        """The unpacked int4 weight values, int8 (n, k)."""
        return unpack_int4(self.weight)

    def dequantized_weight(self) -> torch.Tensor:
        second = dequantize_grouped(self.int4_values(), self.weight_scale_second, self.weight_offset_second)
        return (second - self.weight_offset) * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = fake_quantize_per_token(x, symmetric=True)
        return self.float_linear(x_q, getattr(self, "bias", None)).to(x.dtype)
