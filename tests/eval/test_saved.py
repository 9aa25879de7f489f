"""Evaluating what was saved: the reloaded output directory scores exactly like the in-memory model."""

from __future__ import annotations

import pytest
import torch

from eval.boolq import evaluate_boolq
from eval.fingerprint import check_model_matches_saved, combine_digests, tensor_digests
from quant.config import QuantConfig
from quant.model_io import LoadedModel
from quant.pipeline import quantize
from quant.reload import load_quantized, read_tensors
from quant.runner import save_result
from tiny_models import build_tiny_llama

CALIB = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
    "Ghost in the Shell is an anime film.",
]


@pytest.fixture()
def saved_w8a8(tmp_path, tiny_tokenizer):
    """A tiny LLaMA quantized W8A8 with SmoothQuant and saved: (in-memory model, output directory)."""
    model = build_tiny_llama("llama3")
    cfg = QuantConfig(calib_texts=CALIB, anti_method="m1", save_directory=str(tmp_path / "out"))
    result = quantize(model, tiny_tokenizer, cfg)
    loaded = LoadedModel(model, tiny_tokenizer, "tiny", torch.float32)
    saved = save_result(result, loaded, cfg.save_directory)
    return model, saved.directory


def test_saved_directory_scores_like_the_in_memory_model(saved_w8a8, tiny_tokenizer, tiny_boolq_file):
    model, directory = saved_w8a8
    reloaded = load_quantized(directory)
    in_memory = evaluate_boolq(model, tiny_tokenizer, data_path=tiny_boolq_file)
    from_disk = evaluate_boolq(reloaded.model, reloaded.tokenizer, data_path=tiny_boolq_file)
    assert from_disk.per_example == in_memory.per_example  # bit-identical log-likelihoods
    assert from_disk.accuracy == in_memory.accuracy
    assert from_disk.config["bos_prepended"] == in_memory.config["bos_prepended"]


def test_model_matches_saved_weights(saved_w8a8):
    model, directory = saved_w8a8
    check = check_model_matches_saved(model, directory)
    assert check.model_sha256 == check.saved_sha256
    assert check.saved_sha256 == combine_digests(tensor_digests(read_tensors(directory, "W8A8")))
    assert check.n_tensors == len(model.state_dict())
    assert check.to_tags()["eval_matches_saved"] == "true"
    assert check_model_matches_saved(load_quantized(directory).model, directory) == check


def test_a_changed_tensor_is_caught_and_named(saved_w8a8):
    model, directory = saved_w8a8
    layer = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        layer.input_scale.mul_(1.5)  # e.g. calibration re-run after the save
    with pytest.raises(RuntimeError, match=r"model\.layers\.1\.self_attn\.q_proj\.input_scale"):
        check_model_matches_saved(model, directory)
