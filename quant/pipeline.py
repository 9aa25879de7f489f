"""The one verb: ``quantize(model, tokenizer, cfg)`` runs a recipe on a loaded float model.

observe the float model (anti-outlier statistics, disable_threshold scores) → anti-outlier →
observe the smoothed float model (range_param; KV-cache scales) → choose float layers → one
running pass, layer by layer: quantize each layer's weights and calibrate its activations
(measuring each quantized linear's SQNR) → KV-cache quantization. Each step returns what is
worth logging; the result carries all of it, with one report row per linear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.anti_outlier import AntiOutlierReport, apply_anti_outlier, needs_statistics
from quant.arch import LM_HEAD, get_module, linear_names
from quant.attention_quant import AttentionQuantCalibrator, use_quantized_attention
from quant.calib import Batch, anti_calibration_batches, read_calib_texts, tokenize_texts
from quant.calibrate import calibrate_model
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.export import LAYER_REPORT_FILE
from quant.fallback import (
    check_disable_names,
    level_fallback,
    names_fallback,
    threshold_candidates,
    threshold_fallback,
)
from quant.kv_cache import KVCacheCalibrator
from quant.observe import InputStats, observe_layerwise
from quant.observers import observer_factory
from quant.progress import float_layers_summary
from quant.report import STATUS_FLOAT, LayerReport, build_layer_report
from quant.schemes import check_shapes

__all__ = ["LayerReport", "QuantResult", "Smoothing", "calibration_batches", "quantize", "smooth", "smoothing_settings"]

log = logging.getLogger(__name__)
RANGE_PARAM_BATCHES = 5  # disable_level ranks on the first 5 calibration batches (SPEC §5)
# do_smooth (sparse path): SmoothQuant at the reference's default_smooth_alpha, without its alpha search.
DO_SMOOTH_METHOD, DO_SMOOTH_PARAMS = "m1", {"alpha": 0.5}


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


def calibration_batches(tokenizer: Any, cfg: QuantConfig, device: torch.device | str) -> list[Batch]:
    """Tokenized calibration data: ``calib_file`` if given, else ``calib_texts`` (SPEC §1)."""
    if cfg.calib_file:
        texts = read_calib_texts(cfg.calib_file)
    elif cfg.calib_texts:
        texts = list(cfg.calib_texts)
    else:
        raise QuantInputError("calib_file", "no calibration data: give calib_file (JSONL) or calib_texts")
    return tokenize_texts(
        tokenizer,
        texts,
        device=device,
        input_ids_name=cfg.input_ids_name,
        attention_mask_name=cfg.attention_mask_name,
    )


def anti_outlier_batches(
    tokenizer: Any, cfg: QuantConfig, device: torch.device | str, calib: Sequence[Batch]
) -> list[Batch]:
    """The anti-outlier data: ``anti_calib_file`` if given, else the calibration batches (SPEC §1)."""
    if not cfg.anti_calib_file:
        return list(calib)
    return anti_calibration_batches(
        tokenizer,
        cfg.anti_calib_file,
        device=device,
        input_ids_name=cfg.input_ids_name,
        attention_mask_name=cfg.attention_mask_name,
    )


def observed_linears(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """The linears whose inputs the recipe observes, in module order."""
    names = linear_names(model)
    # lm_head statistics cost a vocabulary-sized matmul per token: gather them only if it may be quantized.
    return names if not cfg.disable_last_linear else [n for n in names if n != LM_HEAD]


def observe_float_model(model: nn.Module, batches: Sequence[Batch], cfg: QuantConfig) -> dict[str, InputStats]:
    """The float model's input statistics that ``quantize(..., anti_stats=...)`` accepts.

    Over the anti-outlier data, one decoder layer at a time: every observed linear's
    :class:`InputStats`, and with ``disable_threshold`` > 0 each one's threshold score (SPEC §5:
    before anti-outlier, on the float model). Without a threshold they depend only on the model,
    the batches and ``disable_last_linear`` (not on the anti-outlier method, act_method or
    disable_level), so a sweep may compute them once for many recipes.
    """
    names = observed_linears(model, cfg)
    return observe_layerwise(model, batches, names, scored=names if cfg.disable_threshold > 0 else ())


def needs_float_observation(cfg: QuantConfig) -> bool:
    """Whether :func:`smooth` observes the float model: for the method's statistics or the threshold scores."""
    return needs_statistics(anti_outlier_choice(cfg)[0]) or cfg.disable_threshold > 0


def choose_float_layers(
    cfg: QuantConfig,
    names: Sequence[str],
    stats: Mapping[str, InputStats],
    threshold_scores: Mapping[str, float | None] | None = None,
) -> dict[str, str]:
    """Linears kept in float, with the reason: names (or defaults), last linear, threshold, level.

    ``stats``: the smoothed model's statistics (range_param); ``threshold_scores``: the float
    model's threshold scores. With ``disable_threshold`` > 0 the names are candidates, not float
    layers (SPEC §5, as the reference): the user's disable_names, else every down_proj, and only
    those scoring above t stay float, with lm_head; the model_type's defaults are not used.
    """
    float_layers: dict[str, str] = {}
    if cfg.disable_threshold <= 0:
        float_layers = names_fallback(cfg.disable_names, cfg.model_type, cfg.a_bit, names)
    elif cfg.disable_names:
        check_disable_names(cfg.disable_names, names)
    if cfg.quant_type == "FLOAT":
        float_layers.update({n: "w_bit 16: no quantization" for n in names if n not in float_layers})
    if cfg.disable_last_linear:
        float_layers.setdefault(LM_HEAD, "disable_last_linear")
    candidates = threshold_candidates(cfg.disable_names, names)
    float_layers.update(
        threshold_fallback(cfg.disable_threshold, threshold_scores or {}, candidates, list(float_layers))
    )
    range_params = {n: stats[n].range_param for n in names if n in stats}
    float_layers.update(level_fallback(cfg.disable_level_count, range_params, list(float_layers)))
    return float_layers


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


@dataclass
class Smoothing:
    """What :func:`smooth` did to a float model and measured around it.

    ``anti_outlier``: the transform (SPEC §3). ``post_stats``: the smoothed model's input
    statistics on the first calibration batches (range_param, SPEC §5). ``threshold_scores``: the
    float model's down_proj ``disable_threshold`` scores over the anti-outlier data (None when
    not observed). ``kv_cache``: the KV-cache scales measured on the smoothed float model.
    """

    anti_outlier: AntiOutlierReport
    post_stats: dict[str, InputStats]
    timings: dict[str, float] = field(default_factory=dict)
    threshold_scores: dict[str, float | None] | None = None
    kv_cache: KVCacheCalibrator | None = None


# Recipe fields used only after smoothing: recipes that differ in nothing else share one smooth().
AFTER_SMOOTHING_FIELDS = (
    "act_method",
    "disable_level",
    "disable_names",
    "disable_threshold",
    "save_directory",
    "part_file_size",
    "mindie_format",
)


def smoothing_settings(cfg: QuantConfig) -> dict[str, Any]:
    """What :func:`smooth` depends on: every field not in AFTER_SMOOTHING_FIELDS, and whether it
    must observe the threshold scores (any ``disable_threshold`` > 0 shares one smoothing)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in AFTER_SMOOTHING_FIELDS}
    settings["threshold_scores"] = cfg.disable_threshold > 0
    return settings


def anti_outlier_choice(cfg: QuantConfig) -> tuple[str, dict[str, Any]]:
    """The anti-outlier method and settings the recipe runs (``do_smooth`` means SmoothQuant)."""
    return (DO_SMOOTH_METHOD, DO_SMOOTH_PARAMS) if cfg.do_smooth else (cfg.anti_method, cfg.anti_params)


def smooth(
    model: nn.Module,
    batches: Sequence[Batch],
    cfg: QuantConfig,
    anti_stats: dict[str, InputStats] | None = None,
    anti_batches: Sequence[Batch] | None = None,
) -> Smoothing:
    """Apply the recipe's anti-outlier method to ``model`` in place, observing the float model before
    and the smoothed float model after it.

    ``anti_batches``: the anti-outlier data (:func:`anti_outlier_batches`; default ``batches``).
    ``anti_stats`` (from :func:`observe_float_model` over them) may be given to reuse a sweep's pass.
    """
    anti_batches = list(batches) if anti_batches is None else list(anti_batches)
    anti_method, anti_params = anti_outlier_choice(cfg)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    threshold_scores = None
    if needs_float_observation(cfg):
        scored = observed_linears(model, cfg) if cfg.disable_threshold > 0 else []
        if anti_stats is None or any(anti_stats[n].quantile_score is None for n in scored):
            anti_stats = observe_float_model(model, anti_batches, cfg)
        threshold_scores = {n: anti_stats[n].quantile_score for n in scored} if scored else None
    timings["observe_s"] = time.perf_counter() - t

    t = time.perf_counter()
    anti_report = apply_anti_outlier(
        model,
        anti_method,
        anti_stats,
        anti_params,
        batches=anti_batches,
        weight_bits=cfg.w_bit,
        weight_symmetric=cfg.w_sym,
    )
    timings["anti_outlier_s"] = time.perf_counter() - t

    t = time.perf_counter()
    post_stats = observe_layerwise(
        model, batches[:RANGE_PARAM_BATCHES], observed_linears(model, cfg), scored=(), stage_name="range_param"
    )
    timings["range_param_s"] = time.perf_counter() - t
    kv_cache = None
    if cfg.use_kvcache_quant:
        t = time.perf_counter()
        kv_cache = KVCacheCalibrator().observe(model, batches)
        timings["kv_cache_s"] = time.perf_counter() - t
    return Smoothing(anti_report, post_stats, timings, threshold_scores, kv_cache)


def quantize(
    model: nn.Module,
    tokenizer: Any,
    cfg: QuantConfig,
    calib_batches: Sequence[Batch] | None = None,
    anti_stats: dict[str, InputStats] | None = None,
    smoothing: Smoothing | None = None,
) -> QuantResult:
    """Quantize ``model`` in place per ``cfg``.

    ``calib_batches`` / ``anti_stats`` may be given to reuse work a sweep already did
    (tokenized calibration data; float-model input statistics over the anti-outlier data).
    ``smoothing`` says that ``model`` is already smoothed: it is what :func:`smooth` returned for a
    recipe with the same :func:`smoothing_settings` and batches, on a copy of the same float model.
    """
    cfg.check_supported()
    timings: dict[str, float] = {}
    device = next(model.parameters()).device
    t = time.perf_counter()
    batches = list(calib_batches) if calib_batches is not None else calibration_batches(tokenizer, cfg, device)
    names = linear_names(model)
    timings["calib_data_s"] = time.perf_counter() - t

    if smoothing is None:
        anti_batches = anti_outlier_batches(tokenizer, cfg, device, batches)
        smoothing = smooth(model, batches, cfg, anti_stats, anti_batches)
        timings.update(smoothing.timings)
    anti_report, post_stats = smoothing.anti_outlier, smoothing.post_stats

    t = time.perf_counter()
    if cfg.disable_threshold > 0 and smoothing.threshold_scores is None:
        raise ValueError("disable_threshold needs Smoothing.threshold_scores (smooth() with disable_threshold > 0)")
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
        calib_tokens=sum(int(b["input_ids"].numel()) for b in batches),
        scheme_reports=scheme_reports,
    )
