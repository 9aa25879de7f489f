"""The layer-wise path writes the in-memory path's files byte for byte, for every scheme and method."""

import hashlib
import shutil

import pytest
import torch

from quant.checkpoint import open_model
from quant.config import QuantConfig
from quant.export import ModelWriter
from quant.model_io import load_model
from quant.pipeline import quantize
from quant.runner import output_extras, save_result
from quant.streaming import LayerwiseOptions, quantize_layerwise
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "Ethanol fuel takes energy to produce from biomass grown collected and dried.",
    "There are 15 trees in the grove.",
    "A passage about history, science, sports, music and television.",
    "Ghost in the Shell is an anime film produced by Production I.G in 1995.",
]


def _files(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def save_checkpoint(tmp_path, tokenizer, family="llama2", tied=False, num_layers=2):
    path = tmp_path / "ckpt"
    build_tiny_llama(family, tie_word_embeddings=tied, num_layers=num_layers).save_pretrained(
        path, max_shard_size="100KB"
    )
    tokenizer.save_pretrained(path)
    return path


def in_memory_and_layerwise(tmp_path, checkpoint, recipe, options=None):
    """Both paths' outputs for one recipe, each written to the same save_directory in turn."""
    out = tmp_path / "out"
    cfg = QuantConfig.from_dict(dict(model_path=str(checkpoint), save_directory=str(out), calib_texts=TEXTS, **recipe))
    loaded = load_model(str(checkpoint))
    save_result(quantize(loaded.model, loaded.tokenizer, cfg), loaded, str(out))
    expected = _files(out)
    shutil.rmtree(out)
    streamed = open_model(str(checkpoint))
    writer = ModelWriter(
        out, quant_type=cfg.quant_type, part_file_size=cfg.part_file_size, mindie_format=cfg.mindie_format
    )
    result = quantize_layerwise(streamed, loaded.tokenizer, cfg, writer, options)
    writer.finish(result.model, loaded.tokenizer, original_dtype=streamed.original_dtype, **output_extras(result))
    return expected, _files(out), result


SCHEMES = {
    "w8a8": dict(w_bit=8, a_bit=8),
    "w8a8-act2": dict(w_bit=8, a_bit=8, act_method=2),
    "w8a8-act3": dict(w_bit=8, a_bit=8, act_method=3),
    "w8a16": dict(w_bit=8, a_bit=16),
    "w8a8-dynamic-kv": dict(w_bit=8, a_bit=8, is_dynamic=True, use_kvcache_quant=True),
    "w4a8-dynamic": dict(w_bit=4, a_bit=8, is_dynamic=True, is_lowbit=True, open_outlier=False, group_size=32),
    "w4a16": dict(w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False, group_size=32, w_sym=False),
    "w8a8s": dict(w_bit=4, a_bit=8, co_sparse=True, fraction=0.011, do_smooth=True, anti_method="none"),
    "w8a8-mix": dict(w_bit=8, a_bit=8, pdmix=True),
    "w8a8-fa-mindie-sharded": dict(w_bit=8, a_bit=8, use_fa_quant=True, mindie_format=True, part_file_size=0.0001),
    "w8a8-level2-head": dict(w_bit=8, a_bit=8, disable_level="L2", disable_last_linear=False),
    "w8a8-threshold": dict(w_bit=8, a_bit=8, disable_threshold=1.0),
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_matches_the_in_memory_path(tmp_path, tiny_tokenizer, scheme):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, "llama3", tied=True)
    expected, got, _ = in_memory_and_layerwise(tmp_path, checkpoint, {"anti_method": "m1", **SCHEMES[scheme]})
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert got == expected


@pytest.mark.parametrize("method", ["none", "m1", "m2", "m3", "m4", "m5", "m6"])
def test_every_anti_outlier_method_matches_the_in_memory_path(tmp_path, tiny_tokenizer, method):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, "llama2")
    expected, got, _ = in_memory_and_layerwise(tmp_path, checkpoint, dict(w_bit=8, a_bit=8, anti_method=method))
    assert got == expected


@pytest.mark.parametrize("family,tied", [("llama2", False), ("llama3", False), ("llama3.1", False), ("llama2", True)])
def test_every_family_matches_with_level_fallback(tmp_path, tiny_tokenizer, family, tied):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, family, tied=tied)
    recipe = dict(w_bit=8, a_bit=8, anti_method="m6", disable_level="L3")
    expected, got, result = in_memory_and_layerwise(tmp_path, checkpoint, recipe)
    assert got == expected
    assert sum("disable_level" in reason for reason in result.float_layers.values()) == 3


def test_spilled_hidden_states_give_the_same_files(tmp_path, tiny_tokenizer):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, "llama3")
    spill = tmp_path / "spill"
    created = []
    original = torch.save

    def recording_save(obj, path, *args, **kwargs):
        created.append(path)
        return original(obj, path, *args, **kwargs)

    options = LayerwiseOptions(activation_budget_bytes=1024, spill_dir=spill)  # below one boundary's 6 batches
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", recording_save)
        recipe = dict(w_bit=8, a_bit=8, anti_method="m3", use_kvcache_quant=True, disable_level="L1")
        expected, got, _ = in_memory_and_layerwise(tmp_path, checkpoint, recipe, options)
    assert got == expected
    assert len(created) >= 3 * 6  # every stream's boundaries went to disk
    assert list(spill.iterdir()) == []  # and were removed
