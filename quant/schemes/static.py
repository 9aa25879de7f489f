"""W8A8, W8A8S and W8A8_MIX: int8 weights with static (calibrated) int8 activations.

Saved per linear (SPEC §7), with S = 1 except for row-parallel layers under ``tp_size`` = S:

| tensor | dtype, shape | types |
|---|---|---|
| weight | int8 (n, k) | all |
| weight_scale, weight_offset | float32 (n, 1) | W8A8, W8A8_MIX |
| input_scale, input_offset | float32 (S,) | all |
| quant_bias | int32 (S·n,) | all |
| deq_scale | int64 (S·n,), float32 bits of input_scale[s] · weight_scale | all |
| bias | float32 (n,), only if the linear has one | all |

With S shards, input columns ``s·k/S … (s+1)·k/S − 1`` form shard s (what rank s of a
row-parallel layer sees); entries ``s·n … (s+1)·n − 1`` of quant_bias / deq_scale belong
to shard s, and the float bias is folded into shard 0 only. Inference:
``y = Σ_s deq_scale_s · (x_int_s · W_int_sᵀ + quant_bias_s)``, ``x_int_s = x_s / input_scale_s +
input_offset_s`` (rounded, clamped to int8).

W8A8S weights hold outlier-protected 4-bit values (SPEC §4 "Sparse"); their ``weight_scale``
is not saved and is derived from ``deq_scale / input_scale`` after loading.
W8A8_MIX (PDMix) adds a prefill path: per-token dynamic activations with the dequantized
weight. Which path runs is the module's ``phase``: ``"auto"`` (default) treats a call with
more than one position per sequence (dim −2 of the input > 1) as prefill and a single-token
call as decode; ``"prefill"`` / ``"decode"`` force one path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from quant.int_matmul import dynamic_int8_linear, int8_matmul, kernel_applies
from quant.qlinear import QuantLinear
from quant.quant_types import QuantType
from quant.quantizers import (
    dequantize_grouped,
    fake_quantize_per_token,
    float_bits_as_int64,
    int64_bits_as_float,
    quantize_activation,
)
from quant.schemes.spec import LinearSpec

PHASES = ("auto", "prefill", "decode")


class StaticActLinear(QuantLinear):
    """int8 weights and per-tensor (per-shard) static int8 activations.

    Before its activation parameters are set (calibration), the layer runs on float inputs
    with its dequantized weight.
    """

    def __init__(
        self, in_features: int, out_features: int, quant_type: str, shards: int = 1, has_bias: bool = False
    ) -> None:
        super().__init__(in_features, out_features, quant_type)
        if in_features % shards:
            raise ValueError(f"in_features {in_features} is not divisible into {shards} shards")
        self.shards = shards
        self.pdmix = quant_type == QuantType.W8A8_MIX
        self.phase = "auto"
        n = out_features
        self.register_buffer("weight", torch.zeros(n, in_features, dtype=torch.int8))
        self.saves_weight_scale = quant_type != QuantType.W8A8S
        self.register_buffer("weight_scale", torch.ones(n, 1), persistent=self.saves_weight_scale)
        self.register_buffer("weight_offset", torch.zeros(n, 1), persistent=self.saves_weight_scale)
        self.register_buffer("input_scale", torch.ones(shards))
        self.register_buffer("input_offset", torch.zeros(shards))
        self.register_buffer("quant_bias", torch.zeros(shards * n, dtype=torch.int32))
        self.register_buffer("deq_scale", torch.zeros(shards * n, dtype=torch.int64))
        if has_bias:
            self.register_buffer("bias", torch.zeros(n))
        self.activations_calibrated = False
        self.register_buffer("_acc_bias", torch.empty(0), persistent=False)
        self.register_buffer("_out_scale", torch.empty(0), persistent=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: LinearSpec) -> StaticActLinear:
        qweight = spec.quantize_weight(linear.weight)
        layer = cls(linear.in_features, linear.out_features, spec.quant_type, spec.act_shards, linear.bias is not None)
        return layer.fill_from_float(linear, qweight)

    @classmethod
    def from_saved(cls, linear: nn.Linear, quant_type: str, tensors: dict[str, torch.Tensor]) -> StaticActLinear:
        """An empty module shaped like the saved tensors (``tensors`` keyed by suffix)."""
        shards = tensors["input_scale"].numel()
        return cls(linear.in_features, linear.out_features, quant_type, shards, "bias" in tensors)

    # -- calibration --------------------------------------------------------------------

    def set_activation_params(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Fix the static input scale/offset, one per shard, and derive ``deq_scale`` and ``quant_bias``.

        ``quant_bias_s = round(bias_s / deq_s − Σ_{k in shard s} W_int · input_offset_s)``,
        ``bias_0`` = the float bias, ``bias_s`` = 0 for the other shards.
        """
        device = self.weight.device
        self.input_scale.copy_(scale.reshape(-1).to(device))
        self.input_offset.copy_(offset.reshape(-1).to(device))
        n, s = self.out_features, self.shards
        deq = (self.input_scale.view(s, 1) * self.weight_scale.view(1, n)).float()  # (S, n)
        # Exact integer sums of each shard's weight columns: (n, S, k/S) summed -> (S, n).
        w_sums = self.weight.to(torch.float64).view(n, s, -1).sum(dim=2).T
        folded = torch.zeros(s, n, dtype=torch.float64, device=device)
        if hasattr(self, "bias"):
            folded[0] = self.bias.double()
        quant_bias = torch.round(folded / deq.double() - w_sums * self.input_offset.double().view(s, 1))
        self.quant_bias.copy_(quant_bias.reshape(-1).to(torch.int32))
        self.deq_scale.copy_(float_bits_as_int64(deq.reshape(-1)))
        self.activations_calibrated = True
        self.refresh()

    # -- state --------------------------------------------------------------------------

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_grouped(self.weight, self.weight_scale, self.weight_offset)

    def refresh(self) -> None:
        super().refresh()
        # quant_bias and deq_scale as float32 (S, n): the float path fuses the bias into the matmul.
        self._acc_bias = self.quant_bias.float().view(self.shards, self.out_features)
        self._out_scale = int64_bits_as_float(self.deq_scale).view(self.shards, self.out_features)

    def shard_weight(self, shard: int) -> torch.Tensor:
        """The int8 weight columns of input shard ``shard`` (n, k/S), contiguous."""
        n, s = self.out_features, self.shards
        return self.weight if s == 1 else self.weight.view(n, s, -1)[:, shard].contiguous()  # (n, k) -> (n, k/S)

    def _integer_sums(self, x_int: torch.Tensor, shard: int) -> torch.Tensor:
        """``x_int_s · W_int_sᵀ + quant_bias_s`` as float32 (..., n): exact int32 sums where the
        integer kernel applies, else a float32 matmul of the integer values."""
        weight = self.shard_weight(shard)
        if kernel_applies(x_int, weight.shape[1], self.out_features):
            n = self.out_features
            return (int8_matmul(x_int, weight) + self.quant_bias.view(self.shards, n)[shard]).float()
        # float32 accumulation keeps fp16 models from overflowing.
        return F.linear(x_int, weight.float(), self._acc_bias[shard])

    def after_load(self) -> None:
        self.activations_calibrated = True
        if not self.saves_weight_scale:
            # W8A8S saves no weight_scale: deq_scale / input_scale of shard 0 gives it back.
            deq = int64_bits_as_float(self.deq_scale[: self.out_features])
            self.weight_scale.copy_((deq / self.input_scale[0]).view(-1, 1))
        super().after_load()

    # -- forward ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.activations_calibrated:
            return self.float_linear(x, getattr(self, "bias", None))
        if self.pdmix and self._is_prefill(x):
            return self.dynamic_forward(x)
        return self.static_forward(x)

    def dynamic_forward(self, x: torch.Tensor) -> torch.Tensor:
        """PDMix prefill: per-token dynamic activations with the dequantized weight (integer kernel on CUDA)."""
        bias = getattr(self, "bias", None)
        if kernel_applies(x, self.in_features, self.out_features, cpu=False):
            return dynamic_int8_linear(x, self.weight, self.weight_scale, self.weight_offset, bias).to(x.dtype)
        return self.float_linear(fake_quantize_per_token(x), bias).to(x.dtype)

    def static_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_s deq_scale_s · (x_int_s · W_int_sᵀ + quant_bias_s)`` from the integer weight."""
        s = self.shards
        if s == 1:  # the common case: one matmul + bias, then the output scale, in place
            x_int = quantize_activation(x.float(), self.input_scale, self.input_offset)
            return self._integer_sums(x_int, 0).mul_(self._out_scale[0]).to(x.dtype)
        xs = x.float().unflatten(-1, (s, -1))  # (..., S, k/S)
        x_int = quantize_activation(xs, self.input_scale.view(s, 1), self.input_offset.view(s, 1))
        acc = torch.stack([self._integer_sums(x_int[..., i, :], i) for i in range(s)], dim=-2)  # (..., S, n)
        return (acc * self._out_scale).sum(dim=-2).to(x.dtype)

    def _is_prefill(self, x: torch.Tensor) -> bool:
        if self.phase == "auto":
            return x.dim() >= 2 and x.shape[-2] > 1
        return self.phase == "prefill"


@contextlib.contextmanager
def pdmix_phase(model: nn.Module, phase: str) -> Iterator[None]:
    """Run every W8A8_MIX layer of ``model`` in ``phase`` (auto, prefill, decode) inside the block."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    layers = [m for m in model.modules() if isinstance(m, StaticActLinear) and m.pdmix]
    before = [m.phase for m in layers]
    for m in layers:
        m.phase = phase
    try:
        yield
    finally:
        for m, old in zip(layers, before):
            m.phase = old
