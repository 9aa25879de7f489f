"""Scheme forwards against independent integer arithmetic: static W8A8/W8A8S (with tp_size
shards), W8A8_DYNAMIC, W4A8_DYNAMIC, and the two paths of PDMix."""

import contextlib

import pytest
import torch

from quant.config import QuantConfig
from quant.observers import observer_factory
from quant.pipeline import quantize
from quant.quantizers import int64_bits_as_float
from quant.running_pass import CalibratingLinear, MinMaxObserver, ShardedObserver, calibrate_model
from quant.schemes import StaticActLinear, pdmix_phase
from quant.schemes.spec import LinearSpec
from tiny_models import build_tiny_llama, build_tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
]


def _quantized(**kwargs):
    model = build_tiny_llama("llama2")
    result = quantize(model, build_tiny_tokenizer(), QuantConfig(calib_texts=TEXTS, **kwargs))
    return model, result


def _inputs(k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 5, k, generator=gen) * 3 + 0.5


def _static_integer_forward(layer, x):
    """``Σ_s deq_s · (x_int_s · W_int_sᵀ + quant_bias_s)`` in exact integer arithmetic, float64 at the end."""
    s, n = layer.input_scale.numel(), layer.weight.shape[0]
    xs = x.reshape(*x.shape[:-1], s, -1)  # (..., S, k/S)
    x_int = torch.clamp(torch.round(xs / layer.input_scale.view(s, 1) + layer.input_offset.view(s, 1)), -128, 127)
    w = layer.weight.long().view(n, s, -1)  # (n, S, k/S)
    acc = torch.einsum("...sk,nsk->...sn", x_int.long(), w) + layer.quant_bias.long().view(s, n)
    return (int64_bits_as_float(layer.deq_scale).view(s, n).double() * acc.double()).sum(dim=-2)


@pytest.mark.parametrize(
    ("recipe", "name", "shards"),
    [
        (dict(tp_size=4, disable_names=[]), "mlp.down_proj", 4),
        (dict(tp_size=2), "self_attn.o_proj", 2),
        (dict(tp_size=2), "self_attn.q_proj", 1),  # column-parallel: one range
        (dict(co_sparse=True, tp_size=2), "self_attn.o_proj", 2),
        (dict(co_sparse=True), "self_attn.q_proj", 1),
    ],
)
def test_static_forward_matches_integer_arithmetic(recipe, name, shards):
    model, _ = _quantized(anti_method="m1", **recipe)
    layer = model.model.layers[1].get_submodule(name)
    assert layer.input_scale.shape == (shards,) and layer.deq_scale.shape == (shards * layer.out_features,)
    x = _inputs(layer.in_features)
    assert torch.allclose(layer(x).double(), _static_integer_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_shards_with_equal_parameters_reduce_to_the_per_tensor_formula():
    gen = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(64, 32, bias=True)
    one = StaticActLinear.from_float(linear, LinearSpec("W8A8"))
    four = StaticActLinear.from_float(linear, LinearSpec("W8A8", act_shards=4))
    scale, offset = torch.tensor([0.05]), torch.tensor([-7.0])
    one.set_activation_params(scale, offset)
    four.set_activation_params(scale.repeat(4), offset.repeat(4))
    x = torch.randn(3, 64, generator=gen)
    # quant_bias is rounded once per shard: at most 4 half-units of deq_scale apart.
    deq = int64_bits_as_float(one.deq_scale)
    assert ((four(x) - one(x)).abs() <= 2 * deq + 1e-6).all()
    assert not torch.equal(four(x), one(x))  # the per-shard path really ran


def test_sharded_observer_ranges_are_per_column_chunk():
    observer = ShardedObserver([MinMaxObserver() for _ in range(4)])
    batches = [_inputs(64, seed) for seed in range(3)]
    for x in batches:
        observer.update(x)
    for s, (lo, hi) in enumerate(observer.ranges()):
        chunk = [x[..., s * 16 : (s + 1) * 16] for x in batches]
        assert lo == pytest.approx(sum(float(c.min()) for c in chunk) / 3)
        assert hi == pytest.approx(sum(float(c.max()) for c in chunk) / 3)


def test_tp_size_reports_one_range_per_shard():
    _, result = _quantized(tp_size=4, disable_names=[])
    by_name = {r.name: r for r in result.layers}
    o_proj, q_proj = by_name["model.layers.0.self_attn.o_proj"], by_name["model.layers.0.self_attn.q_proj"]
    assert isinstance(o_proj.input_scale, list) and len(o_proj.input_scale) == 4
    assert isinstance(q_proj.input_scale, float)


def _per_token_integer_forward(layer, x, symmetric):
    """Per token: int8 quantization of x, integer matmul with the int weights, float64 rescale."""
    xf = x.reshape(-1, x.shape[-1])
    if symmetric:
        scale = (xf.abs().amax(dim=1, keepdim=True) / 127).float()
        offset = torch.zeros_like(scale)
    else:
        lo, hi = xf.amin(dim=1, keepdim=True).clamp(max=0), xf.amax(dim=1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / 255).float()
        offset = torch.round(-lo / scale) - 128
    x_int = torch.clamp(torch.round(xf / scale + offset), -128, 127).long()
    return x_int, scale.double(), offset.long()


def test_w8a8_dynamic_forward_matches_integer_arithmetic():
    model, _ = _quantized(is_dynamic=True)
    layer = model.model.layers[0].self_attn.q_proj
    x = _inputs(64)
    x_int, x_scale, x_off = _per_token_integer_forward(layer, x, symmetric=False)
    w_int = layer.weight.long()
    acc = x_int @ w_int.T - x_off * w_int.sum(dim=1)  # Σ_k (x_int - off)·W_int, exact
    expected = x_scale * layer.weight_scale.double().view(1, -1) * acc.double()
    assert torch.allclose(layer(x).reshape(-1, 64).double(), expected, rtol=1e-5, atol=1e-5)


def test_w4a8_dynamic_forward_matches_integer_arithmetic():
    model, _ = _quantized(w_bit=4, is_lowbit=True, open_outlier=False, group_size=32, is_dynamic=True)
    layer = model.model.layers[0].mlp.up_proj
    x = _inputs(64)
    x_int, x_scale, _ = _per_token_integer_forward(layer, x, symmetric=True)
    q4 = layer.int4_values().double()  # (n, k)
    s2 = layer.weight_scale_second.double().repeat_interleave(32, dim=1)
    # Σ_k x_int·q4·s2 per output, then the per-token and per-channel scales.
    expected = x_scale * (x_int.double() @ (q4 * s2).T) * layer.weight_scale.double().view(1, -1)
    assert torch.allclose(layer(x).reshape(-1, 128).double(), expected, rtol=1e-5, atol=1e-5)


def test_pdmix_saves_w8a8_tensors_and_runs_dynamic_prefill_static_decode():
    static, _ = _quantized(anti_method="m1")
    mix, result = _quantized(anti_method="m1", pdmix=True)
    assert result.quant_type == "W8A8_MIX"
    # Calibration runs the decode (static) path: every saved tensor equals plain W8A8's.
    static_state, mix_state = static.state_dict(), mix.state_dict()
    assert static_state.keys() == mix_state.keys()
    assert all(torch.equal(static_state[k], mix_state[k]) for k in static_state)

    layer = mix.model.layers[0].self_attn.q_proj
    prompt = _inputs(64)  # (batch 2, 5 positions): prefill
    x_int, x_scale, x_off = _per_token_integer_forward(layer, prompt, symmetric=False)
    w_int = layer.weight.long()
    prefill = x_scale * layer.weight_scale.double().view(1, -1) * (x_int @ w_int.T - x_off * w_int.sum(1)).double()
    assert torch.allclose(layer(prompt).reshape(-1, 64).double(), prefill, rtol=1e-5, atol=1e-5)
    step = prompt[:, :1]  # one position per sequence: decode
    assert torch.allclose(layer(step).double(), _static_integer_forward(layer, step), rtol=1e-5, atol=1e-5)
    with pdmix_phase(mix, "decode"):
        assert torch.allclose(layer(prompt).double(), _static_integer_forward(layer, prompt), rtol=1e-5, atol=1e-5)
    assert layer.phase == "auto"
    with pytest.raises(ValueError, match="phase must be one of"), pdmix_phase(mix, "train"):
        pass


def test_calibration_quantizes_one_decoder_layer_at_a_time():
    """The running pass holds one layer's float linears only: while layer i runs, the layers before
    it are already quantized and the layers after it are still float."""
    model = build_tiny_llama("llama2")
    batches = [build_tiny_tokenizer()(t, return_tensors="pt") for t in TEXTS]
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n]
    layers = model.model.layers
    seen: list[list[set[str]]] = []

    @contextlib.contextmanager
    def watcher(_index, _layer):
        seen.append([{type(m).__name__ for n, m in layer.named_modules() if n.endswith("_proj")} for layer in layers])
        yield

    outcome = calibrate_model(model, batches, names, QuantConfig(calib_texts=TEXTS), observer_factory(1), [watcher])
    assert len(seen) == len(layers)
    for i, kinds in enumerate(seen):
        assert all(k == {"StaticActLinear"} for k in kinds[:i]), i
        assert kinds[i] == {"CalibratingLinear"}, i
        assert all(k == {"Linear"} for k in kinds[i + 1 :]), i
    assert not any(isinstance(m, CalibratingLinear) for m in model.modules())
    assert set(outcome.sqnr_db) == set(names) and set(outcome.ranges) == set(names)
