"""What the sweep shares through its work store: the model identity, the float model entry, the
float baseline, and the pipeline's memo (a recipe quantized from stored work is bit-identical to
one computed afresh). Each test makes its own store: a new WorkStore is a new process."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

import sweep.shared_work as shared_work_module
from quant.config import QuantConfig
from quant.input_stats import InputStatsCodec
from quant.model_io import load_model, resolve_model_source
from quant.pipeline import quantize
from quant.smoothing import observe_float_model
from sweep import shared_work
from sweep.store import WorkStore
from tiny_data import write_calib_file
from tiny_models import build_tiny_llama

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes", "Grove workers."]


@pytest.fixture()
def tied_model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny model with tied embeddings (like SmolLM2) as an HF directory."""
    path = tmp_path / "tied"
    model = build_tiny_llama("llama3", tie_word_embeddings=True)
    model.generation_config.max_new_tokens = 7  # something the entry must carry over
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _outcomes(store: WorkStore, kind: str) -> list[str]:
    return [e.outcome for e in store.take_events() if e.kind == kind]


def test_float_model_entry_reloads_the_same_model(tmp_path, tied_model_dir):
    loaded = load_model(str(tied_model_dir))
    codec = shared_work.FloatModelCodec(resolve_model_source(str(tied_model_dir)), "cpu", False, None)
    codec.write(loaded, tmp_path)
    again = codec.read(tmp_path)
    assert _same_weights(loaded.model, again.model)
    assert again.model.lm_head.weight is again.model.model.embed_tokens.weight
    assert again.model.config.to_dict() == loaded.model.config.to_dict()
    assert again.model.generation_config.to_dict() == loaded.model.generation_config.to_dict()
    assert (again.original_dtype, again.source) == (loaded.original_dtype, loaded.source)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, again.model(ids).logits)


def test_float_model_lookups_go_memory_then_disk(tmp_path, tied_model_dir):
    store = WorkStore(tmp_path / "cache")
    first = shared_work.float_model(store, str(tied_model_dir), disk_policy="all")
    assert shared_work.float_model(store, str(tied_model_dir), disk_policy="all").loaded is first.loaded
    other_process = WorkStore(tmp_path / "cache")
    second = shared_work.float_model(other_process, str(tied_model_dir), disk_policy="all")
    assert _outcomes(store, "float_model") == ["computed", "memory"]
    assert _outcomes(other_process, "float_model") == ["disk"]
    assert second.identity == first.identity and _same_weights(first.loaded.model, second.loaded.model)
    # The default policy keeps only converted (GGUF) sources on disk: an HF directory is read as is.
    shared_work.float_model(WorkStore(tmp_path / "other"), str(tied_model_dir))
    assert not (tmp_path / "other" / "float_model").exists()


def test_one_identity_by_content_hashed_once_per_file(tmp_path, tied_model_dir):
    store = WorkStore(tmp_path / "cache")
    source = resolve_model_source(str(tied_model_dir))
    identity = shared_work.model_identity(store, source)
    hashed = _outcomes(store, "file_sha256")
    assert hashed and set(hashed) == {"computed"}
    assert shared_work.model_identity(store, source) == identity
    assert set(_outcomes(store, "file_sha256")) == {"memory"}
    assert shared_work.model_identity(WorkStore(tmp_path / "cache"), source) == identity  # from disk
    # A copy elsewhere (new paths, new mtimes) is hashed again and is the same model.
    copied = shutil.copytree(tied_model_dir, tmp_path / "copied")
    assert shared_work.model_identity(store, resolve_model_source(str(copied))) == identity
    # Changed bytes are another model.
    config = copied / "config.json"
    config.write_text(config.read_text().replace('"rope_theta"', '"rope_theta_unused": 1, "rope_theta"'))
    assert shared_work.model_identity(store, resolve_model_source(str(copied))) != identity


def test_a_copied_model_hits_every_entry_of_the_original(tmp_path, tied_model_dir, tiny_boolq_file, monkeypatch):
    evaluations = []
    real = shared_work_module.float_baseline
    monkeypatch.setattr(shared_work_module, "float_baseline", lambda *a, **k: evaluations.append(1) or real(*a, **k))
    boolq = {"data_path": str(tiny_boolq_file), "limit": 4, "device": "cpu"}
    root = tmp_path / "cache"
    original = shared_work.float_model(WorkStore(root), str(tied_model_dir), disk_policy="all")
    first, event = shared_work.baseline(WorkStore(root), original, boolq, None)
    copied = shutil.copytree(tied_model_dir, tmp_path / "copied")
    store = WorkStore(root)  # another process, another path to the same bytes
    twin = shared_work.float_model(store, str(copied), disk_policy="all")
    second, again = shared_work.baseline(store, twin, boolq, None)
    assert event.outcome == "computed" and again.outcome == "disk" and again.key == event.key
    assert _outcomes(store, "float_model") == ["disk"] and evaluations == [1]
    assert second.boolq.per_example == first.boolq.per_example
    # Anything that can change the result is another entry.
    _, other = shared_work.baseline(store, twin, {**boolq, "limit": 3}, None)
    assert other.outcome == "computed" and evaluations == [1, 1]


def test_recipe_from_stored_statistics_is_bit_identical(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    for level in ("L0", "L2"):
        cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_level=level)
        fresh = quantize(copy.deepcopy(model), tiny_tokenizer, cfg)
        store = WorkStore(tmp_path)  # a new process: only the disk remains
        cached = quantize(model, tiny_tokenizer, cfg, store.memo(["tiny"]))
        assert _same_weights(fresh.model, cached.model), level
        assert _outcomes(store, "observation") == (["computed"] if level == "L0" else ["disk"])


def test_observation_entry_round_trips_every_statistic(tmp_path, tiny_model, tiny_tokenizer):
    from quant.calib_data import tokenize_texts

    stats = observe_float_model(tiny_model, tokenize_texts(tiny_tokenizer, TEXTS), QuantConfig(calib_texts=TEXTS))
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


def test_smoothed_model_is_shared_by_levels_and_reproduces_the_recipe(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    store = WorkStore(tmp_path)
    memo = store.memo(["tiny"])
    for anti in ("m1", "none"):
        for level in ("L0", "L2"):
            cfg = QuantConfig(calib_texts=TEXTS, anti_method=anti, disable_level=level)
            reused = quantize(model, tiny_tokenizer, cfg, memo)
            assert reused.model is not model
            # one float model: the job's model reads the float embeddings, no copy of them
            assert reused.model.model.embed_tokens.weight is model.model.embed_tokens.weight
            fresh = quantize(copy.deepcopy(model), tiny_tokenizer, cfg)
            assert _same_weights(fresh.model, reused.model), (anti, level)
    events = [(e.kind, e.outcome) for e in store.take_events() if e.kind != "calib_data"]
    assert events == [
        ("observation", "computed"),
        ("smoothing", "computed"),
        ("smoothing", "memory"),
        ("smoothing", "computed"),  # only the latest smoothing is kept
        ("smoothing", "memory"),
    ]
    # The float model itself was never transformed.
    assert _same_weights(model, build_tiny_llama("llama2"))


def test_smoothing_on_separate_anti_outlier_data_reproduces_the_recipe(tmp_path, tiny_tokenizer):
    anti_file = write_calib_file(tmp_path / "anti.jsonl")  # .jsonl: groups of 4 texts, no special tokens
    model = build_tiny_llama("llama2")
    store = WorkStore(None)
    for level in ("L0", "L1"):
        cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1", anti_calib_file=str(anti_file), disable_level=level)
        reused = quantize(model, tiny_tokenizer, cfg, store.memo(["tiny"]))
        assert _same_weights(quantize(copy.deepcopy(model), tiny_tokenizer, cfg).model, reused.model), level
    # The observation was made on the anti-outlier data, not on the calibration batches.
    quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, anti_method="m1"), store.memo(["tiny"]))
    observations = [e for e in store.take_events() if e.kind == "observation"]
    assert [e.outcome for e in observations] == ["computed", "computed"]
    assert observations[0].key != observations[1].key
