"""Model loading: HF directories, GGUF files, hub ids, the pickle policy, bad paths."""

import pytest
import torch

from quant.errors import QuantInputError
from quant.model_io import load_model, resolve_model_source
from tiny_models import build_tiny_llama


def test_hf_directory_loads_float32_with_reference_tokenizer_settings(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token == loaded.tokenizer.unk_token
    reference = build_tiny_llama("llama2")
    x = torch.tensor([[1, 7, 42]])
    assert torch.equal(loaded.model(x).logits, reference(x).logits)


def test_tokenizer_args_override_padding(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), tokenizer_args={"padding_side": "right"})
    assert loaded.tokenizer.padding_side == "right"


def test_pickle_checkpoint_refused_unless_opted_in(tmp_path, tiny_tokenizer):
    path = tmp_path / "pickled"
    model = build_tiny_llama("llama2")
    path.mkdir()
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    tiny_tokenizer.save_pretrained(path)
    with pytest.raises(QuantInputError, match="model_path: .*pickle"):
        load_model(str(path))
    assert load_model(str(path), allow_pickle=True).model is not None


def test_source_resolution(tmp_path, tiny_model_dir):
    assert resolve_model_source(str(tiny_model_dir)).kind == "hf_dir"
    assert resolve_model_source("meta-llama/Llama-2-7b-hf").kind == "hub"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_source(str(gguf)).kind == "gguf"
    assert resolve_model_source(str(tmp_path)).kind == "gguf"  # a directory holding one .gguf
    with pytest.raises(QuantInputError, match="model_path: .* does not exist"):
        resolve_model_source(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuantInputError, match="no config.json"):
        resolve_model_source(str(empty))


@pytest.mark.slow
def test_gguf_smollm2_loads_as_llama(smollm2_gguf):
    loaded = load_model(str(smollm2_gguf))
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.model.config.num_hidden_layers == 30
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    next_token = loaded.model(ids).logits[0, -1].argmax()
    assert loaded.tokenizer.decode(next_token).strip() == "Paris"
