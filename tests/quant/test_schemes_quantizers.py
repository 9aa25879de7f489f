"""The scheme quantizers (SPEC §4) against independent computations: per group, per tensor,
outlier protection, two-stage W4A8, per-token dynamic activations, int4 packing."""

import math

import pytest
import torch

from quant.quantizers import (
    fake_quantize_per_token,
    outlier_mask_by_fraction,
    outlier_mask_by_sigma,
    quantize_weight,
    quantize_weight_outlier_protected,
    quantize_weight_two_stage,
    scale_bias,
)
from quant.schemes.packing import pack_int4, unpack_int4


def _weights(out=16, cols=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out, cols, generator=gen)


def test_int4_pack_unpack_is_lossless_over_every_value():
    gen = torch.Generator().manual_seed(1)
    values = torch.randint(-8, 8, (64, 96), generator=gen, dtype=torch.int8)
    values[:16, 0] = torch.arange(-8, 8, dtype=torch.int8)  # every int4 value at least once
    packed = pack_int4(values)
    assert packed.dtype == torch.int8 and packed.shape == (32, 96)
    assert torch.equal(unpack_int4(packed), values)


def test_int4_byte_layout_low_nibble_is_the_even_row():
    # rows 0 and 1 of column 0: 1 -> 0x1 (low nibble), -2 -> 0xE (high nibble); byte 0xE1 = -31 as int8.
    packed = pack_int4(torch.tensor([[1, -8], [-2, 7]], dtype=torch.int8))
    assert packed.tolist() == [[0xE1 - 256, 0x78]]


def test_int4_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="even number of rows"):
        pack_int4(torch.zeros(3, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="int4 range"):
        pack_int4(torch.full((2, 2), 8, dtype=torch.int8))


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_per_group_symmetric_scales_and_error_bound(group_size, bits):
    w = _weights(cols=256)
    q = quantize_weight(w, bits=bits, group_size=group_size)
    groups = w.reshape(16, 256 // group_size, group_size)  # (out, groups, group_size)
    qmax = 2 ** (bits - 1) - 1
    expected_scale = groups.abs().amax(dim=2) / qmax
    assert q.scale.shape == (16, 256 // group_size) and torch.allclose(q.scale, expected_scale)
    assert torch.count_nonzero(q.offset) == 0
    assert int(q.q.abs().max()) <= qmax
    step = expected_scale.repeat_interleave(group_size, dim=1)  # (out, in)
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()


def test_per_group_asymmetric_uses_the_whole_int_range():
    w = _weights(cols=128) + 0.5  # shifted: asymmetric ranges differ from symmetric ones
    q = quantize_weight(w, bits=4, symmetric=False, group_size=32)
    g = w.reshape(16, 4, 32)
    lo, hi = g.amin(dim=2).clamp(max=0), g.amax(dim=2).clamp(min=0)
    scale = (hi - lo) / 15
    assert torch.allclose(q.scale, scale)
    assert torch.equal(q.offset, torch.round(-lo / scale) - 8)
    assert int(q.q.min()) >= -8 and int(q.q.max()) <= 7
    step = scale.repeat_interleave(32, dim=1)
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()


def test_per_tensor_has_one_scale_stored_per_row():
    w = _weights()
    w[3] *= 20  # per-channel and per-tensor scales now differ a lot
    q = quantize_weight(w, per_tensor=True)
    assert q.scale.shape == (16, 1)
    assert torch.allclose(q.scale, torch.full((16, 1), float(w.abs().max()) / 127))
    assert ((q.dequantize() - w).abs() <= float(w.abs().max()) / 127 / 2 + 1e-6).all()
    per_channel = quantize_weight(w)
    assert not torch.equal(per_channel.q, q.q)


def test_outlier_mask_by_fraction_takes_the_largest_magnitudes():
    w = _weights()
    mask = outlier_mask_by_fraction(w, 0.05)
    n = math.ceil(0.05 * w.numel())
    assert int(mask.sum()) == n
    assert float(w.abs()[mask].min()) > float(w.abs()[~mask].max())


def test_outlier_mask_by_sigma():
    w = _weights()
    mask = outlier_mask_by_sigma(w, 2.0)
    assert torch.equal(mask, (w - w.mean()).abs() > 2.0 * w.std())


def test_outlier_protected_weights_keep_outliers_on_the_int4_grid():
    w = _weights(cols=256) * 0.1
    planted = torch.zeros_like(w, dtype=torch.bool)
    planted[torch.arange(16), torch.arange(16) * 7] = True
    w[planted] = 3.0  # ~30 std: far outside the inlier range
    outliers = outlier_mask_by_fraction(w, 0.01)
    assert torch.equal(outliers & planted, planted)
    q = quantize_weight_outlier_protected(w, outliers, bits=4)
    inlier_amax = torch.where(outliers, torch.zeros_like(w), w).abs().amax(dim=1, keepdim=True)
    assert torch.allclose(q.scale, inlier_amax / 7)
    assert int(q.q[~outliers].abs().max()) <= 7  # inliers: 4-bit values
    assert int(q.q[planted].abs().min()) > 7  # planted outliers: beyond 4 bits, kept in int8
    assert ((q.dequantize() - w).abs() <= q.scale / 2 + 1e-6).all()  # nothing clipped


def test_two_stage_w4a8_weights():
    """SPEC §4 [exact]: s1 = max|W_row| / 119, q8 in [−119, 119]; integer s2 = round(max|q8_group| / 7);
    q4 = clamp(round(q8 / s2), −8, 7)."""
    w = _weights(cols=128)
    ts = quantize_weight_two_stage(w, group_size=32)
    s1 = w.abs().amax(dim=1, keepdim=True) / 119
    q8 = torch.round(w / s1).clamp(-119, 119)
    s2 = torch.round(q8.reshape(16, 4, 32).abs().amax(dim=2) / 7)  # (out, groups), integers
    q4 = torch.round(q8.reshape(16, 4, 32) / s2.unsqueeze(2)).clamp(-8, 7).reshape(16, 128)
    assert torch.equal(ts.scale, s1) and torch.equal(ts.scale_second, s2)
    assert torch.equal(ts.scale_second, ts.scale_second.round())
    assert torch.equal(ts.q4.float(), q4)
    assert int(ts.q4.min()) >= -8 and int(ts.q4.max()) <= 7
    # |W - q4·s2·s1| <= s1/2 (stage 1) + s1·s2/2 (stage 2), except where the int4 clamp bites.
    bound = s1 / 2 + s1 * s2.repeat_interleave(32, dim=1) / 2
    unclamped = (torch.round(q8.reshape(16, 4, 32) / s2.unsqueeze(2)).reshape(16, 128)).abs() <= 7
    assert ((ts.dequantize() - w).abs() <= bound + 1e-6)[unclamped].all()


def test_scale_bias_is_eight_bf16_s1_times_chunk_sums():
    w = _weights(cols=128)
    ts = quantize_weight_two_stage(w, group_size=32)
    integers = ts.q4.float() * ts.scale_second.repeat_interleave(32, dim=1)  # (out, in)
    s1_bf16 = ts.scale.to(torch.bfloat16).float()
    for chunks in (1, 16):
        expected = 8 * s1_bf16 * integers.reshape(16, chunks, 128 // chunks).sum(dim=2)
        assert torch.equal(scale_bias(ts, chunks), expected)


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_token_dynamic_quantization(symmetric):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 64, generator=gen) * torch.linspace(0.1, 10, 5).view(1, 5, 1) + 0.3
    got = fake_quantize_per_token(x, symmetric=symmetric)
    for token, row in zip(x.reshape(-1, 64), got.reshape(-1, 64)):
        if symmetric:
            scale, offset = float(token.abs().max()) / 127, 0.0
        else:
            lo, hi = min(float(token.min()), 0.0), max(float(token.max()), 0.0)
            scale = (hi - lo) / 255
            offset = round(-lo / scale) - 128
        x_int = torch.clamp(torch.round(token / scale + offset), -128, 127)
        expected = (x_int - offset) * scale
        assert torch.allclose(row, expected, atol=scale * 1e-3)
        assert ((row - token).abs() <= scale / 2 + 1e-6).all()
