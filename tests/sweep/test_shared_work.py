"""Shared work of a sweep: the disk cache protocol, the float model and observation entries, and the
invariant that a recipe quantized from cached statistics is bit-identical to one computed afresh."""

from __future__ import annotations

import copy
import multiprocessing
from pathlib import Path

import pytest
import torch

from quant.calib import tokenize_texts
from quant.config import QuantConfig
from quant.memo import content_key
from quant.model_io import load_model, resolve_model_source
from quant.observe import InputStatsCodec
from quant.pipeline import quantize
from quant.smoothing import observe_float_model
from sweep import shared_work
from sweep.disk_cache import DiskCache
from sweep.float_model_cache import read_float_model, write_float_model
from tiny_data import write_calib_file
from tiny_models import build_tiny_llama

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes", "Grove workers."]


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    caches = (shared_work._models, shared_work._results)
    for cache in caches:
        cache.clear()
    shared_work.reset_events()
    yield
    for cache in caches:
        cache.clear()


def test_content_key_separates_parts_and_values():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    assert content_key(b"\x00\x01") != content_key([0, 1])
    assert len(content_key("x")) == 24


def test_disk_cache_publishes_whole_entries_and_keeps_the_first_writer(tmp_path):
    cache = DiskCache(tmp_path)
    assert not cache.has("kind", "k")
    cache.write("kind", "k", lambda d: (d / "value.txt").write_text("first"))
    assert cache.has("kind", "k") and (cache.entry("kind", "k") / "value.txt").read_text() == "first"
    cache.write("kind", "k", lambda d: (d / "value.txt").write_text("second"))  # lost the race
    assert (cache.entry("kind", "k") / "value.txt").read_text() == "first"

    def broken(directory: Path) -> None:
        (directory / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cache.write("kind", "other", broken)
    assert not cache.has("kind", "other")
    assert sorted(p.name for p in (tmp_path / "kind").iterdir()) == ["k"]  # no temporary leftovers
    cache.discard("kind", "k")
    assert not cache.has("kind", "k") and not list((tmp_path / "kind").iterdir())


def _race_writer(root: str, barrier, index: int) -> None:
    def fill(directory: Path) -> None:
        (directory / "payload.bin").write_bytes(bytes([index]) * 1_000_000)
        (directory / "done").write_text(str(index))

    barrier.wait()
    DiskCache(root).write("race", "same-key", fill)


def test_disk_cache_is_safe_under_parallel_writers(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_race_writer, args=(str(tmp_path), barrier, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    entry = DiskCache(tmp_path).entry("race", "same-key")
    winner = int((entry / "done").read_text())
    assert (entry / "payload.bin").read_bytes() == bytes([winner]) * 1_000_000  # one writer's complete entry
    assert [p.name for p in (tmp_path / "race").iterdir()] == ["same-key"]


@pytest.fixture()
def tied_model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny model with tied embeddings (like SmolLM2) as an HF directory."""
    path = tmp_path / "tied"
    model = build_tiny_llama("llama3", tie_word_embeddings=True)
    model.generation_config.max_new_tokens = 7  # something the cache must carry over
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_float_model_entry_reloads_the_same_model(tmp_path, tied_model_dir):
    loaded = load_model(str(tied_model_dir))
    entry = tmp_path / "entry"
    entry.mkdir()
    write_float_model(entry, loaded)
    again = read_float_model(entry, resolve_model_source(str(tied_model_dir)))
    ref, got = loaded.model.state_dict(), again.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert again.model.lm_head.weight is again.model.model.embed_tokens.weight
    assert again.model.config.to_dict() == loaded.model.config.to_dict()
    assert again.model.generation_config.to_dict() == loaded.model.generation_config.to_dict()
    assert (again.original_dtype, again.fingerprint, again.source) == (
        loaded.original_dtype,
        loaded.fingerprint,
        loaded.source,
    )
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, again.model(ids).logits)


def test_float_model_lookups_go_memory_then_disk(tmp_path, tied_model_dir):
    disk = DiskCache(tmp_path / "cache")
    first = shared_work.float_model(str(tied_model_dir), disk=disk, disk_policy="all")
    assert shared_work.float_model(str(tied_model_dir), disk=disk, disk_policy="all") is first
    shared_work._models.clear()  # a new process
    second = shared_work.float_model(str(tied_model_dir), disk=disk, disk_policy="all")
    assert [e.outcome for e in shared_work.events()] == ["computed", "memory", "disk"]
    assert len({e.key for e in shared_work.events()}) == 1
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    # The default policy keeps only converted (GGUF) sources on disk: an HF directory is read as is.
    shared_work._models.clear()
    shared_work.float_model(str(tied_model_dir), disk=DiskCache(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


def test_unreadable_disk_entry_is_recomputed(tmp_path, tied_model_dir):
    disk = DiskCache(tmp_path / "cache")
    shared_work.float_model(str(tied_model_dir), disk=disk, disk_policy="all")
    (entry,) = (tmp_path / "cache" / "float_model").iterdir()
    (entry / "model.safetensors").write_bytes(b"garbage")
    shared_work._models.clear()
    shared_work.reset_events()
    shared_work.float_model(str(tied_model_dir), disk=disk, disk_policy="all")
    assert [e.outcome for e in shared_work.events()] == ["computed"]


def _batches(tokenizer, texts=TEXTS):
    return tokenize_texts(tokenizer, texts)


def _kinds(kind: str | None = None) -> list[tuple[str, str]]:
    return [(e.kind, e.outcome) for e in shared_work.events() if kind in (None, e.kind)]


def _assert_same_weights(ref: torch.nn.Module, got: torch.nn.Module, label: object) -> None:
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), label


def test_observation_entry_round_trips_every_statistic(tmp_path, tiny_model, tiny_tokenizer):
    cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1")
    stats = observe_float_model(tiny_model, _batches(tiny_tokenizer), cfg)
    InputStatsCodec().write(stats, tmp_path)
    again = InputStatsCodec().read(tmp_path)
    assert again.keys() == stats.keys()
    for name, s in stats.items():
        g = again[name]
        for field in ("amax", "cmax", "cmin", "outlier_sigmas"):
            assert torch.equal(getattr(s, field), getattr(g, field))
        assert (g.batch_max, g.batch_min, g.batch_centered_std, g.tokens) == (
            s.batch_max,
            s.batch_min,
            s.batch_centered_std,
            s.tokens,
        )
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert stats[q] is stats[k] and again[q] is again[k]  # one shared input, one record


def test_recipe_from_cached_statistics_is_bit_identical(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    disk = DiskCache(tmp_path)
    for level in ("L0", "L2"):
        cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_level=level)
        fresh = quantize(copy.deepcopy(model), tiny_tokenizer, cfg)
        shared_work._results.clear()  # a new process: only the disk cache remains
        cached = quantize(model, tiny_tokenizer, cfg, shared_work.SweepMemo("fp-tiny", disk))
        _assert_same_weights(fresh.model, cached.model, level)
    assert _kinds("observation") == [("observation", "computed"), ("observation", "disk")]


def test_observation_key_follows_the_inputs(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    memo = shared_work.SweepMemo("fp-tiny")
    for texts, head in ((TEXTS, False), (TEXTS, False), (TEXTS[:2], False), (TEXTS, True)):
        cfg = QuantConfig(calib_texts=texts, anti_method="m1", disable_last_linear=not head)
        quantize(model, tiny_tokenizer, cfg, memo)
    observations = [e for e in shared_work.events() if e.kind == "observation"]
    assert [e.outcome for e in observations] == ["computed", "computed", "computed"]  # the 2nd: a smoothing hit
    assert len({e.key for e in observations}) == 3


def test_smoothed_model_is_shared_by_levels_and_reproduces_the_recipe(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    memo = shared_work.SweepMemo("fp-tiny")
    for anti in ("m1", "none"):
        for level in ("L0", "L2"):
            cfg = QuantConfig(calib_texts=TEXTS, anti_method=anti, disable_level=level)
            reused = quantize(model, tiny_tokenizer, cfg, memo)
            assert reused.model is not model
            # one float model: the job's model reads the float embeddings, no copy of them
            assert reused.model.model.embed_tokens.weight is model.model.embed_tokens.weight
            fresh = quantize(copy.deepcopy(model), tiny_tokenizer, cfg)
            _assert_same_weights(fresh.model, reused.model, (anti, level))
    assert [k for k in _kinds() if k[0] != "calib_data"] == [
        ("observation", "computed"),
        ("smoothing", "computed"),
        ("smoothing", "memory"),
        ("smoothing", "computed"),  # only the latest smoothing is kept
        ("smoothing", "memory"),
    ]
    assert len([k for k in shared_work._results if k[0] == "smoothing"]) == 1
    # The float model itself was never transformed.
    pristine = build_tiny_llama("llama2").state_dict()
    assert all(torch.equal(t, pristine[k]) for k, t in model.state_dict().items())


def test_smoothing_on_separate_anti_outlier_data_reproduces_the_recipe(tmp_path, tiny_tokenizer):
    anti_file = write_calib_file(tmp_path / "anti.jsonl")  # .jsonl: groups of 4 texts, no special tokens
    model = build_tiny_llama("llama2")
    memo = shared_work.SweepMemo("fp-tiny")
    for level in ("L0", "L1"):
        cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1", anti_calib_file=str(anti_file), disable_level=level)
        reused = quantize(model, tiny_tokenizer, cfg, memo)
        fresh = quantize(copy.deepcopy(model), tiny_tokenizer, cfg)
        _assert_same_weights(fresh.model, reused.model, level)
    # The observation was made on the anti-outlier data, not on the calibration batches.
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, anti_method="m1"), memo)
    observations = [e for e in shared_work.events() if e.kind == "observation"]
    assert [e.outcome for e in observations] == ["computed", "computed"]
    assert observations[0].key != observations[1].key
