"""The base of every quantized linear: it holds exactly the tensors that are saved.

A subclass per scheme family (``quant/schemes/``) registers the reference's per-linear
tensors (SPEC §7) as persistent buffers, so ``state_dict()`` of a quantized model is what
gets written, and loading a saved file into freshly built modules reproduces the evaluated
model. The module holds its weight at integer size, as stored (int8, or int4 packed two per
byte): a forward multiplies the integers directly where an integer kernel applies
(:mod:`quant.int_matmul`) and otherwise dequantizes the weight for that call only, so an
evaluated model never keeps a float32 copy of any quantized weight.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from quant.quant_types import DYNAMIC_TYPES, STATIC_ACT_TYPES, WEIGHT_ONLY_TYPES
from quant.quantizers import QuantizedWeight

# STATIC_ACT_TYPES: activation parameters fixed by calibration (quant/running_pass.py).
SUPPORTED_TYPES = WEIGHT_ONLY_TYPES + STATIC_ACT_TYPES + DYNAMIC_TYPES


class QuantLinear(nn.Module, abc.ABC):
    """A linear layer in one of the reference's quantized formats (see ``quant.schemes``).

    Subclasses implement :meth:`dequantized_weight` and ``forward``; ``weight_scale`` is
    always available (a buffer, saved or not) for reports.
    """

    quant_type: str
    group_size: int | None = None  # set by per-group schemes; written to the description

    def __init__(self, in_features: int, out_features: int, quant_type: str) -> None:
        super().__init__()
        if quant_type not in SUPPORTED_TYPES:
            raise ValueError(f"quant_type must be one of {SUPPORTED_TYPES}, got {quant_type!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.quant_type = quant_type
        self.register_load_state_dict_post_hook(_after_load)

    @abc.abstractmethod
    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this layer multiplies by, float32 (out, in)."""

    def fill_from_float(self, linear: nn.Linear, qweight: QuantizedWeight) -> QuantLinear:
        """Copy a quantized weight (and the float layer's bias) into this freshly built module."""
        self.to(linear.weight.device)
        self.weight.copy_(qweight.q)
        self.weight_scale.copy_(qweight.scale)
        self.weight_offset.copy_(qweight.offset)
        if linear.bias is not None:
            self.bias.copy_(linear.bias.detach().float())
        self.refresh()
        return self

    def refresh(self) -> None:
        """Rebuild the small per-channel state derived from the buffers (after any change to them);
        subclasses extend."""

    def matmul_weight(self) -> torch.Tensor:
        """The float32 dequantized weight (out, in) for one call; nothing keeps it afterwards."""
        return self.dequantized_weight()

    def after_load(self) -> None:
        """Derive non-saved state from the loaded buffers; subclasses extend."""
        self.refresh()

    def float_linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x · Wᵀ (+ bias)`` with the weight dequantized for this call, computed in float32."""
        y = F.linear(x.float(), self.matmul_weight(), None if bias is None else bias.float())
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quant_type={self.quant_type}"


def _after_load(module: QuantLinear, _incompatible: object) -> None:
    module.after_load()
