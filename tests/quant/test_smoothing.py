"""m1 SmoothQuant: a change of basis (float logits unchanged) with the exact SPEC §3 scales."""

import pytest
import torch

from quant.anti_outlier import apply_anti_outlier
from quant.arch import linear_names
from quant.calib import tokenize_texts
from quant.observe import observe_linear_inputs
from tiny_models import build_tiny_llama

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes"]


@pytest.mark.parametrize("family", ["llama2", "llama3", "llama3.1"])
def test_m1_leaves_float_logits_unchanged(family, tiny_tokenizer):
    model = build_tiny_llama(family).double()
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    x = batches[0]["input_ids"]
    before = model(x).logits
    stats = observe_linear_inputs(model, batches, linear_names(model))
    report = apply_anti_outlier(model, "m1", stats)
    after = model(x).logits
    assert report.scales, "m1 must have smoothed something"
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9)
    assert any((s - 1).abs().max() > 0.1 for s in report.scales.values()), "scales must not be trivial"


def test_m1_scales_match_formula(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    layer = model.model.layers[0]
    # Independent statistics: the norm output over all tokens of all batches.
    captured = []
    handle = layer.input_layernorm.register_forward_hook(lambda _m, _a, out: captured.append(out.reshape(-1, 64)))
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    x = torch.cat(captured)
    amax = x.abs().amax(dim=0)
    w = torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight])
    wmax = w.abs().amax(dim=0)
    expected = (amax.sqrt() / wmax.sqrt()).clamp(min=1e-5)
    norm_before = layer.input_layernorm.weight.detach().clone()

    stats = observe_linear_inputs(model, batches, linear_names(model))
    report = apply_anti_outlier(model, "m1", stats)
    got = report.scales["model.layers.0.input_layernorm"]
    assert torch.allclose(got, expected, rtol=1e-6)
    assert torch.allclose(layer.input_layernorm.weight, norm_before / expected, rtol=1e-6)


def test_m1_gives_every_norm_a_zero_bias(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    apply_anti_outlier(model, "m1", observe_linear_inputs(model, batches, linear_names(model)))
    names = {n for n, _ in model.named_parameters()}
    assert "model.norm.bias" in names
    assert "model.layers.1.post_attention_layernorm.bias" in names
    assert float(model.model.norm.bias.abs().sum()) == 0.0
