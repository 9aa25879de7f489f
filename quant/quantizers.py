"""Integer quantizers of SPEC §4: the two range formulas and every granularity built on them.

Two formulas serve weights and activations alike:

* symmetric: ``scale = amax / (2^(b-1) - 1)``, offset 0;
* asymmetric: range widened to include 0, ``scale = (hi - lo) / (2^b - 1)``,
  ``offset = round(-lo / scale) - 2^(b-1)``.

Granularities differ only in which values share a range: a weight row (per channel), a
group of ``group_size`` consecutive inputs of a row (per group), the whole tensor (per
tensor), the inliers of a row (outlier protection), one token of an activation (dynamic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_EPS = 1e-8
INT8_MIN, INT8_MAX = -128, 127


@dataclass
class QuantizedWeight:
    """Integer weight with its scale and offset per row or per group.

    ``W ≈ (q - offset) · scale``, where ``scale`` / ``offset`` have shape (out, groups) and
    each covers ``in / groups`` consecutive inputs of its row (groups = 1: per channel).
    """

    q: torch.Tensor  # int8 (out, in)
    scale: torch.Tensor  # float32 (out, groups)
    offset: torch.Tensor  # float32 (out, groups)

    @property
    def groups(self) -> int:
        return self.scale.shape[1]

    def dequantize(self) -> torch.Tensor:
        return dequantize_grouped(self.q, self.scale, self.offset)


def dequantize_grouped(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``(q - offset) · scale`` with (out, groups) parameters over (out, in) integers, float32."""
    out, cols = q.shape
    groups = scale.shape[1]
    q_groups = q.float().reshape(out, groups, cols // groups)  # (out, groups, group_size)
    deq = (q_groups - offset.float().unsqueeze(2)) * scale.float().unsqueeze(2)
    return deq.reshape(out, cols)


# -- the two range formulas ------------------------------------------------------------


def symmetric_params(amax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = amax / (2^(b-1) - 1)`` (at least 1e-8), offset 0; same shape as ``amax``."""
    scale = (amax / (2 ** (bits - 1) - 1)).clamp(min=_EPS)
    return scale, torch.zeros_like(scale)


def asymmetric_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Range ``[min(lo, 0), max(hi, 0)]`` onto the signed b-bit integers.

    ``scale = (hi - lo) / (2^b - 1)``, ``offset = round(-lo / scale) - 2^(b-1)``.
    """
    lo = lo.clamp(max=0)
    hi = hi.clamp(min=0)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=_EPS)
    offset = torch.round(-lo / scale) - 2 ** (bits - 1)
    return scale, offset


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range: ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` symmetric, ``[-2^(b-1), 2^(b-1) - 1]`` not."""
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if symmetric else -qmax - 1), qmax


def quantize_to_int(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x / scale + offset), qmin, qmax)`` as float values (broadcasting)."""
    return torch.clamp(torch.round(x / scale + offset), qmin, qmax)


# -- weights ---------------------------------------------------------------------------


def _quantize_rows(
    rows: torch.Tensor, bits: int, symmetric: bool, inliers: torch.Tensor | None = None, store_bits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize each row of ``rows`` (r, c) with its own range.

    The range comes from the row's ``inliers`` (all values when None); values outside it are
    rounded on the same grid and clamped to ``store_bits`` (default ``bits``).
    Returns q (r, c) float integers, scale (r, 1), offset (r, 1).
    """
    ranged = rows if inliers is None else torch.where(inliers, rows, torch.zeros_like(rows))
    if symmetric:
        scale, offset = symmetric_params(ranged.abs().amax(dim=1, keepdim=True), bits)
    else:
        scale, offset = asymmetric_params(ranged.amin(dim=1, keepdim=True), ranged.amax(dim=1, keepdim=True), bits)
    qmin, qmax = int_range(store_bits or bits, symmetric)
    return quantize_to_int(rows, scale, offset, qmin, qmax), scale, offset


def quantize_weight(
    weight: torch.Tensor, bits: int = 8, symmetric: bool = True, group_size: int | None = None, per_tensor: bool = False
) -> QuantizedWeight:
    """Weight quantization per output channel (default), per group of inputs, or per tensor.

    Per group: each row is cut into ``in / group_size`` groups of consecutive inputs, each
    with its own range; scale/offset (out, in / group_size). Per tensor: one range for the
    whole tensor, stored per row (out, 1) so the saved format is the per-channel one.
    """
    w = weight.detach().float()  # (out, in)
    out, cols = w.shape
    if per_tensor:
        q, scale, offset = _quantize_rows(w.reshape(1, -1), bits, symmetric)
        return _as_int8(q.reshape(out, cols), scale.expand(out, 1), offset.expand(out, 1))
    if group_size is None:
        return _as_int8(*_quantize_rows(w, bits, symmetric))
    groups = cols // group_size
    q, scale, offset = _quantize_rows(w.reshape(out * groups, group_size), bits, symmetric)  # rows: (out·groups, gs)
    return _as_int8(q.reshape(out, cols), scale.reshape(out, groups), offset.reshape(out, groups))


def quantize_weight_per_channel(weight: torch.Tensor, bits: int = 8, symmetric: bool = True) -> QuantizedWeight:
    """Per-output-channel weight quantization (SPEC §4), the reference's default."""
    return quantize_weight(weight, bits=bits, symmetric=symmetric)


def outlier_mask_by_fraction(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """True for the ``fraction`` of the tensor's weights with the largest magnitude (at least one)."""
    flat = weight.detach().float().abs().flatten()
    n_outliers = max(1, math.ceil(fraction * flat.numel()))
    # kthvalue, not quantile: quantile refuses tensors of more than 2^24 elements (lm_head).
    threshold = torch.kthvalue(flat, flat.numel() - n_outliers).values
    return weight.detach().float().abs() > threshold


def outlier_mask_by_sigma(weight: torch.Tensor, sigma_factor: float) -> torch.Tensor:
    """True outside ``mean ± sigma_factor · std`` of the tensor's weights."""
    w = weight.detach().float()
    return (w - w.mean()).abs() > sigma_factor * w.std()


def quantize_weight_outlier_protected(
    weight: torch.Tensor, outliers: torch.Tensor, bits: int = 4, symmetric: bool = True
) -> QuantizedWeight:
    """Low-bit weights with outlier protection, per output channel, stored as int8.

    Each row's range comes from its inliers only and maps onto ``bits``-bit integers
    (±7 for 4-bit symmetric); the ``outliers`` are rounded on the same grid and kept up to
    the int8 limits instead of being clipped to ``bits`` bits.
    """
    w = weight.detach().float()  # (out, in)
    return _as_int8(*_quantize_rows(w, bits, symmetric, inliers=~outliers, store_bits=8))


def _as_int8(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> QuantizedWeight:
    return QuantizedWeight(q.to(torch.int8), scale.contiguous(), offset.contiguous())


W4A8_STAGE1_MAX = 119  # stage 1 maps max|W_row| to 119, not 127 (SPEC §4 [exact])


@dataclass
class TwoStageWeight:
    """W4A8_DYNAMIC weights: per-channel int8, then per-group int4 on those integers.

    ``W ≈ q4 · scale_second · scale`` (offsets zero): ``scale`` (out, 1) maps the stage-1 integers
    to float, ``scale_second`` (out, in / group_size) holds integers mapping int4 to them.
    """

    q4: torch.Tensor  # int8 holding int4 values (out, in)
    scale: torch.Tensor  # float32 (out, 1)
    scale_second: torch.Tensor  # float32 (out, groups), integer-valued

    def dequantize(self) -> torch.Tensor:
        zeros = torch.zeros_like(self.scale_second)
        return dequantize_grouped(self.q4, self.scale_second, zeros) * self.scale


def quantize_weight_two_stage(weight: torch.Tensor, group_size: int) -> TwoStageWeight:
    """The reference's two stages (SPEC §4 [exact]).

    Stage 1: ``s1 = max|W_row| / 119``, ``q8 = clamp(round(W / s1), −119, 119)``. Stage 2, per group
    of ``group_size`` inputs: ``s2 = round(max|q8_group| / 7)`` (an integer; at least 1, so an
    all-zero group stays zero), ``q4 = clamp(round(q8 / s2), −8, 7)``.
    """
    w = weight.detach().float()  # (out, in)
    out, cols = w.shape
    s1 = (w.abs().amax(dim=1, keepdim=True) / W4A8_STAGE1_MAX).clamp(min=_EPS)  # (out, 1)
    q8 = torch.clamp(torch.round(w / s1), -W4A8_STAGE1_MAX, W4A8_STAGE1_MAX)
    groups = q8.view(out, cols // group_size, group_size)  # (out, groups, group_size)
    s2 = torch.round(groups.abs().amax(dim=2) / 7).clamp(min=1)  # (out, groups)
    q4 = torch.clamp(torch.round(groups / s2.unsqueeze(2)), -8, 7).reshape(out, cols)
    return TwoStageWeight(q4.to(torch.int8), s1.contiguous(), s2.contiguous())


def scale_bias(two_stage: TwoStageWeight, chunks: int) -> torch.Tensor:
    """W4A8_DYNAMIC's ``scale_bias`` (out, chunks) [exact]: ``8 · bf16(s1) · Σ_{k∈chunk} q4 · s2``.

    Columns are cut into ``chunks`` equal chunks; the stage-1 scale is rounded to bfloat16.
    """
    out, cols = two_stage.q4.shape
    group_size = cols // two_stage.scale_second.shape[1]
    integers = two_stage.q4.float() * two_stage.scale_second.repeat_interleave(group_size, dim=1)  # (out, in)
    sums = integers.view(out, chunks, cols // chunks).sum(dim=2)  # (out, chunks)
    return 8 * two_stage.scale.to(torch.bfloat16).float() * sums


# -- activations -----------------------------------------------------------------------


def activation_params(xmin: float, xmax: float, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Static asymmetric per-tensor parameters (range widened to include 0), float32 of shape (1,)."""
    lo = torch.tensor([float(xmin)], dtype=torch.float32)
    hi = torch.tensor([float(xmax)], dtype=torch.float32)
    return asymmetric_params(lo, hi, bits)


def quantize_activation(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x_int = clamp(round(x / scale + offset))`` in the signed b-bit range, as float values."""
    return quantize_to_int(x, scale, offset, *int_range(bits, symmetric=False))


def quantize_per_token(
    x: torch.Tensor, bits: int = 8, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization: each token (last dim) gets its own range.

    Asymmetric (W8A8_DYNAMIC, PDMix prefill): min/max of the token, widened to include 0.
    Symmetric (W4A8_DYNAMIC): ``scale = max|x_token| / 127``.
    Returns the integers (..., k) as float32 values, scale and offset (..., 1).
    """
    xf = x.float()
    if symmetric:
        scale, offset = symmetric_params(xf.abs().amax(dim=-1, keepdim=True), bits)  # (..., 1)
    else:
        scale, offset = asymmetric_params(xf.amin(dim=-1, keepdim=True), xf.amax(dim=-1, keepdim=True), bits)
    return quantize_to_int(xf, scale, offset, *int_range(bits, symmetric)), scale, offset


def fake_quantize_per_token(x: torch.Tensor, bits: int = 8, symmetric: bool = False) -> torch.Tensor:
    """:func:`quantize_per_token` then dequantization, float32."""
    x_int, scale, offset = quantize_per_token(x, bits, symmetric)
    return (x_int - offset) * scale


# -- formats and metrics ---------------------------------------------------------------


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


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Quantize then dequantize: ``(clamp(round(x / scale + offset)) - offset) · scale`` in x's dtype.

    ``scale`` / ``offset`` broadcast against ``x`` (per tensor, channel or head); the arithmetic
    runs in float32 so fp16 models round exactly like float32 ones.
    """
    x_int = quantize_activation(x.float(), scale.float(), offset.float(), bits)
    return ((x_int - offset.float()) * scale.float()).to(x.dtype)
