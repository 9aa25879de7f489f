"""quantize(..., memo) shares the float statistics and the smoothing between recipes that differ
only after smoothing (act_method, disable_level), and each shared recipe is bit-identical to the
same recipe quantized alone."""

from __future__ import annotations

import copy

import pytest
import torch

from quant.config import QuantConfig
from quant.memo import MemoryMemo
from quant.pipeline import quantize
from quant.smoothing import AFTER_SMOOTHING_FIELDS, smoothing_settings
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "Ghost in the Shell is an anime film produced in 1995.",
    "There are 15 trees in the grove.",
    "Question: is fire cold? Answer: no",
    "Grove workers will plant trees today.",
]
VARIANTS = [{"disable_level": "L0"}, {"disable_level": "L1"}, {"disable_level": "L3"}, {"act_method": 2}]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_equal_states(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], label: str) -> None:
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), label


@pytest.mark.parametrize("anti_method", ["none", "m1"])
def test_second_recipe_differing_after_smoothing_recomputes_nothing_shared(anti_method, tiny_tokenizer):
    float_model = build_tiny_llama("llama3")
    before = _state(float_model)
    memo = MemoryMemo()
    for i, variant in enumerate(VARIANTS):
        cfg = QuantConfig(calib_texts=TEXTS, anti_method=anti_method, **variant)
        fresh = quantize(copy.deepcopy(float_model), tiny_tokenizer, cfg)  # alone, in place
        shared = quantize(float_model, tiny_tokenizer, cfg, memo)
        _assert_equal_states(_state(fresh.model), _state(shared.model), str(variant))
        assert fresh.float_layers == shared.float_layers
        assert [r.to_dict() for r in fresh.layers] == [r.to_dict() for r in shared.layers]
        # Only the recipe that paid for the smoothing reports its stages.
        assert ("range_param_s" in shared.timings) == (i == 0) and "range_param_s" in fresh.timings
        # m1 needs the float model's statistics; "none" needs none.
        expected = {"calib_data": 1, "smoothing": 1} | ({"observation": 1} if anti_method == "m1" else {})
        assert memo.computed == expected, (variant, memo.computed)
    _assert_equal_states(before, _state(float_model), "the shared float model was modified")


def test_a_different_smoothing_setting_is_computed_again(tiny_tokenizer):
    float_model = build_tiny_llama("llama2")
    memo = MemoryMemo()
    quantize(float_model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, anti_method="m1"), memo)
    other = QuantConfig(calib_texts=TEXTS, anti_method="m1", anti_params={"alpha": 0.8})
    quantize(float_model, tiny_tokenizer, other, memo)
    # The float statistics do not depend on the method's settings; the smoothing does.
    assert memo.computed == {"calib_data": 1, "observation": 1, "smoothing": 2}


def test_smoothing_settings_leave_out_only_what_acts_after_smoothing():
    cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1")
    settings = smoothing_settings(cfg)
    assert set(settings) == (set(cfg.to_dict()) - set(AFTER_SMOOTHING_FIELDS)) | {"threshold_scores"}
    # The float model's threshold scores are observed only for recipes with a threshold.
    assert smoothing_settings(QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_threshold=1.0)) != settings
    assert smoothing_settings(QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_threshold=2.0)) == (
        smoothing_settings(QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_threshold=1.0))
    )
    assert {"anti_method", "anti_params", "w_bit", "w_sym", "disable_last_linear", "calib_texts"} <= set(settings)
    other_alpha = QuantConfig(calib_texts=TEXTS, anti_method="m1", anti_params={"alpha": 0.8})
    assert smoothing_settings(other_alpha) != settings
