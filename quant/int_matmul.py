"""Integer matmuls for the evaluated model: int8 activations × int8 weights → exact int32 sums.

``torch._int_mm`` is the kernel (cuBLASLt on CUDA, oneDNN on CPU). Where it applies, a quantized
linear multiplies its stored int8 weight directly; elsewhere it dequantizes the weight for the
call (``QuantLinear.matmul_weight``), so no module keeps a float copy of its weight.

Exactness: static-activation layers (W8A8 …) multiply integers. Their float path sums integer
products in float32, exact while every partial sum stays below 2^24; the int32 kernel is exact
always. Both give the same bits whenever the float sums were exact (every layer with
in_features ≤ 1032, since |x_int · w_int| ≤ 128 · 127; in practice nearly always), and the kernel
is the exact one where they differ. Per-token dynamic layers (W8A8_DYNAMIC, PDMix prefill) factor
the scales out of the sum, a different float rounding order than fake-quant's
``fq(x) · dequant(W)ᵀ``: relative differences of about 1e-6, so they take the kernel only on CUDA
and stay bit-identical to fake-quant on CPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from quant.quantizers import quantize_per_token

CUDA_MIN_ROWS = 17  # torch._int_mm on CUDA: more than 16 rows, k and n multiples of 8
CUDA_MULTIPLE = 8

_state = {"enabled": True}


@contextlib.contextmanager
def integer_kernels(enabled: bool) -> Iterator[None]:
    """Use the integer kernel where it applies (True, the default) or never (False) inside the block."""
    before = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = before


@functools.cache
def _cpu_kernel_exists() -> bool:
    try:
        ones = torch.ones(2, 2, dtype=torch.int8)
        return bool(torch._int_mm(ones, ones).eq(2).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def kernel_applies(x: torch.Tensor, in_features: int, out_features: int, cpu: bool = True) -> bool:
    """Whether ``torch._int_mm`` runs for input ``x`` (..., in_features) on its device.

    ``cpu=False``: only on CUDA (for layers whose kernel result is not bit-identical to fake-quant).
    """
    if not _state["enabled"] or not hasattr(torch, "_int_mm"):
        return False
    if x.device.type == "cuda":
        rows = x.numel() // max(in_features, 1)
        return rows >= CUDA_MIN_ROWS and in_features % CUDA_MULTIPLE == 0 and out_features % CUDA_MULTIPLE == 0
    return cpu and x.device.type == "cpu" and _cpu_kernel_exists()


def int8_matmul(x_int: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x_int · weightᵀ`` as exact int32 sums: x_int (..., k) integer-valued in [-128, 127], weight int8 (n, k)."""
    k = weight.shape[1]
    rows = x_int.reshape(-1, k).to(torch.int8)  # (tokens, k)
    acc = torch._int_mm(rows, weight.t())  # (tokens, n)
    return acc.reshape(*x_int.shape[:-1], weight.shape[0])


def dynamic_int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_offset: torch.Tensor,
    bias: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """Per-token int8 activations × per-channel int8 weights with the integer kernel, float32 (..., n).

    ``Σ_k (x − o_x)(w − o_w) = x·wᵀ − o_x Σ_k w − o_w Σ_k x + k o_x o_w``, times ``s_x · s_w``.
    ``weight_scale`` / ``weight_offset``: (n, 1), the offset integer-valued.
    """
    x_int, x_scale, x_offset = quantize_per_token(x, symmetric=symmetric)  # (..., k), (..., 1), (..., 1)
    k = weight.shape[1]
    # Every term is an integer (offsets are rounded), so the centred sum is exact in int64.
    xo = x_offset.to(torch.int64)  # (..., 1)
    wo = weight_offset.to(torch.int64).view(-1)  # (n,)
    w_sums = weight.sum(dim=1, dtype=torch.int64)  # (n,)
    x_sums = x_int.to(torch.int64).sum(dim=-1, keepdim=True)  # (..., 1)
    centred = int8_matmul(x_int, weight).to(torch.int64) - xo * w_sums - x_sums * wo + k * xo * wo  # (..., n)
    y = centred.float() * x_scale * weight_scale.float().view(-1)
    return y if bias is None else y + bias.float()
