"""KV-cache int8 (use_kvcache_quant, C8): saved format, scale formula, evaluated model, reload."""

import json

import pytest
import torch
from safetensors.torch import load_file
from scheme_helpers import (
    CALIB_TEXTS,
    PROBE,
    calibration_inputs,
    last_logits_full_and_cached,
    quantize_tiny,
    smooth_in_place,
)

from quant.config import QuantConfig
from quant.export import save_quantized
from quant.reload import load_quantized
from tiny_models import build_tiny_llama

KV = ("k_proj", "v_proj")


@pytest.mark.parametrize(("family", "a_bit"), [("llama2", 8), ("llama3", 8), ("llama3.1", 16)])
def test_kv_tensors_match_spec(tmp_path, tiny_tokenizer, family, a_bit):
    result = quantize_tiny(family, tiny_tokenizer, a_bit=a_bit, use_kvcache_quant=True)
    config = result.model.config
    out = save_quantized(result.model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    tensors = load_file(out.weight_files[0])
    desc = json.loads(out.description_file.read_text())
    assert desc["model_quant_type"] == ("W8A8" if a_bit == 8 else "W8A16")
    assert desc["kv_cache_type"] == "C8" and desc["kv_quant_type"] == "C8"
    assert set(desc) - {"model_quant_type", "version", "kv_cache_type", "kv_quant_type"} == set(tensors)
    size = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)  # n_kv * head_dim
    for i in range(config.num_hidden_layers):
        for proj in KV:
            p = f"model.layers.{i}.self_attn.{proj}"
            scale, offset = tensors[f"{p}.kv_cache_scale"], tensors[f"{p}.kv_cache_offset"]
            assert (scale.dtype, tuple(scale.shape)) == (torch.float32, (size,))
            assert (offset.dtype, tuple(offset.shape)) == (torch.float32, (size,))
            assert torch.all(offset == 0) and torch.all(scale > 0)
            assert desc[f"{p}.kv_cache_scale"] == desc[f"{p}.kv_cache_offset"] == "C8"
    assert not any(k.endswith("kv_cache_scale") for k in tensors if "q_proj" in k or "o_proj" in k)


def _kv_amax(model, batches) -> dict[str, torch.Tensor]:
    """Per-channel max |output| of every k_proj / v_proj over ``batches`` (plain forward hooks)."""
    amax: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, _args, out):
            flat = out.abs().reshape(-1, out.shape[-1]).amax(dim=0)
            amax[name] = flat if name not in amax else torch.maximum(amax[name], flat)

        return hook

    handles = [
        getattr(layer.self_attn, proj).register_forward_hook(record(f"{i}.{proj}"))
        for i, layer in enumerate(model.model.layers)
        for proj in KV
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in handles:
        h.remove()
    return amax


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_kv_scale_is_amax_over_127_of_the_smoothed_float_model(tiny_tokenizer, family):
    """SPEC §4: measured on the smoothed FLOAT model (k/v outputs before RoPE, every token of every
    calibration batch), not on the quantized calibration pass."""
    with_kv = quantize_tiny(family, tiny_tokenizer, use_kvcache_quant=True).model
    batches = calibration_inputs(tiny_tokenizer)
    # Independent: the same float model smoothed by the same method (m1), observed by plain hooks.
    smoothed = build_tiny_llama(family, num_layers=2)
    smooth_in_place(smoothed, batches, QuantConfig(calib_texts=CALIB_TEXTS, anti_method="m1"))
    amax = _kv_amax(smoothed, batches)
    # What the quantized model itself would give: different, so the test tells the two apart.
    quantized_amax = _kv_amax(quantize_tiny(family, tiny_tokenizer).model, batches)
    for i, layer in enumerate(with_kv.model.layers):
        for proj in KV:
            expected = amax[f"{i}.{proj}"] / 127
            assert torch.allclose(getattr(layer.self_attn, proj).kv_cache_scale, expected, rtol=1e-6, atol=0), (i, proj)
    assert any(not torch.allclose(amax[k], quantized_amax[k], rtol=1e-6) for k in amax)


def test_projection_output_is_fake_quantized_per_channel(tiny_tokenizer):
    model = quantize_tiny("llama3", tiny_tokenizer, use_kvcache_quant=True).model
    k_proj = model.model.layers[1].self_attn.k_proj
    x = torch.randn(2, 7, 64) * 3
    with torch.no_grad():
        raw = k_proj.forward(x)  # module forward without hooks: the unquantized projection
        hooked = k_proj(x)
    scale = k_proj.kv_cache_scale
    expected = torch.clamp(torch.round(raw / scale), -128, 127) * scale
    assert torch.equal(hooked, expected)
    assert not torch.equal(hooked, raw)


@pytest.mark.parametrize("family", ["llama2", "llama3.1"])
def test_save_reload_identical_logits_and_cache_holds_quantized_kv(tmp_path, tiny_tokenizer, family):
    result = quantize_tiny(family, tiny_tokenizer, use_kvcache_quant=True)
    out = save_quantized(result.model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    reloaded = load_quantized(out.directory).model
    ids = tiny_tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = result.model(ids).logits
        assert torch.equal(logits, reloaded(ids).logits)
        # KV quant really changes the model: the same recipe without it gives other logits.
        assert not torch.allclose(logits, quantize_tiny(family, tiny_tokenizer).model(ids).logits)
    # Decoding from the cache sees the same quantized K/V as a full forward.
    full, cached = last_logits_full_and_cached(reloaded, ids)
    assert torch.allclose(full, cached, atol=1e-5)
