"""The content-keyed disk cache of float-model results: keys, hits measured, atomic writes."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

import eval.baseline as baseline_module
from eval.baseline import cached_boolq, cached_perplexity, float_baseline, model_fields
from eval.boolq import boolq_identity
from eval.cache import ResultCache
from eval.fingerprint import model_sha256, tensor_sha256, tokenizer_sha256
from tiny_models import build_tiny_llama


def test_store_then_load_in_a_new_instance(tmp_path):
    fields = {"model_sha256": "abc", "eval": {"limit": 3}}
    first = ResultCache(tmp_path)
    calls = []
    out = first.get_or_compute("k", fields, lambda: calls.append(1) or {"acc": 0.5}, dict, dict)
    assert not out.hit and calls == [1] and (first.hits, first.misses) == (0, 1)
    assert out.path == tmp_path / "k" / f"{ResultCache.key_of(fields)}.json" and out.path.is_file()

    second = ResultCache(tmp_path)  # nothing in memory: the hit can only come from the file
    again = second.get_or_compute("k", fields, lambda: pytest.fail("must not recompute"), dict, dict)
    assert again.hit and again.value == {"acc": 0.5} and again.key == out.key
    assert (second.hits, second.misses) == (1, 0)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_key_depends_on_every_field_and_not_on_order():
    base = {"a": 1, "eval": {"limit": 3, "seed": None}}
    assert ResultCache.key_of(base) == ResultCache.key_of({"eval": {"seed": None, "limit": 3}, "a": 1})
    assert ResultCache.key_of(base) != ResultCache.key_of({"a": 1, "eval": {"limit": 4, "seed": None}})
    assert ResultCache.key_of(base) != ResultCache.key_of({"a": 2, "eval": {"limit": 3, "seed": None}})


def test_disabled_cache_never_hits_or_writes(tmp_path):
    cache = ResultCache(None)
    for _ in range(2):
        out = cache.get_or_compute("k", {"x": 1}, lambda: {"v": 1}, dict, dict)
        assert not out.hit and out.path is None
    assert (cache.hits, cache.misses) == (0, 2)


def test_corrupt_or_foreign_entries_are_misses_and_get_replaced(tmp_path):
    cache = ResultCache(tmp_path)
    fields = {"x": 1}
    path = cache.store("k", fields, {"v": 1})
    path.write_text("{not json")
    assert cache.load("k", fields) is None
    path.write_text(json.dumps({"fields": {"x": 2}, "result": {"v": 9}}))  # key collision / stale format
    assert cache.load("k", fields) is None
    out = cache.get_or_compute("k", fields, lambda: {"v": 1}, dict, dict)
    assert not out.hit and cache.load("k", fields) == {"v": 1}


def test_parallel_writers_leave_one_complete_entry(tmp_path):
    fields = {"x": 1}
    payload = {"rows": list(range(20000))}  # large enough that a torn write would be visible
    errors = []

    def write():
        try:
            for _ in range(5):
                ResultCache(tmp_path).store("k", fields, payload)
                assert ResultCache(tmp_path).load("k", fields) in (None, payload)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ResultCache(tmp_path).load("k", fields) == payload
    assert [p.name for p in (tmp_path / "k").iterdir()] == [f"{ResultCache.key_of(fields)}.json"]


def test_fingerprints_follow_content():
    model = build_tiny_llama("llama2")
    same = copy.deepcopy(model)
    assert model_sha256(model) == model_sha256(same)
    with torch.no_grad():
        same.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-6
    assert model_sha256(model) != model_sha256(same)
    # The config counts too: rope_theta changes outputs through buffers that are not saved.
    other_rope = copy.deepcopy(model)
    other_rope.config.rope_theta = 1234.0
    assert model_sha256(model) != model_sha256(other_rope)
    # dtype and shape are part of a tensor's digest, not only its bytes.
    t = torch.arange(6, dtype=torch.int32)
    assert tensor_sha256(t) != tensor_sha256(t.reshape(2, 3))
    assert tensor_sha256(t) != tensor_sha256(t.view(torch.float32))
    assert tensor_sha256(torch.ones(3, dtype=torch.bfloat16)) == tensor_sha256(torch.ones(3, dtype=torch.bfloat16))


def test_tokenizer_fingerprint(tiny_tokenizer):
    twin = copy.deepcopy(tiny_tokenizer)
    assert tokenizer_sha256(tiny_tokenizer) == tokenizer_sha256(twin)
    twin.padding_side = "left" if tiny_tokenizer.padding_side == "right" else "right"
    assert tokenizer_sha256(tiny_tokenizer) != tokenizer_sha256(twin)


@pytest.fixture()
def counted_evaluations(monkeypatch):
    """Counts the real BoolQ and perplexity evaluations the cache lets through."""
    counts = {"boolq": 0, "perplexity": 0}
    real_boolq, real_ppl = baseline_module.evaluate_boolq, baseline_module.wikitext_perplexity

    def boolq(*args, **kwargs):
        counts["boolq"] += 1
        return real_boolq(*args, **kwargs)

    def ppl(*args, **kwargs):
        counts["perplexity"] += 1
        return real_ppl(*args, **kwargs)

    monkeypatch.setattr(baseline_module, "evaluate_boolq", boolq)
    monkeypatch.setattr(baseline_module, "wikitext_perplexity", ppl)
    return counts


def test_boolq_baseline_is_evaluated_once(tmp_path, tiny_tokenizer, tiny_boolq_file, counted_evaluations):
    model = build_tiny_llama("llama2")
    cache_dir = tmp_path / "cache"
    first = cached_boolq(ResultCache(cache_dir), model, tiny_tokenizer, data_path=tiny_boolq_file, limit=5)
    # A new cache object, a deep copy of the model and the data file under another name: still a hit.
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(tiny_boolq_file.read_bytes())
    cache = ResultCache(cache_dir)
    second = cached_boolq(cache, copy.deepcopy(model), tiny_tokenizer, data_path=moved, limit=5)

    assert (first.hit, second.hit) == (False, True) and cache.hits == 1
    assert counted_evaluations["boolq"] == 1  # measured: the second call never ran lm-eval
    assert second.key == first.key
    assert second.value.per_example == first.value.per_example
    assert second.value.accuracy == first.value.accuracy and second.value.config == first.value.config
    assert second.seconds < first.seconds

    # Anything that can change the result is a miss.
    other_subset = cached_boolq(cache, model, tiny_tokenizer, data_path=tiny_boolq_file, limit=4)
    other_batch = cached_boolq(cache, model, tiny_tokenizer, data_path=tiny_boolq_file, limit=5, batch_size=2)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.lm_head.weight.mul_(1.01)
    other_model = cached_boolq(cache, changed, tiny_tokenizer, data_path=tiny_boolq_file, limit=5)
    assert not (other_subset.hit or other_batch.hit or other_model.hit)
    assert counted_evaluations["boolq"] == 4
    assert len({first.key, other_subset.key, other_batch.key, other_model.key}) == 4


def test_key_records_the_eval_identity(tiny_model, tiny_tokenizer, tiny_boolq_file, tmp_path):
    cache = ResultCache(tmp_path)
    out = cached_boolq(cache, tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=3, seed=1)
    stored = json.loads(out.path.read_text())
    identity = boolq_identity(tiny_boolq_file, limit=3, seed=1)
    assert stored["fields"] == {**model_fields(tiny_model, tiny_tokenizer), "eval": identity}
    # What the result says it ran with agrees with the key it was stored under.
    assert {k: out.value.config[k] for k in identity} == identity


def test_float_baseline_caches_perplexity_too(
    tmp_path, tiny_tokenizer, tiny_boolq_file, small_text_lf, counted_evaluations
):
    model = build_tiny_llama("llama2")
    kwargs = {
        "boolq": {"data_path": tiny_boolq_file, "limit": 4},
        "perplexity": {"path": small_text_lf, "block_size": 32, "stride": 16},
    }
    first = float_baseline(ResultCache(tmp_path), model, tiny_tokenizer, **kwargs)
    second = float_baseline(ResultCache(tmp_path), model, tiny_tokenizer, **kwargs)
    assert (first.source, second.source) == ("computed", "disk")
    assert counted_evaluations == {"boolq": 1, "perplexity": 1}
    assert second.perplexity == first.perplexity and second.boolq.per_example == first.boolq.per_example
    other = cached_perplexity(ResultCache(tmp_path), model, tiny_tokenizer, small_text_lf, block_size=32, stride=8)
    assert not other.hit and counted_evaluations["perplexity"] == 2
