"""The fake-quant linear: it holds exactly the tensors that are saved and computes from them.

Its persistent buffers are the reference's per-linear tensors (SPEC §7), so
``state_dict()`` of a quantized model is what gets written, and loading a saved file into
it reproduces the evaluated model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quant.quantizers import (
    QuantizedWeight,
    float_bits_as_int64,
    int64_bits_as_float,
    quantize_activation,
)

WEIGHT_ONLY_TYPES = ("W8A16",)
STATIC_ACT_TYPES = ("W8A8",)
SUPPORTED_TYPES = WEIGHT_ONLY_TYPES + STATIC_ACT_TYPES


class QuantLinear(nn.Module):
    """A linear layer in one of the reference's quantized formats.

    W8A8: ``y = deq_scale · (x_int · W_intᵀ + quant_bias)`` with
    ``x_int = clamp(round(x / input_scale + input_offset))``.
    W8A16: ``y = x · ((W_int − weight_offset) · weight_scale)ᵀ (+ bias)``.
    Before its activation parameters are set (calibration), a W8A8 layer runs on float inputs
    with its dequantized weight.
    """

    def __init__(self, in_features: int, out_features: int, quant_type: str, has_bias: bool = False) -> None:
        super().__init__()
        if quant_type not in SUPPORTED_TYPES:
            raise ValueError(f"quant_type must be one of {SUPPORTED_TYPES}, got {quant_type!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.quant_type = quant_type
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, 1))
        self.register_buffer("weight_offset", torch.zeros(out_features, 1))
        if quant_type in STATIC_ACT_TYPES:
            self.register_buffer("input_scale", torch.ones(1))
            self.register_buffer("input_offset", torch.zeros(1))
            self.register_buffer("quant_bias", torch.zeros(out_features, dtype=torch.int32))
            self.register_buffer("deq_scale", torch.zeros(out_features, dtype=torch.int64))
            self.float_bias: torch.Tensor | None = None  # used only while calibrating
        elif has_bias:
            self.register_buffer("bias", torch.zeros(out_features))
        self.activations_calibrated = False
        self.register_buffer("_matmul_weight", torch.empty(0), persistent=False)
        # W8A8 only: quant_bias and deq_scale as float32, so the forward fuses the bias into the matmul.
        self.register_buffer("_acc_bias", torch.empty(0), persistent=False)
        self.register_buffer("_out_scale", torch.empty(0), persistent=False)
        self.register_load_state_dict_post_hook(_after_load)

    @classmethod
    def from_float(cls, linear: nn.Linear, qweight: QuantizedWeight, quant_type: str) -> QuantLinear:
        """Build from a float linear and its already quantized weight."""
        layer = cls(linear.in_features, linear.out_features, quant_type, has_bias=linear.bias is not None)
        device = linear.weight.device
        layer.to(device)
        layer.weight.copy_(qweight.q)
        layer.weight_scale.copy_(qweight.scale)
        layer.weight_offset.copy_(qweight.offset)
        if linear.bias is not None:
            bias = linear.bias.detach().float()
            if quant_type in STATIC_ACT_TYPES:
                layer.float_bias = bias.clone()
            else:
                layer.bias.copy_(bias)
        layer.refresh()
        return layer

    def set_activation_params(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Fix the static input scale/offset and derive ``deq_scale`` and ``quant_bias`` (SPEC §7)."""
        device = self.weight.device
        self.input_scale.copy_(scale.to(device))
        self.input_offset.copy_(offset.to(device))
        deq = (self.input_scale * self.weight_scale.squeeze(1)).float()  # (out,)
        w_row_sum = self.weight.to(torch.float64).sum(dim=1)  # (out,) exact integer sums
        bias = self.float_bias if self.float_bias is not None else torch.zeros_like(deq)
        quant_bias = torch.round(bias.double() / deq.double() - w_row_sum * float(self.input_offset))
        self.quant_bias.copy_(quant_bias.to(torch.int32))
        self.deq_scale.copy_(float_bits_as_int64(deq))
        self.activations_calibrated = True
        self.refresh()

    def dequantized_weight(self) -> torch.Tensor:
        """``(W_int − weight_offset) · weight_scale`` in float32, shape (out, in)."""
        return (self.weight.float() - self.weight_offset) * self.weight_scale

    def refresh(self) -> None:
        """Rebuild the float matmul operand from the integer buffers (after any change)."""
        if self.quant_type in STATIC_ACT_TYPES and self.activations_calibrated:
            self._matmul_weight = self.weight.float()
            self._acc_bias = self.quant_bias.float()
            self._out_scale = int64_bits_as_float(self.deq_scale)
        else:
            self._matmul_weight = self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_type in STATIC_ACT_TYPES:
            if not self.activations_calibrated:
                return F.linear(x.float(), self._matmul_weight, self.float_bias).to(x.dtype)
            x_int = quantize_activation(x.float(), self.input_scale, self.input_offset)
            # Integer-valued float matmul; float32 accumulation keeps fp16 models from overflowing.
            acc = F.linear(x_int, self._matmul_weight, self._acc_bias)  # x_int·W_intᵀ + quant_bias
            return acc.mul_(self._out_scale).to(x.dtype)
        bias = getattr(self, "bias", None)
        weight = self._matmul_weight.to(x.dtype)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quant_type={self.quant_type}"


def _after_load(module: QuantLinear, _incompatible: object) -> None:
    if module.quant_type in STATIC_ACT_TYPES:
        module.activations_calibrated = True
    module.refresh()
