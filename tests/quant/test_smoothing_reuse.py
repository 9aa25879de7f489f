"""quantize(..., smoothing=smooth(...)) on a copy of a smoothed model is the same recipe, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from quant.calib import tokenize_texts
from quant.config import QuantConfig
from quant.pipeline import AFTER_SMOOTHING_FIELDS, quantize, smooth, smoothing_settings
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "Ghost in the Shell is an anime film produced in 1995.",
    "There are 15 trees in the grove.",
    "Question: is fire cold? Answer: no",
    "Grove workers will plant trees today.",
]


@pytest.mark.parametrize("anti_method", ["none", "m1"])
def test_one_smoothing_serves_every_level(anti_method, tiny_tokenizer):
    float_model = build_tiny_llama("llama3")
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    base = QuantConfig(calib_texts=TEXTS, anti_method=anti_method)
    smoothed = copy.deepcopy(float_model)
    shared = smooth(smoothed, batches, base)
    for level in ("L0", "L1", "L3"):
        cfg = QuantConfig(calib_texts=TEXTS, anti_method=anti_method, disable_level=level)
        assert smoothing_settings(cfg) == smoothing_settings(base)
        fresh = quantize(copy.deepcopy(float_model), tiny_tokenizer, cfg)
        reused = quantize(copy.deepcopy(smoothed), tiny_tokenizer, cfg, calib_batches=batches, smoothing=shared)
        ref, got = fresh.model.state_dict(), reused.model.state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), level
        assert [r.name for r in fresh.layers if r.status == "float"] == [
            r.name for r in reused.layers if r.status == "float"
        ]
        assert "range_param_s" in fresh.timings and "range_param_s" not in reused.timings


def test_smoothing_settings_leave_out_only_what_acts_after_smoothing():
    cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1")
    settings = smoothing_settings(cfg)
    assert set(settings) == (set(cfg.to_dict()) - set(AFTER_SMOOTHING_FIELDS)) | {"threshold_scores"}
    # smooth() observes the float model's threshold scores only for recipes with a threshold.
    assert smoothing_settings(QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_threshold=1.0)) != settings
    assert smoothing_settings(QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_threshold=2.0)) == (
        smoothing_settings(QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_threshold=1.0))
    )
    assert {"anti_method", "anti_params", "w_bit", "w_sym", "disable_last_linear", "calib_texts"} <= set(settings)
    other_alpha = QuantConfig(calib_texts=TEXTS, anti_method="m1", anti_params={"alpha": 0.8})
    assert smoothing_settings(other_alpha) != settings
