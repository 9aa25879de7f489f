"""Integer quantizers of SPEC §4: weights per output channel, activations per tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-8


@dataclass
class QuantizedWeight:
    """Integer weight with its per-row scale and offset: ``W ≈ (q - offset) · scale``."""

    q: torch.Tensor  # int8 (out, in)
    scale: torch.Tensor  # float32 (out, 1)
    offset: torch.Tensor  # float32 (out, 1)

    def dequantize(self) -> torch.Tensor:
        return (self.q.float() - self.offset) * self.scale


def quantize_weight_per_channel(weight: torch.Tensor, bits: int = 8, symmetric: bool = True) -> QuantizedWeight:
    """Per-output-channel weight quantization.

    Symmetric: ``scale = max|W_row| / (2^(b-1) - 1)``, ``q = round(W / scale)``, offset 0.
    Asymmetric: ``scale = (max(Wmax, 0) - min(Wmin, 0)) / (2^b - 1)``,
    ``offset = round(-min / scale) - 2^(b-1)``, ``q = clamp(round(W / scale + offset))``.
    """
    w = weight.detach().float()  # (out, in)
    qmax = 2 ** (bits - 1) - 1
    if symmetric:
        scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=_EPS)  # (out, 1)
        q = torch.clamp(torch.round(w / scale), -qmax, qmax)
        offset = torch.zeros_like(scale)
    else:
        wmax = w.amax(dim=1, keepdim=True).clamp(min=0)
        wmin = w.amin(dim=1, keepdim=True).clamp(max=0)
        scale = ((wmax - wmin) / (2**bits - 1)).clamp(min=_EPS)
        offset = torch.round(-wmin / scale) - 2 ** (bits - 1)
        q = torch.clamp(torch.round(w / scale + offset), -qmax - 1, qmax)
    return QuantizedWeight(q.to(torch.int8), scale, offset)


def activation_params(xmin: float, xmax: float, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Static asymmetric per-tensor parameters, range widened to include 0.

    ``scale = (xmax - xmin) / (2^b - 1)``, ``offset = round(-xmin / scale) - 2^(b-1)``.
    Returns float32 tensors of shape (1,).
    """
    lo = min(float(xmin), 0.0)
    hi = max(float(xmax), 0.0)
    scale = torch.tensor([max((hi - lo) / (2**bits - 1), _EPS)], dtype=torch.float32)
    offset = torch.round(-lo / scale) - 2 ** (bits - 1)
    return scale, offset


def quantize_activation(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x_int = clamp(round(x / scale + offset))`` in the signed b-bit range, as float values."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale + offset), low, high)


def float_bits_as_int64(values: torch.Tensor) -> torch.Tensor:
    """float32 values stored as int64 holding the float32 bit pattern (the reference's deq_scale)."""
    return values.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def int64_bits_as_float(values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`float_bits_as_int64`."""
    return values.to(torch.int32).view(torch.float32)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10·log10(‖ref‖² / ‖ref − approx‖²)``."""
    ref = reference.detach().float()
    noise = (ref - approx.detach().float()).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


def symmetric_params(amax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = amax / (2^(b-1) - 1)`` (at least 1e-8), offset 0; same shape as ``amax``."""
    scale = (amax / (2 ** (bits - 1) - 1)).clamp(min=_EPS)
    return scale, torch.zeros_like(scale)


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Quantize then dequantize: ``(clamp(round(x / scale + offset)) - offset) · scale`` in x's dtype.

    ``scale`` / ``offset`` broadcast against ``x`` (per tensor, channel or head); the arithmetic
    runs in float32 so fp16 models round exactly like float32 ones.
    """
    x_int = quantize_activation(x.float(), scale.float(), offset.float(), bits)
    return ((x_int - offset.float()) * scale.float()).to(x.dtype)
