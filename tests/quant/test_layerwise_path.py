"""The layer-wise path writes the in-memory path's files byte for byte, for every scheme and method."""

import hashlib
import re
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


def _cli(checkpoint, out, calib_file, *extra) -> int:
    from quant.cli import main

    argv = ["--model_path", checkpoint, "--save_directory", out, "--calib_file", calib_file,
            "--anti_method", "m2", "--disable_level", "L1", *extra]  # fmt: skip
    return main([str(a) for a in argv])


def test_cli_layerwise_false_and_true_and_spilled_write_the_same_files(tmp_path, tiny_tokenizer, calib_file):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, "llama3.1")
    out = tmp_path / "out"
    assert _cli(checkpoint, out, calib_file, "--layerwise", "False") == 0
    in_memory = _files(out)
    shutil.rmtree(out)
    assert _cli(checkpoint, out, calib_file) == 0
    assert _files(out) == in_memory
    shutil.rmtree(out)
    offload = tmp_path / "offload"
    assert _cli(checkpoint, out, calib_file, "--activation_budget_gb", "1e-7", "--offload_dir", offload) == 0
    assert _files(out) == in_memory
    assert list(offload.iterdir()) == []


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--activation_budget_gb", "-1", "activation_budget_gb: .*a number of GB > 0"),
        ("--activation_budget_gb", "lots", "activation_budget_gb: .*a number"),
        ("--layerwise", "maybe", "layerwise: .*True, False"),
    ],
)
def test_cli_layerwise_knobs_reject_bad_values(tmp_path, tiny_tokenizer, calib_file, capsys, flag, value, message):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer)
    capsys.readouterr()  # the checkpoint writer's own progress output
    with pytest.raises(SystemExit) as exit_info:
        _cli(checkpoint, tmp_path / "out", calib_file, flag, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)
    assert not (tmp_path / "out").exists()


def test_every_module_is_read_onto_the_execution_device(tmp_path, tiny_tokenizer, monkeypatch):
    """The device logic without a device: every read goes to options.device, and --device_type
    becomes that device (resolve_device faked to hand back the CPU under another name)."""
    from quant import runner
    from quant.checkpoint import StreamedModel

    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, "llama3")
    seen = []
    original = StreamedModel.load

    def recording_load(self, prefix, device="cpu"):
        seen.append((prefix, torch.device(device)))
        return original(self, prefix, device)

    asked = []
    monkeypatch.setattr(StreamedModel, "load", recording_load)
    monkeypatch.setattr(runner, "resolve_device", lambda device_type: asked.append(device_type) or torch.device("cpu"))
    cfg = QuantConfig.from_dict(
        dict(model_path=str(checkpoint), save_directory=str(tmp_path / "out"), calib_texts=TEXTS, device_type="cuda")
    )
    monkeypatch.setattr(runner, "open_model", lambda path, device_type, **kw: open_model(path, "cpu", **kw))
    runner.quantize_layerwise_to_directory(cfg)
    assert asked == ["cuda"]
    assert [p for p, _ in seen] == [
        "model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"
    ]  # fmt: skip
    assert {d for _, d in seen} == {torch.device("cpu")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layerwise_on_cuda_matches_in_memory_on_cuda(tmp_path, tiny_tokenizer):
    checkpoint = save_checkpoint(tmp_path, tiny_tokenizer, "llama3")
    recipe = dict(w_bit=8, a_bit=8, anti_method="m1", device_type="cuda", disable_level="L1")
    out = tmp_path / "out"
    cfg = QuantConfig.from_dict(dict(model_path=str(checkpoint), save_directory=str(out), calib_texts=TEXTS, **recipe))
    loaded = load_model(str(checkpoint), device_type="cuda")
    save_result(quantize(loaded.model, loaded.tokenizer, cfg), loaded, str(out))
    expected = _files(out)
    shutil.rmtree(out)
    from quant.runner import quantize_layerwise_to_directory

    quantize_layerwise_to_directory(cfg)
    assert _files(out) == expected


@pytest.mark.slow
def test_gguf_source_layerwise_matches_in_memory(tmp_path, smollm2_gguf):
    """The real GGUF model, 2 calibration texts: the same files both ways (config.json included:
    transformers' record of reading a GGUF file is not written)."""
    out = tmp_path / "out"
    cfg = QuantConfig.from_dict(
        dict(model_path=str(smollm2_gguf), save_directory=str(out), calib_texts=TEXTS[:2], anti_method="m1")
    )
    loaded = load_model(str(smollm2_gguf))
    save_result(quantize(loaded.model, loaded.tokenizer, cfg), loaded, str(out))
    expected = _files(out)
    assert "quantization_config" not in (out / "config.json").read_text()
    shutil.rmtree(out)
    from quant.runner import quantize_layerwise_to_directory

    quantize_layerwise_to_directory(cfg)
    assert _files(out) == expected
