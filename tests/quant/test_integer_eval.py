"""Evaluating at integer size: quantized modules hold only their stored integer weights, the
integer kernel gives the fake-quant logits bit for bit (static types) or within a stated
tolerance (per-token dynamic types, CUDA only), and nothing float32 of a weight's size stays alive."""

import gc

import pytest
import torch

from quant.config import QuantConfig
from quant.export import save_quantized
from quant.int_matmul import dynamic_int8_linear, int8_matmul, integer_kernels, kernel_applies
from quant.pipeline import quantize
from quant.qlinear import QuantLinear
from quant.quantizers import fake_quantize_per_token
from quant.reload import load_quantized
from quant.schemes import DynamicLinear, StaticActLinear
from quant.schemes.spec import LinearSpec
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
]
RECIPES = {
    "W8A8": dict(anti_method="m1"),
    "W8A8_tp2": dict(tp_size=2),
    "W8A8S": dict(co_sparse=True),
    "W8A8_MIX": dict(pdmix=True),
    "W8A8_DYNAMIC": dict(is_dynamic=True),
    "W4A8_DYNAMIC": dict(w_bit=4, is_lowbit=True, open_outlier=False, group_size=32, is_dynamic=True),
    "W4A16": dict(w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False, group_size=32),
}


def _probe(tokenizer) -> torch.Tensor:
    return tokenizer(["Ghost in the Shell was produced in 1995 by Production I.G"], return_tensors="pt").input_ids


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _float_tensors_alive(min_numel: int) -> dict[int, torch.Tensor]:
    gc.collect()
    return {
        id(o): o
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor) and o.is_floating_point() and o.numel() >= min_numel
    }


def _module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor a module holds: buffers, parameters and plain attributes."""
    held = [*module.buffers(recurse=False), *module.parameters(recurse=False)]
    return held + [v for v in vars(module).values() if isinstance(v, torch.Tensor)]


def _assert_integer_size(model: torch.nn.Module) -> None:
    quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert quantized
    for module in quantized:
        big = [t for t in _module_tensors(module) if t.numel() * 2 >= module.in_features * module.out_features]
        assert [t.dtype for t in big] == [torch.int8], type(module).__name__  # the stored weight only


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_no_float_weight_copy_alive_after_a_forward(recipe, tiny_tokenizer, tmp_path):
    ids = _probe(tiny_tokenizer)
    model = build_tiny_llama("llama2")
    smallest = min(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    before = _float_tensors_alive(smallest)
    result = quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, **RECIPES[recipe]))
    with torch.no_grad():
        logits = model(ids).logits
    own_floats = {_storage(t) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    alive = _float_tensors_alive(smallest)
    leftovers = [
        tuple(t.shape)
        for i, t in alive.items()
        if i not in before and _storage(t) not in own_floats | {_storage(logits)}
    ]
    assert leftovers == []  # no dequantized weight (or anything of a weight's size) outside the float layers
    _assert_integer_size(model)

    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    reloaded = load_quantized(tmp_path / "out").model
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)
    _assert_integer_size(reloaded)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_integer_kernel_gives_the_fake_quant_logits(recipe, tiny_tokenizer):
    """On CPU every static layer takes torch._int_mm; its exact int32 sums equal the float32 sums of
    the fake-quant path whenever those are exact (here: in_features ≤ 1032), so the logits are equal."""
    model = build_tiny_llama("llama2")
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, **RECIPES[recipe]))
    ids = _probe(tiny_tokenizer)
    with torch.no_grad():
        with integer_kernels(False):
            fake_quant = model(ids).logits
        integer = model(ids).logits
    assert torch.equal(integer, fake_quant)


def test_static_layers_take_the_integer_kernel_on_cpu(monkeypatch):
    layer = StaticActLinear.from_float(torch.nn.Linear(64, 32), LinearSpec("W8A8"))
    layer.set_activation_params(torch.tensor([0.05]), torch.tensor([3.0]))
    calls = []
    monkeypatch.setattr(torch, "_int_mm", lambda a, b, real=torch._int_mm: calls.append(a.dtype) or real(a, b))
    layer(torch.randn(4, 64))
    assert calls == [torch.int8]
    with integer_kernels(False):
        layer(torch.randn(4, 64))
    assert calls == [torch.int8]  # the switch turns the kernel off


def test_integer_kernel_is_exact_where_float32_sums_round():
    """in_features 8192 with large same-sign int8 values: sums near 1e8, beyond float32's exact integers."""
    gen = torch.Generator().manual_seed(0)
    k, n = 8192, 8
    weight = torch.randint(100, 128, (n, k), generator=gen, dtype=torch.int8)
    x_int = torch.randint(100, 128, (3, k), generator=gen).float()
    exact = x_int.long() @ weight.long().T
    assert torch.equal(int8_matmul(x_int, weight).long(), exact)
    float_sums = torch.nn.functional.linear(x_int, weight.float()).double()
    assert exact.min() > 2**26 and not torch.equal(float_sums, exact.double())
    # the float path's error stays within float32 rounding of the sums (k roundings of at most 1 ulp)
    assert ((float_sums - exact.double()).abs() <= k * 2**-24 * exact.double()).all()


@pytest.mark.parametrize("symmetric_weight", [True, False])
def test_dynamic_integer_kernel_within_tolerance_of_fake_quant(symmetric_weight):
    """W8A8_DYNAMIC / PDMix prefill factor the scales out of the integer sum: a different float
    rounding order than fq(x)·dequant(W)ᵀ, within 1e-5 relative (that is why CPU keeps fake-quant)."""
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    layer = DynamicLinear.from_float(linear, LinearSpec("W8A8_DYNAMIC", symmetric=symmetric_weight))
    assert bool(layer.weight_offset.eq(0).all()) == symmetric_weight
    x = torch.randn(5, 7, 256, generator=gen) * 2 + 0.3
    fake = torch.nn.functional.linear(fake_quantize_per_token(x), layer.dequantized_weight(), layer.bias)
    integer = dynamic_int8_linear(x, layer.weight, layer.weight_scale, layer.weight_offset, layer.bias)
    assert integer.shape == fake.shape
    assert torch.allclose(integer, fake, rtol=1e-5, atol=1e-5 * float(fake.abs().max()))
    assert not kernel_applies(x, 256, 64, cpu=False)  # on CPU the dynamic layer keeps fake-quant
    assert torch.equal(layer(x), fake.to(x.dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch._int_mm on cuBLASLt)")
@pytest.mark.parametrize("recipe", ["W8A8", "W8A8_DYNAMIC", "W8A8_MIX"])
def test_cuda_integer_kernel_logits_close_to_cpu(recipe, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, **RECIPES[recipe]))
    ids = _probe(tiny_tokenizer).repeat(4, 1)  # > 16 rows per matmul: the kernel applies
    with torch.no_grad():
        cpu = model(ids).logits
        model.cuda()
        assert kernel_applies(torch.empty(32, 64, device="cuda"), 64, 64, cpu=False)
        gpu = model(ids.cuda()).logits.cpu()
    _assert_integer_size(model)
    assert torch.allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * float(cpu.abs().max()))
