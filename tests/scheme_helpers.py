"""Helpers shared by the KV-cache and attention-quantization tests: a recipe on a tiny model."""

from __future__ import annotations

import torch

from quant.calib_data import calibration_batches
from quant.config import QuantConfig
from quant.pipeline import QuantResult, quantize
from quant.smoothing import Smoothing, needs_float_observation, observe_float_model, smooth
from tiny_models import build_tiny_llama

CALIB_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove. Grove workers will plant trees today.",
    "Ghost in the Shell is an anime film.",
]
PROBE = "Ghost in the Shell was produced in 1995 by Production I.G"


def quantize_tiny(family: str, tokenizer, num_layers: int = 2, **cfg) -> QuantResult:
    """A fresh tiny model of ``family`` quantized with m1 + the given config fields."""
    model = build_tiny_llama(family, num_layers=num_layers)
    return quantize(model, tokenizer, QuantConfig(calib_texts=CALIB_TEXTS, anti_method="m1", **cfg))


def calibration_inputs(tokenizer) -> list[dict[str, torch.Tensor]]:
    """The batches the recipe calibrates on, tokenized the same way."""
    return calibration_batches(tokenizer, QuantConfig(calib_texts=CALIB_TEXTS), "cpu")


def smooth_in_place(model, batches, cfg: QuantConfig) -> Smoothing:
    """The pipeline's float observation and anti-outlier step on ``model`` (anti-outlier data = ``batches``)."""
    anti_stats = observe_float_model(model, batches, cfg) if needs_float_observation(cfg) else None
    return smooth(model, batches, batches, cfg, anti_stats)


@torch.no_grad()
def last_logits_full_and_cached(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits of one full forward, and of a prefill + one cached decode step."""
    full = model(input_ids).logits[:, -1]
    prefill = model(input_ids[:, :-1], use_cache=True)
    step = model(input_ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True)
    return full, step.logits[:, -1]
