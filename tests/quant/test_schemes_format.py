"""Every scheme on the tiny LLaMA: saved tensor names, dtypes and shapes (SPEC §7), reload to
identical logits, sharded and mindie-format outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from quant.config import QuantConfig
from quant.export import save_quantized
from quant.pipeline import quantize
from quant.reload import load_quantized
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
    "Ghost in the Shell is an anime film.",
]
N, K = 64, 64  # q_proj of the tiny model
F32, I8, I32, I64 = torch.float32, torch.int8, torch.int32, torch.int64
W8A8_TABLE = {
    "weight": (I8, (N, K)),
    "weight_scale": (F32, (N, 1)),
    "weight_offset": (F32, (N, 1)),
    "input_scale": (F32, (1,)),
    "input_offset": (F32, (1,)),
    "quant_bias": (I32, (N,)),
    "deq_scale": (I64, (N,)),
}
WEIGHT_ONLY = {"weight": (I8, (N, K)), "weight_scale": (F32, (N, 1)), "weight_offset": (F32, (N, 1))}

# name: (recipe, quant type, q_proj's saved tensors)
SCHEMES = {
    "w8a8_dynamic": (dict(is_dynamic=True), "W8A8_DYNAMIC", WEIGHT_ONLY),
    "w4a8_dynamic": (
        dict(w_bit=4, is_lowbit=True, open_outlier=False, group_size=32, is_dynamic=True),
        "W4A8_DYNAMIC",
        {
            "weight": (I8, (N // 2, K)),
            "weight_scale": (F32, (N, 1)),
            "weight_offset": (F32, (N, 1)),
            "weight_scale_second": (F32, (N, K // 32)),
            "weight_offset_second": (I64, (N, K // 32)),
            "scale_bias": (F32, (N, 1)),
        },
    ),
    "w4a16_group32": (
        dict(w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False, group_size=32),
        "W4A16",
        {"weight": (I8, (N, K)), "weight_scale": (F32, (N, 2)), "weight_offset": (F32, (N, 2))},
    ),
    "w8a16_group64_asym": (
        dict(a_bit=16, is_lowbit=True, open_outlier=False, group_size=64, w_sym=False),
        "W8A16",
        {"weight": (I8, (N, K)), "weight_scale": (F32, (N, 1)), "weight_offset": (F32, (N, 1))},
    ),
    "w4a16_outlier": (dict(w_bit=4, a_bit=16, is_lowbit=True), "W4A16", WEIGHT_ONLY),
    "w8a8s_fraction": (
        dict(co_sparse=True, fraction=0.05),
        "W8A8S",
        {k: v for k, v in W8A8_TABLE.items() if k not in ("weight_scale", "weight_offset")},
    ),
    "w8a8s_lowbit_sigma": (
        dict(w_bit=4, is_lowbit=True, use_sigma=True, sigma_factor=2.0),
        "W8A8S",
        {k: v for k, v in W8A8_TABLE.items() if k not in ("weight_scale", "weight_offset")},
    ),
    "w8a8_mix": (dict(pdmix=True), "W8A8_MIX", W8A8_TABLE),
    "w8a8_per_tensor": (dict(mm_tensor=True), "W8A8", W8A8_TABLE),
    "w8a8_tp4": (dict(tp_size=4), "W8A8", W8A8_TABLE),
}


def _quantize(tokenizer, family="llama2", model=None, **kwargs):
    model = model if model is not None else build_tiny_llama(family)
    result = quantize(model, tokenizer, QuantConfig(calib_texts=TEXTS, **kwargs))
    return model, result


def _prompt(tokenizer):
    return tokenizer("Ghost in the Shell was produced in 1995", return_tensors="pt").input_ids


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_scheme_saves_spec_tensors_and_reloads_to_identical_logits(scheme, tmp_path, tiny_tokenizer):
    recipe, qtype, table = SCHEMES[scheme]
    model, result = _quantize(tiny_tokenizer, anti_method="m1", **recipe)
    assert result.quant_type == qtype
    out = save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=qtype)
    tensors = load_file(tmp_path / "out" / f"quant_model_weight_{qtype.lower()}.safetensors")
    desc = json.loads((tmp_path / "out" / "quant_model_description.json").read_text())
    assert desc["model_quant_type"] == qtype and desc["version"] == "1.0.0"
    assert {k for k in desc if k not in ("model_quant_type", "version", "group_size")} == set(tensors)
    prefix = "model.layers.1.self_attn.q_proj."
    saved = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    assert {k: (v.dtype, tuple(v.shape)) for k, v in saved.items()} == table
    assert all(desc[prefix + suffix] == qtype for suffix in saved)
    assert desc["model.embed_tokens.weight"] == "FLOAT"

    x = _prompt(tiny_tokenizer)
    reloaded = load_quantized(out.directory)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded.model(x).logits)


def test_w4a8_dynamic_description_and_scale_bias(tmp_path, tiny_tokenizer):
    float_model = build_tiny_llama("llama3")
    down = float_model.model.layers[0].mlp.down_proj.weight.detach().clone()  # (64, 128)
    recipe = dict(w_bit=4, is_lowbit=True, open_outlier=False, group_size=32, is_dynamic=True)
    model, result = _quantize(tiny_tokenizer, model=float_model, disable_names=[], tp_size=2, **recipe)
    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    desc = json.loads((tmp_path / "out" / "quant_model_description.json").read_text())
    assert desc["group_size"] == 32
    t = load_file(tmp_path / "out" / "quant_model_weight_w4a8_dynamic.safetensors")
    p = "model.layers.0.mlp.down_proj."
    # Independent int4 unpacking: low nibble = even row, high nibble = odd row, two's complement.
    byte = t[p + "weight"].to(torch.int16) & 0xFF
    nibbles = torch.stack((byte & 0xF, byte >> 4), dim=1).reshape(64, 128)
    q4 = torch.where(nibbles > 7, nibbles - 16, nibbles).float()
    assert int(q4.min()) >= -8 and int(q4.max()) <= 7
    s1, s2 = t[p + "weight_scale"], t[p + "weight_scale_second"]
    assert torch.count_nonzero(t[p + "weight_offset"]) == 0 and torch.count_nonzero(t[p + "weight_offset_second"]) == 0
    deq = q4 * s2.repeat_interleave(32, dim=1) * s1
    bound = s1 / 2 + s1 * s2.repeat_interleave(32, dim=1) / 2
    inside = q4.abs() < 7  # where the int4 clamp did not bite
    assert ((deq - down).abs() <= bound + 1e-6)[inside].all()
    # scale_bias = 8 · bf16(s1) · Σ_k q4·s2 over 16 column chunks of this row-parallel layer, whatever
    # tp_size (16 chunks serve every tp_size up to 16); one column for the other linears.
    assert t[p + "scale_bias"].shape == (64, 16)
    integers = (q4 * s2.repeat_interleave(32, dim=1)).reshape(64, 16, 8).sum(dim=2)
    assert torch.equal(t[p + "scale_bias"], 8 * s1.to(torch.bfloat16).float() * integers)
    assert t["model.layers.0.mlp.gate_proj.scale_bias"].shape == (128, 1)


def test_w8a8s_weights_are_4bit_with_protected_outliers(tmp_path, tiny_tokenizer):
    float_model = build_tiny_llama("llama2")
    w = float_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model, result = _quantize(tiny_tokenizer, model=float_model, co_sparse=True, fraction=0.02)
    layer = model.model.layers[0].self_attn.q_proj
    n_outliers = int(torch.tensor(0.02 * w.numel()).ceil())
    threshold = w.abs().flatten().kthvalue(w.numel() - n_outliers).values
    inliers = w.abs() <= threshold
    assert int(layer.weight[inliers].abs().max()) <= 7
    assert 0 < int((layer.weight.abs() > 7).sum()) <= n_outliers
    # The saved deq_scale carries weight_scale = max|inlier of the row| / 7.
    weight_scale = torch.where(inliers, w, torch.zeros_like(w)).abs().amax(dim=1) / 7
    deq = layer.deq_scale.to(torch.int32).view(torch.float32)
    assert torch.allclose(deq, layer.input_scale * weight_scale, rtol=1e-6)
    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    t = load_file(tmp_path / "out" / "quant_model_weight_w8a8s.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight_scale" not in t


def test_mm_tensor_gives_one_weight_scale_per_layer(tiny_tokenizer):
    per_tensor, _ = _quantize(tiny_tokenizer, mm_tensor=True)
    default, _ = _quantize(tiny_tokenizer)
    s = per_tensor.model.layers[0].self_attn.q_proj.weight_scale
    assert torch.all(s == s[0])
    assert default.model.layers[0].self_attn.q_proj.weight_scale.unique().numel() == N


def test_asymmetric_w8a16_weights(tiny_tokenizer):
    float_model = build_tiny_llama("llama2")
    w = float_model.model.layers[0].mlp.up_proj.weight.detach().clone()
    model, _ = _quantize(tiny_tokenizer, model=float_model, a_bit=16, w_sym=False)
    layer = model.model.layers[0].mlp.up_proj
    assert torch.count_nonzero(layer.weight_offset) > 0
    assert int(layer.weight.min()) == -128 or int(layer.weight.max()) == 127  # the full 256-level range
    assert ((layer.dequantized_weight() - w).abs() <= layer.weight_scale / 2 + 1e-6).all()


def test_group_size_128_on_a_wider_model(tmp_path, tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from tiny_models import tiny_llama_config

    config = tiny_llama_config("llama2")
    config.hidden_size, config.intermediate_size, config.head_dim = 128, 256, 32
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    recipe = dict(w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False, group_size=128)
    _, result = _quantize(tiny_tokenizer, model=model, **recipe)
    layer = model.model.layers[0].mlp.down_proj
    assert layer.weight_scale.shape == (128, 2) and layer.group_size == 128
    out = save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    x = _prompt(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(model(x).logits, load_quantized(out.directory).model(x).logits)


def test_group_size_that_does_not_divide_names_the_valid_values(tiny_tokenizer):
    from quant.errors import QuantInputError

    with pytest.raises(QuantInputError, match=r"group_size: 128 does not divide in_features 64 .* valid .*: 32, 64"):
        _quantize(tiny_tokenizer, w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False, group_size=128)


def test_sharded_output_reloads_identically_to_unsharded(tmp_path, tiny_tokenizer):
    model, result = _quantize(tiny_tokenizer, family="llama3", anti_method="m1")
    whole = save_quantized(model, tiny_tokenizer, tmp_path / "whole", quant_type=result.quant_type)
    limit_gb = 0.0001  # ~107 kB: the tiny model's ~370 kB of tensors in several shards
    sharded = save_quantized(
        model, tiny_tokenizer, tmp_path / "sharded", quant_type=result.quant_type, part_file_size=limit_gb
    )
    count = len(sharded.weight_files)
    assert count > 2
    assert [p.name for p in sharded.weight_files] == [
        f"quant_model_weight_w8a8-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)
    ]
    assert not (tmp_path / "sharded" / "quant_model_weight_w8a8.safetensors").exists()
    index = json.loads((tmp_path / "sharded" / "quant_model_weight_w8a8.safetensors.index.json").read_text())
    whole_tensors = load_file(whole.weight_files[0])
    assert set(index["weight_map"]) == set(whole_tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in whole_tensors.values())
    for path in sharded.weight_files:
        shard = load_file(path)
        assert all(index["weight_map"][name] == path.name for name in shard)
        nbytes = sum(t.numel() * t.element_size() for t in shard.values())
        assert nbytes <= limit_gb * 1024**3 or len(shard) == 1
        assert all(torch.equal(t, whole_tensors[name]) for name, t in shard.items())
    x = _prompt(tiny_tokenizer)
    with torch.no_grad():
        expected = load_quantized(whole.directory).model(x).logits
        assert torch.equal(load_quantized(sharded.directory).model(x).logits, expected)
        assert torch.equal(model(x).logits, expected)


def test_mindie_format_names_and_norm_entries(tmp_path, tiny_tokenizer):
    model, result = _quantize(tiny_tokenizer, anti_method="m1")
    out = save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type, mindie_format=True)
    assert out.description_file.name == "quant_model_description_w8a8.json"
    assert not (tmp_path / "out" / "quant_model_description.json").exists()
    desc = json.loads(out.description_file.read_text())
    assert "version" not in desc
    tensors = load_file(tmp_path / "out" / "quant_model_weight_w8a8.safetensors")
    norm = "model.layers.0.input_layernorm"
    assert torch.equal(tensors[f"{norm}.module.weight"], tensors[f"{norm}.weight"])
    assert torch.equal(tensors[f"{norm}.module.bias"], tensors[f"{norm}.bias"])
    # Every norm's copies are typed with the model's type, model.norm's too although lm_head stays
    # float (as the reference writes them); the four keys of a norm are written together, in its place.
    assert desc[f"{norm}.module.weight"] == desc["model.norm.module.bias"] == "W8A8"
    assert desc[f"{norm}.weight"] == "FLOAT"
    keys = list(desc)
    i = keys.index(f"{norm}.weight")
    assert keys[i : i + 4] == [f"{norm}.weight", f"{norm}.bias", f"{norm}.module.weight", f"{norm}.module.bias"]
    assert keys[-5:] == ["model.norm.weight", "model.norm.bias", "model.norm.module.weight", "model.norm.module.bias",
                         "lm_head.weight"]  # fmt: skip
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantize" not in config  # added by quant-llama (runner), see test_cli_writes_sharded_mindie_w4a8_dynamic
    x = _prompt(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(model(x).logits, load_quantized(out.directory).model(x).logits)


def test_cli_writes_sharded_mindie_w4a8_dynamic(tiny_model_dir, calib_file, tmp_path, capsys):
    from quant.cli import main

    out = tmp_path / "out"
    argv = ["--model_path", tiny_model_dir, "--save_directory", out, "--calib_file", calib_file,
        "--w_bit", "4", "--a_bit", "8", "--is_lowbit", "True", "--open_outlier", "False", "--group_size", "32",
        "--is_dynamic", "True", "--anti_method", "m1", "--tp_size", "2", "--part_file_size", "0.0001",
        "--mindie_format",
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    desc = json.loads((out / "quant_model_description_w4a8_dynamic.json").read_text())
    assert desc["model_quant_type"] == "W4A8_DYNAMIC" and desc["group_size"] == 32
    index = json.loads((out / "quant_model_weight_w4a8_dynamic.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert index["weight_map"].keys() == {k for k in desc if k not in ("model_quant_type", "group_size")}
    reloaded = load_quantized(out)
    assert reloaded.model.model.layers[0].self_attn.o_proj.scale_bias.shape == (64, 16)
    config = json.loads((out / "config.json").read_text())
    assert config["quantize"] == "w4a8_dynamic"
    assert config["quantization_config"]["group_size"] == 32 and config["quantization_config"]["w_bit"] == 4
    layer_report = json.loads((out / "quant_layer_report.json").read_text())
    assert all(r["weight_sqnr_db"] > 10 for r in layer_report if r["status"] == "quantized")
