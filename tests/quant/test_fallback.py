"""Keeping layers in float (SPEC §1, §5): default names per model_type, names, level, threshold."""

import numpy as np
import pytest
import torch

from quant.arch import linear_names
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.fallback import default_disable_names
from quant.input_stats import quantile_score
from quant.pipeline import quantize
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
    "Ghost in the Shell is an anime film.",
]
SEVEN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
SEVEN += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _quantize(model, tokenizer, **kwargs):
    return quantize(model, tokenizer, QuantConfig(calib_texts=TEXTS, **kwargs))


def test_default_disable_names_per_model_type():
    names = linear_names(build_tiny_llama("llama2", num_layers=7))
    downs = [f"model.layers.{i}.mlp.down_proj" for i in range(7)]
    early = [f"model.layers.{i}.{n}" for i in range(5) for n in SEVEN]
    for model_type in ("llama", "llama2"):
        assert default_disable_names(model_type, 8, names) == downs
    assert set(default_disable_names("llama3", 8, names)) == {*early, "lm_head"}
    early_no_down = {n for n in early if not n.endswith("down_proj")}
    for model_type in ("llama3.1_instruct", "llama3.1_fp"):
        assert set(default_disable_names(model_type, 8, names)) == {*downs, *early_no_down, "lm_head"}
    for model_type in ("llama", "llama2", "llama3", "llama3.1_instruct", "llama3.1_fp"):
        assert default_disable_names(model_type, 16, names) == []
    # Fewer than 5 layers: the layers that exist (the reference crashes).
    two = linear_names(build_tiny_llama("llama3", num_layers=2))
    assert set(default_disable_names("llama3", 8, two)) == set(two)


def test_user_disable_names_replace_the_defaults(tiny_tokenizer):
    chosen = ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.up_proj"]
    result = _quantize(build_tiny_llama("llama2"), tiny_tokenizer, disable_names=chosen)
    assert result.float_layers == {**dict.fromkeys(chosen, "disable_names"), "lm_head": "disable_last_linear"}


def test_unknown_disable_names_stop_before_any_work(tiny_tokenizer):
    with pytest.raises(QuantInputError, match=r"disable_names: no linear layer named model\.layers\.0\.mlp\.down"):
        _quantize(build_tiny_llama("llama2"), tiny_tokenizer, disable_names=["model.layers.0.mlp.down"])


@pytest.mark.parametrize("n", [1, 3, 6])
def test_disable_level_puts_exactly_the_n_highest_range_layers_in_float(tiny_tokenizer, n):
    result = _quantize(build_tiny_llama("llama3"), tiny_tokenizer, disable_level=f"L{n}", disable_names=[])
    level = [r for r in result.layers if r.reason.startswith("disable_level")]
    quantized = [r for r in result.layers if r.status == "quantized"]
    assert len(level) == n
    assert min(r.range_param for r in level) >= max(r.range_param for r in quantized)
    assert len(quantized) == len(result.layers) - n - 1  # lm_head stays float too


def test_disable_last_linear_false_quantizes_lm_head(tiny_tokenizer):
    result = _quantize(build_tiny_llama("llama2"), tiny_tokenizer, disable_last_linear=False, disable_names=[])
    head = next(r for r in result.layers if r.name == "lm_head")
    assert head.status == "quantized" and head.sqnr_db is not None and head.range_param is not None


def _independent_quantile_score(batches: list[np.ndarray]) -> float:
    """Each batch sorted and sampled [50::100] alone (all values below 100); over the pooled sample:
    2·max|s|/254 / (q75 − q25 + 1e-10)."""
    samples = []
    for values in batches:
        ordered = np.sort(values.reshape(-1))
        samples.append(ordered if ordered.size < 100 else ordered[50::100])
    sample = np.concatenate(samples)
    q25, q75 = np.percentile(sample, [25, 75])
    return float(2 * np.abs(sample).max() / 254 / (q75 - q25 + 1e-10))


@pytest.mark.parametrize("shapes", [[(300, 17)], [(1, 151)], [(30,)], [(7, 1234), (3, 99), (2, 500)]])
def test_quantile_score_matches_independent_numpy(shapes):
    batches = [torch.distributions.StudentT(torch.tensor(3.0)).sample(shape) for shape in shapes]
    expected = _independent_quantile_score([b.numpy().astype(np.float64) for b in batches])
    assert quantile_score(batches) == pytest.approx(expected, rel=1e-5)


def _down_proj_inputs(model, tokenizer, texts) -> dict[int, list[np.ndarray]]:
    """Each down_proj's input per calibration batch, on the float model (independent hooks)."""
    inputs: dict[int, list[np.ndarray]] = {i: [] for i in range(len(model.model.layers))}
    handles = [
        layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a, i=i: inputs[i].append(a[0].numpy().copy()))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt"))
    for h in handles:
        h.remove()
    return inputs


@pytest.mark.parametrize("anti_method", ["none", "m4"])
def test_disable_threshold_keeps_exactly_the_down_projs_scoring_above_it(tiny_tokenizer, anti_method):
    """SPEC §5: scores on the FLOAT model before anti-outlier (m4 rescales down_proj's input, so it
    must not change them), over the anti-outlier data (here: every calibration batch); with a
    threshold the model_type's default float layers (every down_proj for llama2) are not used."""
    model = build_tiny_llama("llama2", num_layers=4)
    inputs = _down_proj_inputs(model, tiny_tokenizer, TEXTS)
    scores = {i: _independent_quantile_score(v) for i, v in inputs.items()}
    ranked = sorted(scores.values())
    threshold = (ranked[1] + ranked[2]) / 2  # two layers above, two below
    result = _quantize(model, tiny_tokenizer, disable_threshold=threshold, anti_method=anti_method)
    by_name = {r.name: r for r in result.layers}
    for i, score in scores.items():
        row = by_name[f"model.layers.{i}.mlp.down_proj"]
        assert row.quantile_score == pytest.approx(score, rel=1e-4)
        assert (row.status == "float") == (score > threshold), i
        if score > threshold:
            assert row.reason.startswith("disable_threshold")
    assert all(r.status == "quantized" for r in result.layers if "down_proj" not in r.name and r.name != "lm_head")


def test_disable_threshold_judges_the_named_layers_instead_of_the_down_projs(tiny_tokenizer):
    """With disable_names and a threshold, the names are the candidates: only those scoring above t
    stay float (the reference's auto_layer_select over the given names)."""
    model = build_tiny_llama("llama2", num_layers=2)
    names = ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.up_proj"]
    scored = _quantize(build_tiny_llama("llama2", num_layers=2), tiny_tokenizer, disable_threshold=1e-9)
    scores = {n: r.quantile_score for r in scored.layers for n in names if r.name == n}
    threshold = min(scores.values()) * 1.0000001  # the lower-scoring name stays quantized
    result = _quantize(model, tiny_tokenizer, disable_threshold=threshold, disable_names=names)
    floats = set(result.float_layers)
    assert floats == {"lm_head", max(scores, key=scores.get)}


def test_pdmix_float_layers_follow_the_difficulty_scores_and_the_threshold(tiny_tokenizer):
    """The reference's PDMix recipe (model_type llama3.1_fp, disable_threshold 1): the model_type's
    defaults (every down_proj and layers 0–4) are NOT the float layers; lm_head and the down_projs
    scoring above t are, and every other linear is W8A8_MIX."""
    model = build_tiny_llama("llama2", num_layers=4)
    scores = {i: _independent_quantile_score(v) for i, v in _down_proj_inputs(model, tiny_tokenizer, TEXTS).items()}
    ranked = sorted(scores.values())
    threshold = (ranked[2] + ranked[3]) / 2  # one down_proj above
    result = _quantize(
        model, tiny_tokenizer, pdmix=True, model_type="llama3.1_fp", disable_threshold=threshold, anti_method="m1"
    )
    expected = {"lm_head"} | {f"model.layers.{i}.mlp.down_proj" for i, s in scores.items() if s > threshold}
    assert set(result.float_layers) == expected and len(expected) == 2
    assert {r.quant_type for r in result.layers if r.status == "quantized"} == {"W8A8_MIX"}
