"""The one verb: ``quantize(model, tokenizer, cfg, memo)`` runs a recipe on a loaded float model.

The steps, in this order for every caller: calibration data → float statistics (over the
anti-outlier data: the method's statistics, disable_threshold scores) → anti-outlier (and the
smoothed model's range_param and KV-cache scales) → fallback choice (float layers) → one running
pass, layer by layer: quantize each layer's weights and calibrate its activations (measuring each
quantized linear's SQNR) → KV-cache / attention quantization → report (one row per linear).

The calibration data, the float statistics and the smoothing are asked of ``memo``
(:mod:`quant.memo`): a sweep hands one that shares them between recipes; ``quant-llama`` hands
:data:`~quant.memo.NO_MEMO`, and every step runs on the caller's model in place.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant.anti_outlier import AntiOutlierReport
from quant.arch import LM_HEAD, get_module, linear_names
from quant.attention_quant import AttentionQuantCalibrator, use_quantized_attention
from quant.calib_data import Batch, anti_outlier_batches, batch_tokens, batches_digest, calibration_batches
from quant.config import QuantConfig
from quant.export import LAYER_REPORT_FILE
from quant.fallback import choose_float_layers
from quant.input_stats import InputStats, InputStatsCodec
from quant.memo import NO_MEMO, Memo
from quant.model_copy import shared_copy
from quant.observers import observer_factory
from quant.progress import float_layers_summary
from quant.report import STATUS_FLOAT, LayerReport, build_layer_report
from quant.running_pass import calibrate_model
from quant.schemes import check_shapes
from quant.smoothing import (
    Smoothing,
    float_observation_settings,
    needs_float_observation,
    observe_float_model,
    smooth,
    smoothing_settings,
    transforms_model,
)

__all__ = ["LayerReport", "QuantResult", "quantize", "smoothed_model"]

log = logging.getLogger(__name__)


@dataclass
class QuantResult:
    """A quantized model (fake-quant modules in place) and everything the recipe decided."""

    model: nn.Module
    config: QuantConfig
    quant_type: str
    layers: list[LayerReport]
    anti_outlier: AntiOutlierReport
    timings: dict[str, float] = field(default_factory=dict)
    calib_batches: int = 0
    calib_tokens: int = 0
    scheme_reports: dict[str, Any] = field(default_factory=dict)  # "kv_cache", "attention_quant"

    @property
    def float_layers(self) -> dict[str, str]:
        return {r.name: r.reason for r in self.layers if r.status == STATUS_FLOAT}

    def layer_report(self) -> list[dict[str, Any]]:
        """One JSON-safe row per linear, module order (written as ``quant_layer_report.json``)."""
        return [r.to_dict() for r in self.layers]


def _attention_calibrator(model: nn.Module, cfg: QuantConfig) -> AttentionQuantCalibrator | None:
    """The attention-quantization calibrator this recipe asks for (SPEC §4), installed on the model."""
    if not cfg.use_fa_quant:
        return None
    use_quantized_attention(model)
    return AttentionQuantCalibrator(fa_amp=cfg.fa_amp)


def _untie_lm_head(model: nn.Module) -> None:
    """Give lm_head its own weight so quantizing it never touches the embedding table."""
    head = get_module(model, LM_HEAD)
    embed = model.get_input_embeddings()
    if head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)


def _calib_data_key(cfg: QuantConfig, device: torch.device) -> list[Any]:
    """What the calibration batches depend on besides the tokenizer (part of the memo's model)."""
    source = hashlib.sha256(Path(cfg.calib_file).read_bytes()).hexdigest() if cfg.calib_file else cfg.calib_texts
    return [source, cfg.input_ids_name, cfg.attention_mask_name, str(device)]


def _model_facts(model: nn.Module) -> list[str]:
    """The dtype and device the model runs in: the memo's model identity is its content only."""
    parameter = next(model.parameters())
    return [str(parameter.dtype), str(parameter.device)]


def _float_statistics(
    model: nn.Module, anti_batches: Sequence[Batch], cfg: QuantConfig, memo: Memo
) -> dict[str, InputStats] | None:
    """The float model's statistics over the anti-outlier data, or None when the recipe needs none."""
    if not needs_float_observation(cfg):
        return None
    device = next(model.parameters()).device
    stats = memo.get_or_compute(
        "observation",
        [*_model_facts(model), batches_digest(anti_batches), float_observation_settings(model, cfg)],
        lambda: observe_float_model(model, anti_batches, cfg),
        InputStatsCodec(device),
    )
    return copy.deepcopy(stats) if memo.shares else stats  # an anti-outlier method may modify them


def _smoothed(
    model: nn.Module, batches: Sequence[Batch], anti_batches: Sequence[Batch], cfg: QuantConfig, memo: Memo
) -> tuple[nn.Module, Smoothing, bool]:
    """The model after the anti-outlier step, its :class:`Smoothing`, and whether it was computed now.

    Without sharing, ``model`` itself is smoothed. With sharing, the smoothed model is a copy
    (the float model itself for "none", which only observes) kept by the memo, and the caller
    gets its own copy of both. The model copies are :func:`~quant.model_copy.shared_copy`: new
    modules over the same tensors (no step writes a tensor in place), so a sweep holds one float
    model plus the tensors smoothing replaced, and each job only the layers it quantizes.
    """
    computed = []

    def compute() -> tuple[nn.Module, Smoothing]:
        computed.append(True)
        t = time.perf_counter()
        anti_stats = _float_statistics(model, anti_batches, cfg, memo)
        observe_s = time.perf_counter() - t
        target = shared_copy(model) if memo.shares and transforms_model(cfg) else model
        smoothing = smooth(target, batches, anti_batches, cfg, anti_stats)
        smoothing.timings = {"observe_s": observe_s, **smoothing.timings}
        return target, smoothing

    key = [*_model_facts(model), batches_digest(batches), batches_digest(anti_batches), smoothing_settings(cfg)]
    target, smoothing = memo.get_or_compute("smoothing", key, compute)
    if memo.shares:
        return shared_copy(target), copy.deepcopy(smoothing), bool(computed)
    return target, smoothing, bool(computed)


def _prepared(
    model: nn.Module, tokenizer: Any, cfg: QuantConfig, memo: Memo, timings: dict[str, float]
) -> tuple[nn.Module, list[Batch], Smoothing]:
    """The steps up to the anti-outlier: calibration data, float statistics, smoothing."""
    cfg.check_supported()
    device = next(model.parameters()).device
    t = time.perf_counter()
    batches = memo.get_or_compute(
        "calib_data", _calib_data_key(cfg, device), lambda: calibration_batches(tokenizer, cfg, device)
    )
    anti_batches = anti_outlier_batches(tokenizer, cfg, device, batches)
    timings["calib_data_s"] = time.perf_counter() - t
    smoothed, smoothing, computed = _smoothed(model, batches, anti_batches, cfg, memo)
    if computed:
        timings.update(smoothing.timings)
    return smoothed, batches, smoothing


def smoothed_model(
    model: nn.Module, tokenizer: Any, cfg: QuantConfig, memo: Memo = NO_MEMO
) -> tuple[nn.Module, Smoothing]:
    """The float model after the recipe's anti-outlier step, and what the step measured: the first
    steps of :func:`quantize`, shared through ``memo`` the same way (e.g. a sensitivity analysis
    swapping quantized layers into the smoothed float model). With a sharing memo, a copy."""
    smoothed, _, smoothing = _prepared(model, tokenizer, cfg, memo, {})
    return smoothed, smoothing


def quantize(model: nn.Module, tokenizer: Any, cfg: QuantConfig, memo: Memo = NO_MEMO) -> QuantResult:
    """Quantize ``model`` per ``cfg``; the result's ``model`` holds the fake-quant modules.

    With :data:`~quant.memo.NO_MEMO` that is ``model`` itself, transformed in place. With a memo
    that shares work, ``model`` is the shared float model and is left untouched: the result's
    model is a copy of the (shared) smoothed model.
    """
    timings: dict[str, float] = {}
    names = linear_names(model)
    model, batches, smoothing = _prepared(model, tokenizer, cfg, memo, timings)
    anti_report, post_stats = smoothing.anti_outlier, smoothing.post_stats

    t = time.perf_counter()
    float_layers = choose_float_layers(cfg, names, post_stats, smoothing.threshold_scores)
    timings["fallback_s"] = time.perf_counter() - t
    log.info("%s", float_layers_summary(float_layers, LAYER_REPORT_FILE))

    t = time.perf_counter()
    quantized = [n for n in names if n not in float_layers]
    check_shapes(model, quantized, cfg)
    if LM_HEAD in quantized:
        _untie_lm_head(model)
    range_params = {n: s.range_param for n, s in post_stats.items()}
    attention = _attention_calibrator(model, cfg)
    outcome = calibrate_model(
        model,
        batches,
        quantized,
        cfg,
        observer_factory(cfg.act_method, range_params),
        watchers=[attention.watch] if attention else [],
    )
    scheme_reports: dict[str, Any] = {}
    if attention is not None:
        attention.keep_float(model)
        scheme_reports["attention_quant"] = attention.report()
    if smoothing.kv_cache is not None:
        smoothing.kv_cache.apply(model)
        scheme_reports["kv_cache"] = smoothing.kv_cache.report()
    timings["calibrate_s"] = time.perf_counter() - t

    layers = [
        build_layer_report(
            model,
            n,
            float_layers,
            post_stats,
            outcome.ranges,
            outcome.sqnr_db,
            anti_report.input_scales,
            outcome.weight_sqnr_db,
            smoothing.threshold_scores,
        )
        for n in names
    ]
    return QuantResult(
        model=model,
        config=cfg,
        quant_type=cfg.quant_type,
        layers=layers,
        anti_outlier=anti_report,
        timings=timings,
        calib_batches=len(batches),
        calib_tokens=batch_tokens(batches),
        scheme_reports=scheme_reports,
    )
