"""Integer quantizers of SPEC §4 against independent computations."""

import torch

from quant.quantizers import (
    activation_params,
    float_bits_as_int64,
    int64_bits_as_float,
    quantize_weight_per_channel,
)


def test_symmetric_weight_per_channel():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    q = quantize_weight_per_channel(w)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    assert torch.equal(q.q, torch.round(w / scale).clamp(-127, 127).to(torch.int8))
    assert torch.allclose(q.scale, scale)
    assert torch.count_nonzero(q.offset) == 0
    # Round-to-nearest: error at most half a step per element.
    assert ((q.dequantize() - w).abs() <= scale / 2 + 1e-7).all()


def test_asymmetric_weight_per_channel():
    w = torch.tensor([[0.5, 1.0, 2.0], [-3.0, -1.0, 0.0]])
    q = quantize_weight_per_channel(w, symmetric=False)
    scale0 = (2.0 - 0.0) / 255
    assert torch.allclose(q.scale[0], torch.tensor([scale0]))
    assert float(q.offset[0]) == round(0.0 / scale0) - 128
    assert ((q.dequantize() - w).abs() <= q.scale / 2 + 1e-6).all()


def test_activation_params_include_zero():
    scale, offset = activation_params(0.5, 3.0)  # widened to [0, 3]
    assert torch.allclose(scale, torch.tensor([3.0 / 255]))
    assert float(offset) == -128
    scale, offset = activation_params(-2.0, 1.0)
    assert torch.allclose(scale, torch.tensor([3.0 / 255]))
    assert float(offset) == round(2.0 / (3.0 / 255)) - 128


def test_deq_scale_bit_pattern_round_trips():
    values = torch.tensor([1.5e-4, 0.25, 3.0], dtype=torch.float32)
    bits = float_bits_as_int64(values)
    assert bits.dtype == torch.int64
    assert int(bits[1]) == 0x3E800000  # float32 0.25
    assert torch.equal(int64_bits_as_float(bits), values)
