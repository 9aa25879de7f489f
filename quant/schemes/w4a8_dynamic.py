"""W4A8_DYNAMIC: two-stage int4 weights, int8 activations quantized per token at run time.

Weights (SPEC §4 [exact], :func:`quant.quantizers.quantize_weight_two_stage`): stage 1 symmetric
per-channel int8 with max 119 (``weight_scale``, ``weight_offset`` (n, 1)); stage 2 symmetric
per-group int4 of those integers with integer scales (``weight_scale_second`` float32
(n, k / group_size), ``weight_offset_second`` int64 zeros of the same shape). The int4 values
are packed two per byte along the rows: ``weight`` int8 (n / 2, k).

``scale_bias`` float32 (n, C) = ``8 · bf16(s1) · Σ_{k∈chunk c} q4 · s2`` over C equal column
chunks [exact]: C = 1 for q/k/v/gate/up; C = 16 for the row-parallel layers (observed for
o_proj at k = 128; down_proj and other widths are not observed — 16 chunks lets any tp_size
of 1–16 slice its share). It serves the Ascend int4 kernel and plays no part in this
fake-quant forward.

Activations: symmetric per token (``scale = max|x_token| / 127``), as the reference sets
``a_sym`` for W4A8. ``y = fq(x) · (q4 · scale_second · scale)ᵀ (+ bias)``.
"""

from __future__ import annotations

import torch
from torch import nn

from quant.qlinear import QuantLinear
from quant.quant_types import QuantType
from quant.quantizers import dequantize_grouped, fake_quantize_per_token, quantize_weight_two_stage, scale_bias
from quant.schemes.packing import pack_int4, unpack_int4
from quant.schemes.spec import LinearSpec

ROW_PARALLEL_SCALE_BIAS_CHUNKS = 16


class W4A8DynamicLinear(QuantLinear):
    """Two-stage int4 weights (packed) and per-token symmetric int8 activations."""

    def __init__(
        self, in_features: int, out_features: int, groups: int, chunks: int = 1, has_bias: bool = False
    ) -> None:
        super().__init__(in_features, out_features, QuantType.W4A8_DYNAMIC)
        n, k = out_features, in_features
        self.group_size = k // groups
        self.register_buffer("weight", torch.zeros(n // 2, k, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(n, 1))
        self.register_buffer("weight_offset", torch.zeros(n, 1))
        self.register_buffer("weight_scale_second", torch.ones(n, groups))
        self.register_buffer("weight_offset_second", torch.zeros(n, groups, dtype=torch.int64))
        self.register_buffer("scale_bias", torch.zeros(n, chunks))
        if has_bias:
            self.register_buffer("bias", torch.zeros(n))

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: LinearSpec) -> W4A8DynamicLinear:
        two_stage = quantize_weight_two_stage(linear.weight, spec.group_size)
        groups = two_stage.scale_second.shape[1]
        has_bias = linear.bias is not None
        chunks = ROW_PARALLEL_SCALE_BIAS_CHUNKS if spec.row_parallel else 1
        layer = cls(linear.in_features, linear.out_features, groups, chunks, has_bias)
        layer.to(linear.weight.device)
        layer.weight.copy_(pack_int4(two_stage.q4))
        layer.weight_scale.copy_(two_stage.scale)
        layer.weight_scale_second.copy_(two_stage.scale_second)
        layer.scale_bias.copy_(scale_bias(two_stage, chunks))
        if has_bias:
            layer.bias.copy_(linear.bias.detach().float())
        layer.refresh()
        return layer

    @classmethod
    def from_saved(cls, linear: nn.Linear, _quant_type: str, tensors: dict[str, torch.Tensor]) -> W4A8DynamicLinear:
        """An empty module shaped like the saved tensors (``tensors`` keyed by suffix)."""
        groups = tensors["weight_scale_second"].shape[1]
        chunks = tensors["scale_bias"].shape[1]
        return cls(linear.in_features, linear.out_features, groups, chunks, "bias" in tensors)

    def int4_values(self) -> torch.Tensor:
        """The unpacked int4 weight values, int8 (n, k)."""
        return unpack_int4(self.weight)

    def dequantized_weight(self) -> torch.Tensor:
        second = dequantize_grouped(self.int4_values(), self.weight_scale_second, self.weight_offset_second)
        return (second - self.weight_offset) * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = fake_quantize_per_token(x, symmetric=True)
        return self.float_linear(x_q, getattr(self, "bias", None)).to(x.dtype)
