"""Attention quantization (use_fa_quant, fa_amp, FAQuant): format, ranges, forward, fa_amp, reload."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scheme_helpers import CALIB_TEXTS, PROBE, calibration_inputs, last_logits_full_and_cached, quantize_tiny
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.models.llama.modeling_llama import eager_attention_forward

from quant.attention_quant import coverage_amax, head_ranges
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.export import save_quantized
from quant.pipeline import quantize
from quant.reload import load_quantized
from tiny_models import build_tiny_llama

STATES = ("q", "k", "v")
_ORIGINAL = {"sdpa": sdpa_attention_forward, "eager": eager_attention_forward}


def _register_test_attention(name: str, original: str, transform) -> None:
    """A test-local attention implementation: ``transform(module, q, k, v)`` then the original kernel."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        query, key, value = transform(module, query, key, value)
        return _ORIGINAL[original](module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])


def _fa_layers(tensors) -> set[int]:
    return {int(k.split(".")[2]) for k in tensors if ".fa_q.scale" in k}


def test_coverage_amax_is_the_inverted_cdf_quantile_per_head():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(2, 3, 1500, 16, generator=gen)  # 48000 values per head
    states[0, 1, :3, 0] = 50.0  # a few outliers the 0.9999 range leaves out
    got = coverage_amax(states, 0.9999)
    per_head = states.abs().transpose(0, 1).reshape(3, -1).numpy()
    expected = [np.quantile(h, 0.9999, method="inverted_cdf") for h in per_head]
    assert torch.equal(got, torch.tensor(expected, dtype=torch.float32))
    assert float(got[1]) < 50.0
    assert torch.equal(coverage_amax(states, 1.0), torch.from_numpy(per_head.max(axis=1)))


def test_head_ranges_cover_9999_of_q_and_k_and_all_of_v():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 800, 16, generator=gen)  # 12800 values per head: 0.9999 leaves out 1
    k, v = q[:, :2].clone(), q[:, :2].clone()
    for x in (q, k, v):
        x[0, 1, 5, 3] = -40.0  # one outlier in head 1
    ranges = head_ranges(q, k, v)
    assert float(ranges["q"][1]) < 40.0 and float(ranges["k"][1]) < 40.0
    assert float(ranges["v"][1]) == 40.0
    assert torch.equal(ranges["q"], coverage_amax(q, 0.9999)) and torch.equal(ranges["v"], v.abs().amax(dim=(0, 2, 3)))


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_fa_tensors_match_spec(tmp_path, tiny_tokenizer, family):
    result = quantize_tiny(family, tiny_tokenizer, use_fa_quant=True)
    config = result.model.config
    out = save_quantized(result.model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    tensors = load_file(out.weight_files[0])
    desc = json.loads(out.description_file.read_text())
    assert desc["model_quant_type"] == "W8A8" and desc["fa_quant_type"] == "FAQuant"
    assert set(desc) - {"model_quant_type", "version", "fa_quant_type"} == set(tensors)
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads, "v": config.num_key_value_heads}
    for i in range(config.num_hidden_layers):
        for state in STATES:
            p = f"model.layers.{i}.self_attn.fa_{state}"
            scale, offset = tensors[f"{p}.scale"], tensors[f"{p}.offset"]
            assert (scale.dtype, tuple(scale.shape)) == (torch.float32, (heads[state], 1))
            assert (offset.dtype, tuple(offset.shape)) == (torch.int8, (heads[state], 1))
            assert torch.all(offset == 0) and torch.all(scale > 0)
            assert desc[f"{p}.scale"] == desc[f"{p}.offset"] == "FAQuant"
    assert "kv_cache_type" not in desc


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_fa_scales_cover_post_rope_states_per_head(tiny_tokenizer, family):
    # W8A16: the calibration pass runs each layer's final forward (no running activation ranges),
    # so a rerun of the finished model sees the very Q/K/V the quantizers observed.
    quantized = quantize_tiny(family, tiny_tokenizer, a_bit=16, use_fa_quant=True).model
    # Independent: the same recipe without attention quant; Q/K/V as the attention kernel gets them
    # (after RoPE), captured by a test-local attention function; per batch the 0.9999 (Q, K) or
    # 1.0 (V) quantile of each head's |values|, then the max over batches, over 127.
    plain = quantize_tiny(family, tiny_tokenizer, a_bit=16).model
    ranges: dict[tuple[int, str], np.ndarray] = {}

    def capture(module, query, key, value):
        for state, x in zip(STATES, (query, key, value)):
            per_head = x.abs().transpose(0, 1).reshape(x.shape[1], -1).numpy()
            coverage = 1.0 if state == "v" else 0.9999
            r = np.array([np.quantile(h, coverage, method="inverted_cdf") for h in per_head])
            key_ = (module.layer_idx, state)
            ranges[key_] = r if key_ not in ranges else np.maximum(ranges[key_], r)
        return query, key, value

    _register_test_attention("test_capture_qkv", "sdpa", capture)
    plain.set_attn_implementation("test_capture_qkv")
    with torch.no_grad():
        for batch in calibration_inputs(tiny_tokenizer):
            plain(**batch)
    for i, layer in enumerate(quantized.model.layers):
        for state in STATES:
            expected = torch.tensor(ranges[(i, state)], dtype=torch.float32).unsqueeze(1) / 127
            got = getattr(layer.self_attn, f"fa_{state}").scale
            assert torch.allclose(got, expected, rtol=1e-6, atol=0), (i, state)


@pytest.mark.parametrize("original", ["sdpa", "eager"])
def test_forward_equals_independent_per_head_fake_quant(tiny_tokenizer, original):
    model = build_tiny_llama("llama3")
    model.set_attn_implementation(original)
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=CALIB_TEXTS, anti_method="m1", use_fa_quant=True))
    assert model.config._attn_implementation == f"fa_int8_{original}"
    ids = tiny_tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits

    def fake_quant(module, query, key, value):
        out = []
        for state, x in zip(STATES, (query, key, value)):
            s = getattr(module, f"fa_{state}").scale.view(1, -1, 1, 1)  # (heads, 1) -> per head
            out.append(torch.clamp(torch.round(x / s), -128, 127) * s)
        return out

    _register_test_attention(f"test_fake_quant_{original}", original, fake_quant)
    model.set_attn_implementation(f"test_fake_quant_{original}")
    with torch.no_grad():
        assert torch.equal(logits, model(ids).logits)
        model.set_attn_implementation(original)  # the quantizers stay, but nothing applies them
        assert not torch.allclose(logits, model(ids).logits)


@pytest.mark.parametrize("fa_amp", [0, 1, 2, 5])
def test_fa_amp_keeps_exactly_n_layers_float(tmp_path, tiny_tokenizer, fa_amp):
    result = quantize_tiny("llama3", tiny_tokenizer, num_layers=3, use_fa_quant=True, fa_amp=fa_amp)
    out = save_quantized(result.model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    tensors = load_file(out.weight_files[0])
    desc = json.loads(out.description_file.read_text())
    report = result.scheme_reports["attention_quant"]
    n_float = min(fa_amp, 3)  # capped at the number of layers
    assert len(report["float_layers"]) == n_float
    assert _fa_layers(tensors) == set(range(3)) - {int(n.split(".")[2]) for n in report["float_layers"]}
    assert ("fa_quant_type" in desc) == (n_float < 3)
    if fa_amp:
        # The float layers are those whose quantized Q/K/V disturb the attention output most.
        errors = report["output_error"]
        assert set(errors) == {f"model.layers.{i}.self_attn" for i in range(3)}
        kept = [errors[n] for n in errors if n not in report["float_layers"]]
        assert all(errors[n] >= max(kept, default=0.0) for n in report["float_layers"])
    reloaded = load_quantized(out.directory).model
    ids = tiny_tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(result.model(ids).logits, reloaded(ids).logits)


@pytest.mark.parametrize("family", ["llama2", "llama3.1"])
def test_save_reload_identical_logits_and_cached_decoding(tmp_path, tiny_tokenizer, family):
    result = quantize_tiny(family, tiny_tokenizer, use_fa_quant=True)
    out = save_quantized(result.model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    reloaded = load_quantized(out.directory).model
    assert reloaded.config._attn_implementation == "fa_int8_sdpa"
    ids = tiny_tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(result.model(ids).logits, reloaded(ids).logits)
    # Cached K/V are re-quantized at every step; quantizing a quantized value changes nothing.
    full, cached = last_logits_full_and_cached(reloaded, ids)
    assert torch.allclose(full, cached, atol=1e-5)


def test_conflicting_and_meaningless_settings_are_clear_errors():
    with pytest.raises(QuantInputError, match=r"^use_fa_quant: True cannot be combined with use_kvcache_quant True"):
        QuantConfig(use_fa_quant=True, use_kvcache_quant=True)
    with pytest.raises(QuantInputError, match=r"^fa_amp: 2 keeps attention layers in float, so it needs use_fa_quant"):
        QuantConfig(fa_amp=2)
    with pytest.raises(QuantInputError, match=r"^fa_amp: invalid value -1"):
        QuantConfig(use_fa_quant=True, fa_amp=-1)
    QuantConfig(use_fa_quant=True, fa_amp=3).check_supported()
    QuantConfig(use_kvcache_quant=True).check_supported()
