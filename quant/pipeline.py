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
from quant.calib import Batch, read_calib_texts, tokenize_texts
from quant.calibrate import ActivationRange, MinMaxObserver, calibrate_activations
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.fallback import level_fallback, names_fallback
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


def _make_observer_factory(cfg: QuantConfig):
    if cfg.act_method == 1:
        return lambda _name: MinMaxObserver()
    raise QuantInputError("act_method", f"{cfg.act_method} is not implemented yet; implemented: 1")


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


@dataclass
class Smoothing:
    """What :func:`smooth` did to a float model: the anti-outlier transform (SPEC §3) and the
    ``range_param`` of every observed linear's input afterwards (SPEC §5)."""

    anti_outlier: AntiOutlierReport
    range_params: dict[str, float]
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


def smooth(
    model: nn.Module, batches: Sequence[Batch], cfg: QuantConfig, anti_stats: dict[str, InputStats] | None = None
) -> Smoothing:
    """Apply the recipe's anti-outlier method to ``model`` in place, then rank the linears' inputs.

    ``anti_stats`` (from :func:`observe_float_model`) may be given to reuse a sweep's observation.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if cfg.anti_method != "none" and anti_stats is None:
        anti_stats = observe_float_model(model, batches, cfg)
    timings["observe_s"] = time.perf_counter() - t

    t = time.perf_counter()
    anti_report = apply_anti_outlier(model, cfg.anti_method, anti_stats or {}, cfg.anti_params)
    timings["anti_outlier_s"] = time.perf_counter() - t

    t = time.perf_counter()
    observed = observed_linears(model, cfg)
    post_stats = observe_linear_inputs(model, batches[:RANGE_PARAM_BATCHES], observed)
    timings["range_param_s"] = time.perf_counter() - t
    return Smoothing(anti_report, {n: post_stats[n].range_param for n in observed}, timings)


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
    (tokenized calibration data; float-model input statistics for the anti-outlier step).
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
        smoothing = smooth(model, batches, cfg, anti_stats)
        timings.update(smoothing.timings)
    anti_report, range_params = smoothing.anti_outlier, smoothing.range_params

    t = time.perf_counter()
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
    if cfg.quantizes_activations:
        ranges = calibrate_activations(model, batches, _make_observer_factory(cfg))
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
