"""The one verb: ``quantize(model, tokenizer, cfg)`` runs a recipe on a loaded float model.

anti-outlier → choose float layers → quantize weights → calibrate activations. Each step
returns what is worth logging; the result carries all of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quant.anti_outlier import AntiOutlierReport, apply_anti_outlier
from quant.arch import LM_HEAD, get_module, linear_names, set_module
from quant.attention_quant import AttentionQuantCalibrator, use_quantized_attention
from quant.calib import Batch, read_calib_texts, tokenize_texts
from quant.calibrate import ActivationRange, MinMaxObserver, calibrate_activations
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.fallback import level_fallback, names_fallback
from quant.kv_cache import KVCacheCalibrator
from quant.observe import InputStats, observe_linear_inputs
from quant.qlinear import QuantLinear
from quant.quantizers import quantize_weight_per_channel

log = logging.getLogger(__name__)
RANGE_PARAM_BATCHES = 5  # disable_level ranks on the first 5 calibration batches (SPEC §5)


@dataclass
class LayerReport:
    """One linear's outcome: quantized or kept float (and why), its range and scales."""

    name: str
    status: str  # "quantized" or "float"
    reason: str = ""
    quant_type: str = "FLOAT"
    range_param: float | None = None
    observer: str | None = None
    input_min: float | None = None
    input_max: float | None = None
    input_scale: float | None = None
    input_offset: float | None = None
    weight_scale_max: float | None = None


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
        return {r.name: r.reason for r in self.layers if r.status == "float"}

    def layer_report(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.layers]


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


def _make_observer_factory(cfg: QuantConfig):
    if cfg.act_method == 1:
        return lambda _name: MinMaxObserver()
    raise QuantInputError("act_method", f"{cfg.act_method} is not implemented yet; implemented: 1")


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


def _quantize_weights(model: nn.Module, names: Sequence[str], cfg: QuantConfig) -> None:
    qtype = cfg.quant_type
    for name in names:
        linear = get_module(model, name)
        qweight = quantize_weight_per_channel(linear.weight, bits=cfg.w_bit, symmetric=cfg.w_sym)
        set_module(model, name, QuantLinear.from_float(linear, qweight, qtype))


def _untie_lm_head(model: nn.Module) -> None:
    """Give lm_head its own weight so quantizing it never touches the embedding table."""
    head = get_module(model, LM_HEAD)
    embed = model.get_input_embeddings()
    if head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)


def quantize(
    model: nn.Module,
    tokenizer: Any,
    cfg: QuantConfig,
    calib_batches: Sequence[Batch] | None = None,
    anti_stats: dict[str, InputStats] | None = None,
) -> QuantResult:
    """Quantize ``model`` in place per ``cfg``.

    ``calib_batches`` / ``anti_stats`` may be given to reuse work a sweep already did
    (tokenized calibration data; float-model input statistics for the anti-outlier step).
    """
    cfg.check_supported()
    timings: dict[str, float] = {}
    device = next(model.parameters()).device
    t = time.perf_counter()
    batches = list(calib_batches) if calib_batches is not None else calibration_batches(tokenizer, cfg, device)
    names = linear_names(model)
    # lm_head statistics cost a vocabulary-sized matmul per token: gather them only if it may be quantized.
    observed = names if not cfg.disable_last_linear else [n for n in names if n != LM_HEAD]
    timings["calib_data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if cfg.anti_method != "none" and anti_stats is None:
        anti_stats = observe_linear_inputs(model, batches, observed)
    timings["observe_s"] = time.perf_counter() - t

    t = time.perf_counter()
    anti_report = apply_anti_outlier(model, cfg.anti_method, anti_stats or {}, cfg.anti_params)
    timings["anti_outlier_s"] = time.perf_counter() - t

    t = time.perf_counter()
    post_stats = observe_linear_inputs(model, batches[:RANGE_PARAM_BATCHES], observed)
    range_params = {n: post_stats[n].range_param for n in observed}
    float_layers = names_fallback(cfg.disable_names, cfg.model_type, cfg.a_bit, names)
    if cfg.disable_last_linear:
        float_layers.setdefault(LM_HEAD, "disable_last_linear")
    float_layers.update(level_fallback(cfg.disable_level_count, range_params, list(float_layers)))
    timings["fallback_s"] = time.perf_counter() - t
    for name, reason in float_layers.items():
        log.info("keeping %s in float: %s", name, reason)

    t = time.perf_counter()
    quantized = [n for n in names if n not in float_layers]
    if LM_HEAD in quantized:
        _untie_lm_head(model)
    _quantize_weights(model, quantized, cfg)
    timings["quantize_weights_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ranges: dict[str, ActivationRange] = {}
    calibrators = _cache_and_attention_calibrators(model, cfg)
    watchers = [c.watch for c in calibrators.values()]
    if cfg.quantizes_activations or watchers:
        ranges = calibrate_activations(model, batches, _make_observer_factory(cfg), watchers)
    if "attention_quant" in calibrators:
        calibrators["attention_quant"].keep_float(model)
    timings["calibrate_s"] = time.perf_counter() - t

    layers = [_layer_report(model, n, float_layers, range_params, ranges) for n in names]
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


def _layer_report(
    model: nn.Module,
    name: str,
    float_layers: dict[str, str],
    range_params: dict[str, float],
    ranges: dict[str, ActivationRange],
) -> LayerReport:
    if name in float_layers:
        return LayerReport(name, "float", float_layers[name], range_param=range_params.get(name))
    module = get_module(model, name)
    report = LayerReport(
        name,
        "quantized",
        quant_type=module.quant_type,
        range_param=range_params.get(name),
        weight_scale_max=float(module.weight_scale.max()),
    )
    if name in ranges:
        rng = ranges[name]
        report.observer, report.input_min, report.input_max = rng.observer, rng.xmin, rng.xmax
        report.input_scale, report.input_offset = rng.scale, rng.offset
    return report
