"""The float baseline: what defines it (its identity) and its round trip through JSON.

Its caching is the sweep's work store (tests/sweep/test_shared_work.py, tests/sweep/test_store.py)."""

from __future__ import annotations

import json

import torch

from eval.baseline import FloatBaseline, evaluation_identity, float_baseline
from eval.boolq import boolq_identity
from eval.fingerprint import tensor_sha256
from tiny_models import build_tiny_llama


def test_baseline_round_trips_through_json(tiny_tokenizer, tiny_boolq_file, small_text_lf):
    model = build_tiny_llama("llama2")
    result = float_baseline(
        model,
        tiny_tokenizer,
        boolq={"data_path": tiny_boolq_file, "limit": 4},
        perplexity={"path": small_text_lf, "block_size": 32, "stride": 16},
    )
    again = FloatBaseline.from_dict(json.loads(json.dumps(result.to_dict(), default=str)))
    assert again.boolq.per_example == result.boolq.per_example and again.boolq.accuracy == result.boolq.accuracy
    assert again.perplexity == result.perplexity and result.perplexity.ppl > 1


def test_identity_follows_everything_that_defines_the_result(tiny_boolq_file, small_text_lf, tmp_path):
    boolq = {"data_path": str(tiny_boolq_file), "limit": 3, "seed": 1}
    base = evaluation_identity(boolq, None)
    assert base == {"boolq": boolq_identity(tiny_boolq_file, limit=3, seed=1)}
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(tiny_boolq_file.read_bytes())
    assert evaluation_identity({**boolq, "data_path": str(moved)}, None) == base  # data by content
    assert evaluation_identity({**boolq, "limit": 4}, None) != base
    ppl = {"path": small_text_lf, "block_size": 32}
    assert evaluation_identity(boolq, ppl) != base
    assert evaluation_identity(boolq, ppl) != evaluation_identity(boolq, {**ppl, "block_size": 16})


def test_tensor_digest_follows_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.int32)
    assert tensor_sha256(t) != tensor_sha256(t.reshape(2, 3))
    assert tensor_sha256(t) != tensor_sha256(t.view(torch.float32))
    assert tensor_sha256(torch.ones(3, dtype=torch.bfloat16)) == tensor_sha256(torch.ones(3, dtype=torch.bfloat16))
