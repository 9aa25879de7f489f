"""The two observation passes agree: one full forward with hooks vs one decoder layer at a time."""

import pytest
import torch

from quant.arch import linear_names
from quant.calib_data import tokenize_texts
from quant.input_stats import observe_layerwise, observe_linear_inputs
from tiny_models import build_tiny_llama

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes", "Fish swim."]


@pytest.mark.parametrize("family", ["llama2", "llama3.1"])
def test_layerwise_statistics_equal_the_full_forward_ones(family, tiny_tokenizer):
    model = build_tiny_llama(family)
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    names = linear_names(model)  # lm_head included: the final norm's output
    hooked = observe_linear_inputs(model, batches, names)
    walked = observe_layerwise(model, batches, names)
    for name in names:
        a, b = hooked[name], walked[name]
        assert torch.allclose(a.amax, b.amax, rtol=1e-6), name
        assert torch.allclose(a.outlier_sigmas, b.outlier_sigmas, rtol=1e-5), name
        assert a.range_param == pytest.approx(b.range_param, rel=1e-6), name
        assert b.quantile_score is not None and b.quantile_score > 0, name
    assert walked["model.layers.0.self_attn.q_proj"] is walked["model.layers.0.self_attn.v_proj"]  # shared input
