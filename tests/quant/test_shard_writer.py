"""The streaming writer: the bytes of safetensors' own save, the same shards, module by module."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from quant.arch import decoder_layers
from quant.config import QuantConfig
from quant.export import ModelWriter, save_quantized
from quant.pipeline import quantize
from quant.shard_writer import ShardWriter, save_module_tensors
from tiny_models import build_tiny_llama

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes"]


def _mixed_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "z.weight": torch.randn(7, 5, generator=gen),
        "a.weight": torch.randint(-128, 127, (6, 4), generator=gen).to(torch.int8),
        "m.deq_scale": torch.randint(0, 2**20, (6,), generator=gen).to(torch.int64),
        "b.bias": torch.randn(3, generator=gen).to(torch.bfloat16),
        "c.half": torch.randn(5, generator=gen).to(torch.float16),
        "d.quant_bias": torch.randint(-9, 9, (4,), generator=gen).to(torch.int32),
        "e.packed": torch.randint(0, 255, (3, 2), generator=gen).to(torch.uint8),
        "f.scalar": torch.tensor(1.5),
        "g.empty": torch.zeros(0, 4),
        "h.double": torch.randn(2, generator=gen).double(),
    }


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_single_file_equals_safetensors_save_file(tmp_path):
    tensors = _mixed_tensors()
    save_file(tensors, str(tmp_path / "expected.safetensors"), metadata={"format": "pt"})
    writer = ShardWriter(tmp_path, "got.safetensors", lambda i, n: f"got-{i}-of-{n}.safetensors")
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    paths, weight_map = writer.close()
    assert [p.name for p in paths] == ["got.safetensors"]
    assert set(weight_map) == set(tensors)
    assert _sha(paths[0]) == _sha(tmp_path / "expected.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.safetensors", "got.safetensors"]  # no spill left


@pytest.mark.parametrize("max_bytes", [1, 100, 150, 10_000])
def test_shards_close_before_the_limit_and_equal_save_file(tmp_path, max_bytes):
    tensors = _mixed_tensors()
    writer = ShardWriter(tmp_path, "one.safetensors", lambda i, n: f"w-{i:05d}-of-{n:05d}.safetensors", max_bytes)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    paths, weight_map = writer.close()
    # The expected plan, greedily in order: a shard closes before it would exceed max_bytes.
    plan, size = [[]], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if plan[-1] and size + nbytes > max_bytes:
            plan, size = [*plan, []], 0
        plan[-1].append(name)
        size += nbytes
    assert [p.name for p in paths] == [f"w-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    for i, (names, path) in enumerate(zip(plan, paths, strict=True)):
        expected = tmp_path / f"expected-{i}.safetensors"
        save_file({n: tensors[n] for n in names}, str(expected), metadata={"format": "pt"})
        assert _sha(path) == _sha(expected)
        assert all(weight_map[n] == path.name for n in names)


def _module_by_module(writer: ModelWriter, model) -> None:
    writer.write(model, "model.embed_tokens")
    for i in range(len(decoder_layers(model))):
        writer.write(model, f"model.layers.{i}")
    writer.write(model, "model.norm")
    writer.write(model, "lm_head")


@pytest.mark.parametrize(
    "scheme",
    [
        dict(w_bit=8, a_bit=8, anti_method="m1", mindie_format=True, part_file_size=0.0001),
        dict(w_bit=8, a_bit=8, is_dynamic=True, use_kvcache_quant=True),
        dict(w_bit=4, a_bit=16, is_lowbit=True, group_size=32, w_sym=False, part_file_size=0.0002),
    ],
    ids=["w8a8-m1-mindie-sharded", "w8a8-dynamic-kv", "w4a16-sharded"],
)
def test_module_by_module_export_equals_whole_model_export(tmp_path, tiny_tokenizer, scheme):
    model = build_tiny_llama("llama3", tie_word_embeddings=True)
    cfg = QuantConfig.from_dict(
        dict(model_path="x", save_directory="unused", calib_texts=TEXTS, disable_names=[], **scheme)
    )
    result = quantize(model, tiny_tokenizer, cfg)
    common = dict(quant_type=result.quant_type, part_file_size=cfg.part_file_size, mindie_format=cfg.mindie_format)
    whole = save_quantized(model, tiny_tokenizer, tmp_path / "whole", **common)
    writer = ModelWriter(tmp_path / "streamed", **common)
    _module_by_module(writer, model)
    streamed = writer.finish(model, tiny_tokenizer)
    names = sorted(p.name for p in whole.directory.iterdir())
    assert names == sorted(p.name for p in streamed.directory.iterdir())
    assert len(whole.weight_files) > 1 if cfg.part_file_size else len(whole.weight_files) == 1
    for name in names:
        assert _sha(whole.directory / name) == _sha(streamed.directory / name), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dirs gone


def test_abort_leaves_nothing(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    writer = ModelWriter(tmp_path / "out", quant_type="W8A8")
    writer.write(model, "model.embed_tokens")
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tied", [False, True])
def test_module_saved_tensor_by_tensor_holds_save_model_s_tensors(tmp_path, tied):
    model = build_tiny_llama("llama3", tie_word_embeddings=tied, num_layers=2)
    save_model(model, str(tmp_path / "reference.safetensors"))
    save_module_tensors(model, tmp_path / "streamed.safetensors")
    reference, streamed = load_file(tmp_path / "reference.safetensors"), load_file(tmp_path / "streamed.safetensors")
    assert sorted(streamed) == sorted(reference)
    assert ("model.embed_tokens.weight" in streamed) is not tied  # a tied pair once, as save_model names it
    for name, tensor in reference.items():
        assert torch.equal(streamed[name], tensor), name
