"""quantize → save → reload, the saved format (SPEC §7), act_method 1 and float fallback."""

import json

import pytest
import torch
from safetensors.torch import load_file

from quant.config import QuantConfig
from quant.export import save_quantized
from quant.pipeline import quantize
from quant.quantizers import int64_bits_as_float
from quant.reload import load_quantized
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
    "Ghost in the Shell is an anime film.",
]


def _quantize(model, tokenizer, **kwargs):
    cfg = QuantConfig(calib_texts=TEXTS, **kwargs)
    return quantize(model, tokenizer, cfg)


@pytest.mark.parametrize("a_bit", [8, 16])
def test_save_reload_gives_identical_logits(tmp_path, tiny_tokenizer, a_bit):
    model = build_tiny_llama("llama3")
    result = _quantize(model, tiny_tokenizer, anti_method="m1", a_bit=a_bit)
    out = save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    x = tiny_tokenizer("Ghost in the Shell was produced in 1995", return_tensors="pt").input_ids
    reloaded = load_quantized(out.directory)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded.model(x).logits)


def test_w8a8_tensors_match_spec(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    result = _quantize(model, tiny_tokenizer, anti_method="m1")
    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    tensors = load_file(tmp_path / "out" / "quant_model_weight_w8a8.safetensors")
    desc = json.loads((tmp_path / "out" / "quant_model_description.json").read_text())
    assert desc["model_quant_type"] == "W8A8" and desc["version"] == "1.0.0"
    assert set(desc) - {"model_quant_type", "version"} == set(tensors)
    p = "model.layers.0.self_attn.q_proj"
    n, k = 64, 64
    expected = {
        "weight": (torch.int8, (n, k)),
        "weight_scale": (torch.float32, (n, 1)),
        "weight_offset": (torch.float32, (n, 1)),
        "input_scale": (torch.float32, (1,)),
        "input_offset": (torch.float32, (1,)),
        "quant_bias": (torch.int32, (n,)),
        "deq_scale": (torch.int64, (n,)),
    }
    for suffix, (dtype, shape) in expected.items():
        t = tensors[f"{p}.{suffix}"]
        assert (t.dtype, tuple(t.shape)) == (dtype, shape), suffix
        assert desc[f"{p}.{suffix}"] == "W8A8"
    # deq_scale holds the float32 bits of input_scale * weight_scale.
    deq = int64_bits_as_float(tensors[f"{p}.deq_scale"])
    assert torch.equal(deq, (tensors[f"{p}.input_scale"] * tensors[f"{p}.weight_scale"].squeeze(1)).float())
    # quant_bias = round(0 / deq - sum_k W_int * input_offset) for a bias-free linear.
    w_sum = tensors[f"{p}.weight"].double().sum(dim=1)
    assert torch.equal(tensors[f"{p}.quant_bias"], torch.round(-w_sum * float(tensors[f"{p}.input_offset"])).int())
    # Default llama2 fallback: every down_proj and lm_head stay float; norms got a zero bias.
    assert desc["model.layers.0.mlp.down_proj.weight"] == "FLOAT"
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == torch.float32
    assert desc["lm_head.weight"] == "FLOAT"
    assert desc["model.norm.bias"] == "FLOAT"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "out" / name).is_file(), name


def test_w8a16_tensors_match_spec(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    result = _quantize(model, tiny_tokenizer, a_bit=16)
    assert result.quant_type == "W8A16"
    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type="W8A16")
    tensors = load_file(tmp_path / "out" / "quant_model_weight_w8a16.safetensors")
    p = "model.layers.1.mlp.down_proj"  # a_bit 16: no default fallback, down_proj is quantized
    assert {k.rpartition(".")[2] for k in tensors if k.startswith(p + ".")} == {
        "weight",
        "weight_scale",
        "weight_offset",
    }
    assert tensors[f"{p}.weight"].dtype == torch.int8
    assert "model.norm.bias" not in tensors  # no anti-outlier: norms keep no bias


def test_int_arithmetic_matches_fake_quant_forward(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    _quantize(model, tiny_tokenizer, anti_method="m1")
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 64)
    x_int = torch.clamp(torch.round(x / layer.input_scale + layer.input_offset), -128, 127).long()
    acc = x_int @ layer.weight.long().T + layer.quant_bias.long()  # exact integer arithmetic
    expected = int64_bits_as_float(layer.deq_scale) * acc.double()
    assert torch.allclose(layer(x).double(), expected, rtol=1e-5, atol=1e-6)


# act_method 1 as the reference's running whole-model pass: tests/quant/test_running_calibration.py.


def test_disable_level_takes_highest_range_params_ties_in_module_order(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    result = _quantize(model, tiny_tokenizer, disable_level="L2", disable_names=[])
    level = [r for r in result.layers if r.reason.startswith("disable_level")]
    assert len(level) == 2
    others = [r.range_param for r in result.layers if r.status == "quantized"]
    assert min(r.range_param for r in level) >= max(others)
    by_name = {r.name: r for r in result.layers}
    # q/k/v share one input, hence one range_param: a tie resolved in module order.
    if level[0].name.endswith("q_proj"):
        assert level[1].name == level[0].name.replace("q_proj", "k_proj")
    assert by_name["lm_head"].reason == "disable_last_linear"


def test_unknown_disable_names_stop_with_clear_error(tiny_tokenizer):
    from quant.errors import QuantInputError

    with pytest.raises(QuantInputError, match="disable_names: no linear layer named model.layers.9.mlp.down_proj"):
        _quantize(build_tiny_llama("llama2"), tiny_tokenizer, disable_names=["model.layers.9.mlp.down_proj"])


def test_tied_embeddings_are_saved_as_two_tensors(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    result = _quantize(model, tiny_tokenizer)
    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    tensors = load_file(tmp_path / "out" / "quant_model_weight_w8a8.safetensors")
    assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    reloaded = load_quantized(tmp_path / "out")
    x = torch.tensor([[1, 5, 9]])
    assert torch.equal(model(x).logits, reloaded.model(x).logits)


def test_save_refuses_non_empty_directory_and_is_atomic(tmp_path, tiny_tokenizer, monkeypatch):
    from quant import export
    from quant.errors import QuantInputError

    model = build_tiny_llama("llama2")
    result = _quantize(model, tiny_tokenizer)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(QuantInputError, match="save_directory: .* is not empty"):
        save_quantized(model, tiny_tokenizer, target, quant_type=result.quant_type)
    assert (target / "keep.txt").read_text() == "precious"

    # A save interrupted half-way leaves neither the target nor a temporary directory behind.
    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_save_tokenizer", boom)
    with pytest.raises(RuntimeError):
        save_quantized(model, tiny_tokenizer, tmp_path / "new", quant_type=result.quant_type)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
