"""Integer quantizers of SPEC §4: weights per output channel, activations per tensor."""

from __future__ import annotations

import math
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


def fake_quantize_weight(weight: torch.Tensor, bits: int = 8, symmetric: bool = True) -> torch.Tensor:
    """The per-channel quantized weight, dequantized to float32; ``bits`` >= 16 means no quantization."""
    if bits >= 16:
        return weight.detach().float()
    return quantize_weight_per_channel(weight, bits=bits, symmetric=symmetric).dequantize()


def fake_quantize_activation_per_tensor(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x`` quantized per tensor (asymmetric, its own min/max widened to 0) and dequantized."""
    scale, offset = activation_params(float(x.min()), float(x.max()), bits)
    scale, offset = scale.to(x.device), offset.to(x.device)
    return (quantize_activation(x, scale, offset, bits) - offset) * scale


def float_bits_as_int64(values: torch.Tensor) -> torch.Tensor:
    """float32 values stored as int64 holding the float32 bit pattern (the reference's deq_scale)."""
    return values.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def int64_bits_as_float(values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`float_bits_as_int64`."""
    return values.to(torch.int32).view(torch.float32)


def sqnr_from_energies(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)`` in dB; infinite when there is no noise."""
    if noise == 0:
        return float("inf")
    return 10 * math.log10(signal / noise) if signal > 0 else float("-inf")


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10·log10(‖ref‖² / ‖ref − approx‖²)``."""
    acc = SqnrAccumulator()
    acc.update(reference, approx)
    return acc.db


@dataclass
class SqnrAccumulator:
    """:func:`sqnr_db` over many batches: signal and noise energies summed before the ratio."""

    signal: float = 0.0
    noise: float = 0.0

    def update(self, reference: torch.Tensor, approx: torch.Tensor) -> None:
        ref = reference.detach().float()
        self.signal += float(ref.pow(2).sum(dtype=torch.float64))
        self.noise += float((ref - approx.detach().float()).pow(2).sum(dtype=torch.float64))

    @property
    def db(self) -> float:
        return sqnr_from_energies(self.signal, self.noise)
