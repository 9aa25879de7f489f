"""The one verb: ``quantize(model, tokenizer, cfg)`` runs a recipe on a loaded float model.

observe → anti-outlier → choose float layers → quantize weights → calibrate activations
(measuring each quantized linear's SQNR). Each step returns what is worth logging; the result
carries all of it, with one report row per linear.
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
from quant.calibrate import calibrate_activations
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.fallback import level_fallback, names_fallback, threshold_fallback
from quant.kv_cache import KVCacheCalibrator
from quant.observe import InputStats, observe_layerwise, observe_linear_inputs
from quant.observers import observer_factory
from quant.report import STATUS_FLOAT, LayerReport, build_layer_report
from quant.schemes import check_shapes, quantize_linears

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

    They depend only on the model, the batches and ``disable_last_linear`` (not on the anti-outlier
    method, act_method or disable_level), so a sweep may compute them once for many recipes.
    """
    return observe_linear_inputs(model, batches, observed_linears(model, cfg))


def choose_float_layers(cfg: QuantConfig, names: Sequence[str], stats: Mapping[str, InputStats]) -> dict[str, str]:
    """Linears kept in float, with the reason: names (or defaults), last linear, threshold, level."""
    float_layers = names_fallback(cfg.disable_names, cfg.model_type, cfg.a_bit, names)
    if cfg.quant_type == "FLOAT":
        float_layers.update({n: "w_bit 16: no quantization" for n in names if n not in float_layers})
    if cfg.disable_last_linear:
        float_layers.setdefault(LM_HEAD, "disable_last_linear")
    scores = {n: s.quantile_score for n, s in stats.items()}
    float_layers.update(threshold_fallback(cfg.disable_threshold, scores, list(float_layers)))
    range_params = {n: stats[n].range_param for n in names if n in stats}
    float_layers.update(level_fallback(cfg.disable_level_count, range_params, list(float_layers)))
    return float_layers


def _cache_and_attention_calibrators(
    model: nn.Module, cfg: QuantConfig
) -> dict[str, KVCacheCalibrator | AttentionQuantCalibrator]:
    """The calibrators of KV-cache and attention quantization this recipe asks for (SPEC §4)."""
    calibrators: dict[str, KVCacheCalibrator | AttentionQuantCalibrator] = {}
    if cfg.use_kvcache_quant:
        calibrators["kv_cache"] = KVCacheCalibrator()
    if cfg.use_fa_quant:
        use_quantized_attention(model)
        calibrators["attention_quant"] = AttentionQuantCalibrator(fa_amp=cfg.fa_amp)
    return calibrators


def _untie_lm_head(model: nn.Module) -> None:
    """Give lm_head its own weight so quantizing it never touches the embedding table."""
    head = get_module(model, LM_HEAD)
    embed = model.get_input_embeddings()
    if head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)


@dataclass
class Smoothing:
    """What :func:`smooth` did to a float model: the anti-outlier transform (SPEC §3) and the input
    statistics of every observed linear afterwards, on the first calibration batches (SPEC §5)."""

    anti_outlier: AntiOutlierReport
    post_stats: dict[str, InputStats]
    timings: dict[str, float] = field(default_factory=dict)


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
    """The recipe fields :func:`smooth` may depend on (every field not in AFTER_SMOOTHING_FIELDS)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in AFTER_SMOOTHING_FIELDS}


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
    """Apply the recipe's anti-outlier method to ``model`` in place, then observe the linears' inputs.

    ``anti_batches``: the anti-outlier data (:func:`anti_outlier_batches`; default ``batches``).
    ``anti_stats`` (from :func:`observe_float_model` over them) may be given to reuse a sweep's pass.
    """
    anti_batches = list(batches) if anti_batches is None else list(anti_batches)
    anti_method, anti_params = anti_outlier_choice(cfg)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if needs_statistics(anti_method) and anti_stats is None:
        anti_stats = observe_float_model(model, anti_batches, cfg)
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
    post_stats = observe_layerwise(model, batches[:RANGE_PARAM_BATCHES], observed_linears(model, cfg))
    timings["range_param_s"] = time.perf_counter() - t
    return Smoothing(anti_report, post_stats, timings)


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
    float_layers = choose_float_layers(cfg, names, post_stats)
    timings["fallback_s"] = time.perf_counter() - t
    for name, reason in float_layers.items():
        log.info("keeping %s in float: %s", name, reason)

    t = time.perf_counter()
    quantized = [n for n in names if n not in float_layers]
    check_shapes(model, quantized, cfg)
    if LM_HEAD in quantized:
        _untie_lm_head(model)
    float_linears = {n: get_module(model, n) for n in quantized}  # kept for the SQNR measurement
    weight_sqnr = quantize_linears(model, quantized, cfg)
    timings["quantize_weights_s"] = time.perf_counter() - t

    t = time.perf_counter()
    range_params = {n: s.range_param for n, s in post_stats.items()}
    calibrators = _cache_and_attention_calibrators(model, cfg)
    outcome = calibrate_activations(
        model,
        batches,
        observer_factory(cfg.act_method, range_params),
        float_linears,
        watchers=[c.watch for c in calibrators.values()],
    )
    del float_linears  # the float copies were kept only for the SQNR measurement
    if "attention_quant" in calibrators:
        calibrators["attention_quant"].keep_float(model)
    timings["calibrate_s"] = time.perf_counter() - t

    layers = [
        build_layer_report(
            model, n, float_layers, post_stats, outcome.ranges, outcome.sqnr_db, anti_report.input_scales, weight_sqnr
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
        scheme_reports={name: c.report() for name, c in calibrators.items()},
    )
