"""A shared copy holds the source's tensors; smoothing and quantizing it leave the source bit for bit."""

import hashlib

import pytest
import torch

from quant.config import QuantConfig
from quant.memo import MemoryMemo
from quant.model_copy import shared_copy
from quant.pipeline import quantize
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
]
RECIPES = {
    "m1": dict(anti_method="m1"),
    "m2": dict(anti_method="m2"),
    "m3": dict(anti_method="m3", anti_params={"n_grid": 4}),
    "m4": dict(anti_method="m4"),
    "m5": dict(anti_method="m5"),
    "m6_kv": dict(anti_method="m6", use_kvcache_quant=True),
    "fa": dict(anti_method="m1", use_fa_quant=True),
    "w4a8_dynamic": dict(w_bit=4, is_lowbit=True, open_outlier=False, group_size=32, is_dynamic=True),
    "w8a8_mix_tp2": dict(pdmix=True, tp_size=2),
}


def _digest(model: torch.nn.Module) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().view(torch.uint8).numpy()).hexdigest()
            for k, v in model.state_dict().items()}  # fmt: skip


def _storages(model: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in model.state_dict().values()}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_smoothing_and_quantizing_shared_copies_leave_the_source_as_it_was(recipe, tiny_tokenizer):
    """With a sharing memo (a sweep's), the pipeline smooths and quantizes shared copies of ``source``."""
    source = build_tiny_llama("llama2")
    before = _digest(source)
    cfg = QuantConfig(calib_texts=TEXTS, **RECIPES[recipe])
    memo = MemoryMemo()
    jobs = [quantize(source, tiny_tokenizer, cfg, memo).model for _ in range(2)]  # the 2nd reuses the smoothing
    assert _digest(source) == before
    # The same recipe on the model itself (no sharing) gives the same quantized state: sharing changes nothing.
    reference = quantize(build_tiny_llama("llama2"), tiny_tokenizer, cfg).model
    assert _digest(jobs[0]) == _digest(reference) == _digest(jobs[1])


def test_a_shared_copy_holds_the_source_tensors_until_a_step_replaces_them(tiny_tokenizer):
    source = build_tiny_llama("llama2")
    copy = shared_copy(source)
    assert copy is not source and copy.model.layers[0] is not source.model.layers[0]
    assert copy.model.layers[0].mlp.down_proj.weight is source.model.layers[0].mlp.down_proj.weight
    cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1")
    quantize(copy, tiny_tokenizer, cfg)
    # m1 rescales q/k/v and gate/up (new tensors); the embeddings and the float-kept down_proj stay shared
    assert copy.model.embed_tokens.weight is source.model.embed_tokens.weight
    assert copy.model.layers[0].mlp.down_proj.weight is source.model.layers[0].mlp.down_proj.weight
    assert copy.model.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    shared = _storages(copy) & _storages(source)
    assert source.model.embed_tokens.weight.untyped_storage().data_ptr() in shared
