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
from quant.arch import LM_HEAD, get_module, linear_names
from quant.calib import Batch, read_calib_texts, tokenize_texts
from quant.calibrate import ActivationRange, MinMaxObserver, calibrate_activations
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.fallback import level_fallback, names_fallback
from quant.observe import InputStats, observe_linear_inputs
from quant.schemes import check_shapes, quantize_linears

log = logging.getLogger(__name__)
RANGE_PARAM_BATCHES = 5  # disable_level ranks on the first 5 calibration batches (SPEC §5)
# do_smooth (sparse path): SmoothQuant at the reference's default_smooth_alpha, without its alpha search.
DO_SMOOTH_METHOD, DO_SMOOTH_PARAMS = "m1", {"alpha": 0.5}


@dataclass
class LayerReport:
    """One linear's outcome: quantized or kept float (and why), its range and scales."""

    name: str
    status: str  # "quantized" or "float"
    reason: str = ""
    quant_type: str = "FLOAT"
    range_param: float | None = None
    observer: str | None = None
    input_min: float | list[float] | None = None  # lists: one value per shard (tp_size)
    input_max: float | list[float] | None = None
    input_scale: float | list[float] | None = None
    input_offset: float | list[float] | None = None
    weight_scale_max: float | None = None
    weight_sqnr_db: float | None = None


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


def _make_observer_factory(cfg: QuantConfig):
    if cfg.act_method == 1:
        return lambda _name: MinMaxObserver()
    raise QuantInputError("act_method", f"{cfg.act_method} is not implemented yet; implemented: 1")


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

    anti_method, anti_params = (
        (DO_SMOOTH_METHOD, DO_SMOOTH_PARAMS) if cfg.do_smooth else (cfg.anti_method, cfg.anti_params)
    )
    t = time.perf_counter()
    if anti_method != "none" and anti_stats is None:
        anti_stats = observe_linear_inputs(model, batches, observed)
    timings["observe_s"] = time.perf_counter() - t

    t = time.perf_counter()
    anti_report = apply_anti_outlier(model, anti_method, anti_stats or {}, anti_params)
    timings["anti_outlier_s"] = time.perf_counter() - t

    t = time.perf_counter()
    post_stats = observe_linear_inputs(model, batches[:RANGE_PARAM_BATCHES], observed)
    range_params = {n: post_stats[n].range_param for n in observed}
    float_layers = names_fallback(cfg.disable_names, cfg.model_type, cfg.a_bit, names)
    if cfg.quant_type == "FLOAT":
        float_layers.update({n: "w_bit 16: no quantization" for n in names if n not in float_layers})
    if cfg.disable_last_linear:
        float_layers.setdefault(LM_HEAD, "disable_last_linear")
    float_layers.update(level_fallback(cfg.disable_level_count, range_params, list(float_layers)))
    timings["fallback_s"] = time.perf_counter() - t
    for name, reason in float_layers.items():
        log.info("keeping %s in float: %s", name, reason)

    t = time.perf_counter()
    quantized = [n for n in names if n not in float_layers]
    check_shapes(model, quantized, cfg)
    if LM_HEAD in quantized:
        _untie_lm_head(model)
    weight_sqnr = quantize_linears(model, quantized, cfg)
    timings["quantize_weights_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ranges: dict[str, ActivationRange] = {}
    if cfg.quantizes_activations:
        ranges = calibrate_activations(model, batches, _make_observer_factory(cfg))
    timings["calibrate_s"] = time.perf_counter() - t

    layers = [_layer_report(model, n, float_layers, range_params, ranges, weight_sqnr) for n in names]
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
    weight_sqnr: dict[str, float],
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
        weight_sqnr_db=weight_sqnr.get(name),
    )
    if name in ranges:
        rng = ranges[name]
        report.observer, report.input_min, report.input_max = rng.observer, rng.xmin, rng.xmax
        report.input_scale, report.input_offset = rng.scale, rng.offset
    return report
