"""The steps around the anti-outlier transform (SPEC §3, §5) that ``quant.pipeline`` runs in order.

Observe the float model over the anti-outlier data (:func:`observe_float_model`: the methods'
statistics, the ``disable_threshold`` scores), then :func:`smooth`: apply the method, observe the
smoothed model on the first calibration batches (range_param) and measure the KV-cache scales.
:func:`smoothing_settings` is what smooth() depends on, so recipes that differ in nothing else
(act_method, float-layer choices) share one smoothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from quant.anti_outlier import AntiOutlierReport, apply_anti_outlier, needs_statistics
from quant.arch import LM_HEAD, linear_names
from quant.calib_data import Batch
from quant.config import QuantConfig
from quant.input_stats import InputStats, observe_layerwise
from quant.kv_cache import KVCacheCalibrator

RANGE_PARAM_BATCHES = 5  # disable_level ranks on the first 5 calibration batches (SPEC §5)
# do_smooth (sparse path): SmoothQuant at the reference's default_smooth_alpha, without its alpha search.
DO_SMOOTH_METHOD, DO_SMOOTH_PARAMS = "m1", {"alpha": 0.5}
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


@dataclass
class Smoothing:
    """What :func:`smooth` did to a float model and measured around it.

    ``anti_outlier``: the transform (SPEC §3). ``post_stats``: the smoothed model's input
    statistics on the first calibration batches (range_param, SPEC §5). ``threshold_scores``: the
    float model's ``disable_threshold`` scores over the anti-outlier data (None when not
    observed). ``kv_cache``: the KV-cache scales measured on the smoothed float model.
    """

    anti_outlier: AntiOutlierReport
    post_stats: dict[str, InputStats]
    timings: dict[str, float] = field(default_factory=dict)
    threshold_scores: dict[str, float | None] | None = None
    kv_cache: KVCacheCalibrator | None = None


def anti_outlier_choice(cfg: QuantConfig) -> tuple[str, dict[str, Any]]:
    """The anti-outlier method and settings the recipe runs (``do_smooth`` means SmoothQuant)."""
    return (DO_SMOOTH_METHOD, DO_SMOOTH_PARAMS) if cfg.do_smooth else (cfg.anti_method, cfg.anti_params)


def transforms_model(cfg: QuantConfig) -> bool:
    """Whether the recipe's anti-outlier method changes the model ("none" only observes it)."""
    return anti_outlier_choice(cfg)[0] != "none"


def observed_linears(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """The linears whose inputs the recipe observes, in module order."""
    names = linear_names(model)
    # lm_head statistics cost a vocabulary-sized matmul per token: gather them only if it may be quantized.
    return names if not cfg.disable_last_linear else [n for n in names if n != LM_HEAD]


def needs_float_observation(cfg: QuantConfig) -> bool:
    """Whether the recipe observes the float model: for the method's statistics or the threshold scores."""
    return needs_statistics(anti_outlier_choice(cfg)[0]) or cfg.disable_threshold > 0


def float_observation_settings(model: nn.Module, cfg: QuantConfig) -> dict[str, Any]:
    """What :func:`observe_float_model` depends on besides the model and the batches."""
    return {"linears": observed_linears(model, cfg), "threshold_scores": cfg.disable_threshold > 0}


def observe_float_model(model: nn.Module, batches: Sequence[Batch], cfg: QuantConfig) -> dict[str, InputStats]:
    """The float model's input statistics over the anti-outlier data, one decoder layer at a time.

    Every observed linear's :class:`InputStats`, and with ``disable_threshold`` > 0 each one's
    threshold score (SPEC §5: before anti-outlier, on the float model). They depend only on
    :func:`float_observation_settings` (not on the anti-outlier method, act_method or disable_level).
    """
    names = observed_linears(model, cfg)
    return observe_layerwise(model, batches, names, scored=names if cfg.disable_threshold > 0 else ())


def smoothing_settings(cfg: QuantConfig) -> dict[str, Any]:
    """What :func:`smooth` depends on: every field not in AFTER_SMOOTHING_FIELDS, and whether it
    must observe the threshold scores (any ``disable_threshold`` > 0 shares one smoothing)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in AFTER_SMOOTHING_FIELDS}
    settings["threshold_scores"] = cfg.disable_threshold > 0
    return settings


def smooth(
    model: nn.Module,
    batches: Sequence[Batch],
    anti_batches: Sequence[Batch],
    cfg: QuantConfig,
    anti_stats: dict[str, InputStats] | None,
) -> Smoothing:
    """Apply the recipe's anti-outlier method to ``model`` in place, then observe the smoothed model.

    ``anti_stats``: :func:`observe_float_model` over ``anti_batches`` (None when
    :func:`needs_float_observation` is false); the method may modify them.
    """
    anti_method, anti_params = anti_outlier_choice(cfg)
    threshold_scores = None
    if cfg.disable_threshold > 0:
        threshold_scores = {n: anti_stats[n].quantile_score for n in observed_linears(model, cfg)}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    anti_report = apply_anti_outlier(
        model,
        anti_method,
        anti_stats,
        anti_params,
        batches=list(anti_batches),
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
