"""Reading a checkpoint module by module into a meta skeleton gives load_model's weights, bit for bit."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from quant.arch import decoder_layers
from quant.checkpoint import meta_names, open_model, release_module
from quant.model_io import load_model
from tiny_models import build_tiny_llama


def _read_all(streamed) -> None:
    """Read the model the way the layer-wise path does: embeddings, each layer, final norm, head."""
    streamed.load("model.embed_tokens")
    for i in range(len(decoder_layers(streamed.model))):
        streamed.load(f"model.layers.{i}")
    streamed.load("model.norm")
    streamed.load("lm_head")


def _assert_same_weights(streamed, loaded_model) -> None:
    expected = loaded_model.state_dict()
    got = streamed.model.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    x = torch.tensor([[1, 7, 42, 9]])
    assert torch.equal(streamed.model(x).logits, loaded_model(x).logits)


@pytest.mark.parametrize("tied", [False, True])
def test_sharded_safetensors_read_layer_by_layer_match_load_model(tmp_path, tiny_tokenizer, tied):
    model = build_tiny_llama("llama3", tie_word_embeddings=tied, num_layers=3)
    model.save_pretrained(tmp_path, max_shard_size="60KB")  # several shards plus the index
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    tiny_tokenizer.save_pretrained(tmp_path)
    streamed = open_model(str(tmp_path))
    assert len(meta_names(streamed.model)) == len(list(streamed.model.parameters()))  # nothing read yet
    layer = streamed.load("model.layers.1")
    assert not meta_names(layer)
    assert all(p.is_meta for p in decoder_layers(streamed.model)[0].parameters())
    release_module(layer)
    assert all(p.is_meta for p in layer.parameters())
    _read_all(streamed)
    _assert_same_weights(streamed, load_model(str(tmp_path)).model)


def test_bf16_checkpoint_reads_as_float32_like_load_model(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2").to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    streamed = open_model(str(tmp_path))
    loaded = load_model(str(tmp_path))
    assert streamed.original_dtype == loaded.original_dtype == torch.bfloat16
    _read_all(streamed)
    _assert_same_weights(streamed, loaded.model)


def _transformers_gguf_load(path):
    """The model as transformers loads a GGUF file itself (what load_model did before reading it tensor by tensor)."""
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.slow
def test_gguf_read_layer_by_layer_or_whole_matches_transformers_loading(smollm2_gguf):
    reference = _transformers_gguf_load(smollm2_gguf)
    streamed = open_model(str(smollm2_gguf))
    _read_all(streamed)
    _assert_same_weights(streamed, reference)
    del streamed
    loaded = load_model(str(smollm2_gguf)).model  # the whole model, tensor by tensor
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied as transformers ties it
    assert loaded.config.to_dict() == reference.config.to_dict()
    assert loaded.generation_config.to_dict() == reference.generation_config.to_dict()
    assert {n: b.dtype for n, b in loaded.named_buffers()} == {n: b.dtype for n, b in reference.named_buffers()}
    for (name, ours), (_, theirs) in zip(loaded.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(ours, theirs), name
    _assert_same_weights(SimpleNamespace(model=loaded), reference)
