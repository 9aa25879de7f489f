"""Several devices for evaluation: the layer placement plan (fake devices, meta models) and its dispatch."""

import pytest
import torch

from quant.checkpoint import empty_model
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.export import save_quantized
from quant.pipeline import quantize
from quant.placement import _tensor_bytes, dispatch, placement_units, plan_placement, spread_over_devices
from quant.reload import load_quantized
from tiny_models import build_tiny_llama, tiny_llama_config

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes"]
DEVICES = ("cuda:0", "cuda:1", "cuda:2")


def _meta_model(layers: int = 12):
    return empty_model(tiny_llama_config("llama3", num_layers=layers), torch.float32)


def _layer_bytes(model) -> int:
    return _tensor_bytes(model.model.layers[0])


def test_layers_go_in_order_and_fill_each_device_within_its_budget():
    model = _meta_model(12)
    layer = _layer_bytes(model)
    embed, head = _tensor_bytes(model.model.embed_tokens), _tensor_bytes(model.lm_head)
    budgets = {"cuda:0": embed + 4 * layer, "cuda:1": 5 * layer, "cuda:2": 3 * layer + head + 10_000}
    plan = plan_placement(model, budgets)
    assert list(plan.device_map) == [name for name, _ in placement_units(model)]  # every module placed
    layers = [plan.device_map[f"model.layers.{i}"] for i in range(12)]
    assert layers == ["cuda:0"] * 4 + ["cuda:1"] * 5 + ["cuda:2"] * 3
    assert plan.device_map["model.embed_tokens"] == "cuda:0" and plan.device_map["lm_head"] == "cuda:2"
    assert all(plan.bytes_per_device[d] <= budgets[d] for d in budgets)
    assert sum(plan.bytes_per_device.values()) == _tensor_bytes(model)


def test_quantized_layers_count_at_integer_size(tiny_tokenizer):
    """Two devices with room for 4 float layers cannot take the 6-layer float model, but take it quantized."""
    model = build_tiny_llama("llama2", num_layers=6)
    float_layer = _layer_bytes(model)
    budgets = {"cuda:0": _tensor_bytes(model) - 4 * float_layer, "cuda:1": 2 * float_layer}
    with pytest.raises(QuantInputError, match="does not fit"):
        plan_placement(model, budgets)
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, disable_names=[]))
    assert _layer_bytes(model) < float_layer / 2.5  # int8 weights (per-channel tensors weigh in at this width)
    plan = plan_placement(model, budgets)
    assert set(plan.device_map.values()) <= set(budgets)


def test_tied_lm_head_stays_with_the_embeddings():
    model = build_tiny_llama("llama3", num_layers=4, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    layer = _layer_bytes(model)
    embed = _tensor_bytes(model.model.embed_tokens)
    plan = plan_placement(model, {"cuda:0": embed + 2 * layer, "cuda:1": 2 * layer + 10_000})
    assert plan.device_map["lm_head"] == plan.device_map["model.embed_tokens"] == "cuda:0"
    assert plan.device_map["model.layers.3"] == "cuda:1"


def test_a_model_that_does_not_fit_is_one_clear_error():
    model = _meta_model(8)
    with pytest.raises(QuantInputError, match=r"^devices: the model .* does not fit on cuda:0, cuda:1"):
        plan_placement(model, {"cuda:0": 3 * _layer_bytes(model), "cuda:1": 3 * _layer_bytes(model)})
    with pytest.raises(QuantInputError, match="^max_memory: no budget for cuda:1"):
        spread_over_devices(model, ["cuda:0", "cuda:1"], {"cuda:0": 10**12})


def test_dispatch_keeps_the_logits(tiny_tokenizer):
    model = build_tiny_llama("llama2", num_layers=3)
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS))
    ids = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        before = model(ids).logits
        plan = plan_placement(model, {"cpu": 10**9})
        dispatch(model, plan)
        after = model(ids).logits
    assert set(plan.device_map.values()) == {"cpu"}
    assert torch.equal(after, before)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_cuda_devices_evaluate_a_split_quantized_model(tiny_tokenizer):
    model = build_tiny_llama("llama2", num_layers=4)
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS))
    ids = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        cpu = model(ids).logits
        rest = _tensor_bytes(model) - 4 * _layer_bytes(model)
        plan = spread_over_devices(
            model, ["cuda:0", "cuda:1"], {"cuda:0": rest + 2 * _layer_bytes(model), "cuda:1": 10**9}
        )
        assert set(plan.device_map.values()) == {"cuda:0", "cuda:1"}
        assert all(hasattr(model.get_submodule(name), "_hf_hook") for name in plan.device_map)  # inputs follow
        split = model(ids.to("cuda:0")).logits.cpu()
    assert torch.allclose(split, cpu, rtol=1e-4, atol=1e-4 * float(cpu.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_cuda_device_with_its_default_budget(tiny_tokenizer):
    model = build_tiny_llama("llama2", num_layers=2)
    plan = spread_over_devices(model, ["cuda:0"])
    assert set(plan.device_map.values()) == {"cuda:0"}
    assert next(model.parameters()).device.type == "cuda"


def test_reload_spreads_over_the_devices_given(tiny_tokenizer, tmp_path):
    model = build_tiny_llama("llama2", num_layers=3)
    result = quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS))
    save_quantized(model, tiny_tokenizer, tmp_path / "out", quant_type=result.quant_type)
    ids = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        expected = model(ids).logits
        placed = load_quantized(tmp_path / "out", devices=["cpu"], max_memory={"cpu": 10**9}).model
        assert torch.equal(placed(ids).logits, expected)
    with pytest.raises(QuantInputError, match="^devices: the model"):
        load_quantized(tmp_path / "out", devices=["cpu"], max_memory={"cpu": 1000})
