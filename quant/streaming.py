"""Layer-wise quantization: the recipe of :func:`quant.pipeline.quantize`, one decoder layer in memory at a time.

The model is a skeleton (:mod:`quant.checkpoint`); each decoder layer is read from the checkpoint
onto the execution device, put through every step, written to the output
(:class:`quant.export.ModelWriter`) and freed. Three streams of layer-boundary hidden states
flow through the layers, each exactly as the in-memory path computes it:

- float: the anti-outlier data through the float layers (the methods' statistics, their raw
  search inputs, the ``disable_threshold`` scores);
- smoothed: the first calibration batches (every batch with the KV cache) through the smoothed
  float layers (range_param; KV-cache scales);
- calibration: every calibration batch through the quantized layers (the one running pass).

A layer's inputs depend only on the layers before it, so walking the layers once with all three
streams gives the in-memory path's numbers bit for bit. When the float layers depend on every
layer's statistics (``disable_level`` ranks all linears, ``disable_threshold`` scores them) the
walk is split: a statistics pass (float and smoothed streams; each layer's anti-outlier transforms
are kept, a few scales per channel) and then the calibration pass, which reads each float layer
again and re-applies its recorded transforms. Hidden states above ``activation_budget_bytes``
are spilled to disk (:class:`quant.layerwise.SpilledCalls`).

Peak memory: embeddings (only while capturing the first layer's inputs and writing them), one
decoder layer (its float weights and quantized copy), the final norm and lm_head at the end, the
streams' hidden states (or one batch of them when spilled) and one layer's observed inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant import progress
from quant.anti_outlier import (
    AntiOutlierReport,
    check_anti_params,
    get_method,
    method_inputs_batches,
    reapply_layer,
    searched_members,
    smooth_layer,
)
from quant.anti_outlier.base import INPUTS_FIRST_BATCH, INPUTS_NONE, add_norm_bias, layer_pair_contexts
from quant.arch import (
    LM_HEAD,
    decoder_layers,
    final_norm,
    kv_head_groups,
    layer_index,
    layer_name,
    linear_names,
    relative_name,
)
from quant.attention_quant import AttentionQuantCalibrator, use_quantized_attention
from quant.calib_data import Batch, anti_outlier_batches, batch_tokens, calibration_batches
from quant.checkpoint import StreamedModel, release_module
from quant.config import QuantConfig
from quant.export import LAYER_REPORT_FILE, ModelWriter
from quant.fallback import choose_float_layers
from quant.input_stats import InputStats, layer_input_stats
from quant.kv_cache import KV_PROJECTIONS, KVCacheCalibrator
from quant.layerwise import Calls, SpilledCalls, capture_first_layer_calls, keep_or_spill, run_layer
from quant.observers import observer_factory
from quant.pipeline import QuantResult
from quant.progress import float_layers_summary
from quant.report import LayerReport, build_layer_report
from quant.running_pass import CalibrationOutcome, calibrate_head, calibrate_layer
from quant.schemes import check_shapes
from quant.smoothing import RANGE_PARAM_BATCHES, anti_outlier_choice, needs_float_observation, observed_linears

log = logging.getLogger(__name__)
EMBED = "model.embed_tokens"
FINAL_NORM = "model.norm"


@dataclass
class LayerwiseOptions:
    """Where the layer-wise path runs (harness extensions, not reference parameters).

    ``device``: the execution device of the current layer. ``activation_budget_bytes``: hidden
    states of a stream above this go to ``spill_dir`` (None: always in memory).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    activation_budget_bytes: int | None = None
    spill_dir: Path | None = None


def layerwise_unsupported(cfg: QuantConfig) -> str | None:
    """Why the recipe cannot run layer by layer (None when it can)."""
    if cfg.use_fa_quant and cfg.fa_amp > 0:
        return "fa_amp ranks every attention layer after all are calibrated"
    return None


def needs_statistics_pass(cfg: QuantConfig) -> bool:
    """Whether the float layers depend on every layer's statistics (then two passes are walked)."""
    return cfg.disable_level_count > 0 or cfg.disable_threshold > 0


@dataclass
class _Walk:
    """What the walk carries from layer to layer: the streams and everything measured so far."""

    cfg: QuantConfig
    model: nn.Module
    options: LayerwiseOptions
    names: list[str]
    observed: list[str]
    method: Any  # the registered anti-outlier method, None for "none"
    report: AntiOutlierReport
    float_calls: Calls | None = None
    smoothed_calls: Calls | None = None
    calib_calls: Calls | None = None
    stats: dict[str, InputStats] = field(default_factory=dict)
    post_stats: dict[str, InputStats] = field(default_factory=dict)
    kv_cache: KVCacheCalibrator | None = None
    outcome: CalibrationOutcome = field(default_factory=CalibrationOutcome)
    rows: dict[str, LayerReport] = field(default_factory=dict)
    float_layers: dict[str, str] | None = None
    attention: AttentionQuantCalibrator | None = None

    @property
    def scored(self) -> list[str]:
        return self.observed if self.cfg.disable_threshold > 0 else []

    @property
    def threshold_scores(self) -> dict[str, float | None] | None:
        if self.cfg.disable_threshold <= 0:
            return None
        return {n: self.stats[n].quantile_score for n in self.observed}

    def drop_streams(self, *streams: str) -> None:
        """Let the named streams go (spilled ones' files are removed)."""
        for stream in streams:
            calls = getattr(self, stream)
            if isinstance(calls, SpilledCalls):
                calls.remove()
            setattr(self, stream, None)

    def spill(self, calls: list) -> Calls:
        return keep_or_spill(calls, self.options.activation_budget_bytes, self.options.spill_dir)

    def layer_names(self, index: int) -> list[str]:
        return [n for n in self.names if layer_index(n) == index]

    def contexts(self, index: int, layer: nn.Module, with_stats: bool = True) -> list:
        """Layer ``index``'s anti-outlier pairs, with their float statistics if the method reads them."""
        if self.method is None:
            return []
        stats = self.stats if self.method.needs_stats and with_stats else None
        kv_groups, head_dim = kv_head_groups(self.model)
        return layer_pair_contexts(
            index,
            layer,
            self.method.pairs,
            stats,
            self.report.params,
            kv_groups,
            head_dim,
            self.cfg.w_bit,
            self.cfg.w_sym,
        )

    def add_norm_biases(self, norms: Sequence[nn.Module]) -> None:
        if self.method is not None and self.method.adds_norm_bias:
            for norm in norms:
                add_norm_bias(norm)


def _scalars_only(stats: dict[str, InputStats], names: Sequence[str]) -> None:
    """Drop the per-channel vectors of ``names``' statistics once their layer is smoothed: what is read
    later (range_param, the threshold score) are scalars, and depth must not grow the memory."""
    for name in names:
        if name in stats:
            kept = stats[name]
            stats[name] = InputStats(
                batch_max=kept.batch_max,
                batch_min=kept.batch_min,
                batch_centered_std=kept.batch_centered_std,
                quantile_score=kept.quantile_score,
                tokens=kept.tokens,
            )


def _choose_float_layers(walk: _Walk) -> None:
    """Decide the float linears (from the statistics so far) and check the others' shapes on the skeleton."""
    walk.float_layers = choose_float_layers(walk.cfg, walk.names, walk.post_stats, walk.threshold_scores)
    check_shapes(walk.model, [n for n in walk.names if n not in walk.float_layers], walk.cfg)
    log.info("%s", float_layers_summary(walk.float_layers, LAYER_REPORT_FILE))


def _members(layer: nn.Module, index: int, names: Sequence[str]) -> dict[str, nn.Module]:
    return {n: layer.get_submodule(relative_name(n)) for n in names if layer_index(n) == index}


def _statistics_step(walk: _Walk, index: int, layer: nn.Module) -> None:
    """Layer ``index``: observe it on the float stream, smooth it, observe it on the smoothed stream."""
    if walk.float_calls is not None:
        wanted = _members(layer, index, walk.observed) if needs_float_observation(walk.cfg) else {}
        searching = walk.method is not None and walk.method.inputs != INPUTS_NONE
        searched = searched_members(walk.contexts(index, layer, with_stats=False)) if searching else {}
        inputs, walk.float_calls = run_layer(layer, walk.float_calls, {**wanted, **searched})
        if wanted:
            observed = {n: v for n, v in inputs.items() if n in wanted}
            walk.stats.update(layer_input_stats(observed, walk.names, walk.scored))
        if walk.method is not None:
            first = 1 if walk.method.inputs == INPUTS_FIRST_BATCH else None
            search_inputs = {n: inputs[n][:first] for n in searched} if searching else None
            smooth_layer(walk.contexts(index, layer), walk.method, walk.report, search_inputs)
        del inputs
    walk.add_norm_biases([layer.input_layernorm, layer.post_attention_layernorm])
    hooks = []
    if walk.kv_cache is not None:
        for projection in KV_PROJECTIONS:
            name = layer_name(index, f"self_attn.{projection}")
            hooks.append(layer.self_attn.get_submodule(projection).register_forward_hook(walk.kv_cache.observer(name)))
    try:
        inputs, walk.smoothed_calls = run_layer(layer, walk.smoothed_calls, _members(layer, index, walk.observed))
    finally:
        for hook in hooks:
            hook.remove()
    ranged = {n: v[:RANGE_PARAM_BATCHES] for n, v in inputs.items()}
    walk.post_stats.update(layer_input_stats(ranged, walk.names, ()))
    for stats in (walk.stats, walk.post_stats):
        _scalars_only(stats, walk.layer_names(index))


def _calibrate_step(walk: _Walk, index: int, layer: nn.Module) -> None:
    """Layer ``index`` (smoothed): quantize and calibrate it on the calibration stream, report its rows."""
    names = walk.layer_names(index)
    quantized = [n for n in names if n not in walk.float_layers]
    make_observer = observer_factory(walk.cfg.act_method, {n: s.range_param for n, s in walk.post_stats.items()})
    watchers = [walk.attention.watch] if walk.attention is not None else []
    walk.calib_calls, outcome = calibrate_layer(
        index, layer, walk.calib_calls, quantized, walk.cfg, make_observer, watchers
    )
    walk.outcome.update(outcome)
    if walk.kv_cache is not None:
        walk.kv_cache.apply(walk.model, [layer_name(index, f"self_attn.{p}") for p in KV_PROJECTIONS])
    for name in names:
        walk.rows[name] = _row(walk, name)


def _row(walk: _Walk, name: str) -> LayerReport:
    return build_layer_report(
        walk.model,
        name,
        walk.float_layers,
        walk.post_stats,
        walk.outcome.ranges,
        walk.outcome.sqnr_db,
        walk.report.input_scales,
        walk.outcome.weight_sqnr_db,
        walk.threshold_scores,
    )


def _norm_outputs(norm: nn.Module, calls: Calls, count: int | None = None) -> list[torch.Tensor]:
    """The final norm's outputs of the first ``count`` calls, flattened (tokens, hidden) float32."""
    outs = []
    with torch.no_grad():
        for i, call in enumerate(calls):
            if count is not None and i >= count:
                break
            out = norm(call.hidden)
            outs.append(out.reshape(-1, out.shape[-1]).float())
    return outs


def _head_statistics(walk: _Walk, norm: nn.Module) -> None:
    """lm_head's statistics (when observed): float stream before the final norm's bias, smoothed after."""
    if LM_HEAD in walk.observed and walk.float_calls is not None and needs_float_observation(walk.cfg):
        walk.stats.update(layer_input_stats({LM_HEAD: _norm_outputs(norm, walk.float_calls)}, walk.names, walk.scored))
    walk.add_norm_biases([norm])
    if LM_HEAD in walk.observed:
        ranged = _norm_outputs(norm, walk.smoothed_calls, RANGE_PARAM_BATCHES)
        walk.post_stats.update(layer_input_stats({LM_HEAD: ranged}, walk.names, ()))


def _start(walk: _Walk, streamed: StreamedModel, batches: Sequence[Batch], anti_batches: Sequence[Batch]) -> None:
    """Capture the first layer's inputs of every stream (the embeddings are read for this only)."""
    model, cfg = walk.model, walk.cfg
    streamed.place_buffers(walk.options.device)
    streamed.load(EMBED, walk.options.device)
    needs_float = needs_float_observation(cfg) or (walk.method is not None and walk.method.inputs != INPUTS_NONE)
    if needs_float:
        observing = needs_float_observation(cfg)
        float_batches = anti_batches if observing else method_inputs_batches(walk.method.name, anti_batches)
        walk.float_calls = walk.spill(capture_first_layer_calls(model, float_batches))
    smoothed_batches = batches if cfg.use_kvcache_quant else batches[:RANGE_PARAM_BATCHES]
    walk.smoothed_calls = walk.spill(capture_first_layer_calls(model, smoothed_batches))
    walk.calib_calls = walk.spill(capture_first_layer_calls(model, batches))


def quantize_layerwise(
    streamed: StreamedModel,
    tokenizer: Any,
    cfg: QuantConfig,
    writer: ModelWriter,
    options: LayerwiseOptions | None = None,
) -> QuantResult:
    """Quantize the checkpoint behind ``streamed`` per ``cfg``, writing each module to ``writer`` as it is done.

    The result is :func:`quant.pipeline.quantize`'s for the same recipe, except that its model is
    the skeleton (modules in place, tensors freed); ``writer.finish`` then completes the output,
    byte for byte the in-memory path's.
    """
    cfg.check_supported()
    reason = layerwise_unsupported(cfg)
    if reason:
        raise ValueError(f"layer-wise quantization does not support this recipe: {reason}")
    options = options or LayerwiseOptions()
    model = streamed.model
    timings: dict[str, float] = {}
    t = time.perf_counter()
    batches = calibration_batches(tokenizer, cfg, options.device)
    anti_batches = anti_outlier_batches(tokenizer, cfg, options.device, batches)
    timings["calib_data_s"] = time.perf_counter() - t
    method_name, params = anti_outlier_choice(cfg)
    resolved = check_anti_params(method_name, params)
    walk = _Walk(
        cfg,
        model,
        options,
        linear_names(model),
        observed_linears(model, cfg),
        None if method_name == "none" else get_method(method_name),
        AntiOutlierReport(method_name, resolved),
        kv_cache=KVCacheCalibrator() if cfg.use_kvcache_quant else None,
    )
    two_pass = needs_statistics_pass(cfg)
    if not two_pass:
        _choose_float_layers(walk)  # needs no statistics
    t = time.perf_counter()
    _start(walk, streamed, batches, anti_batches)
    writer.write(model, EMBED)
    release_module(model.get_submodule(EMBED))
    if cfg.use_fa_quant:
        use_quantized_attention(model)
        walk.attention = AttentionQuantCalibrator(fa_amp=cfg.fa_amp)

    layers = decoder_layers(model)
    for i in progress.stage("observe" if two_pass else "quantize", range(len(layers)), total=len(layers)):
        layer = streamed.load(layer_name(i), options.device)
        _statistics_step(walk, i, layer)
        if not two_pass:
            _calibrate_step(walk, i, layer)
            writer.write(model, layer_name(i))
            release_module(layer)
        else:
            streamed.reset(layer_name(i))  # read again, as the checkpoint has it, in the second pass
    norm = streamed.load(FINAL_NORM, options.device)
    _head_statistics(walk, norm)
    walk.drop_streams("float_calls", "smoothed_calls")

    if two_pass:
        _choose_float_layers(walk)
        for i in progress.stage("calibrate", range(len(layers)), total=len(layers)):
            layer = streamed.load(layer_name(i), options.device)
            reapply_layer(walk.contexts(i, layer), walk.report)
            walk.add_norm_biases([layer.input_layernorm, layer.post_attention_layernorm])
            _calibrate_step(walk, i, layer)
            writer.write(model, layer_name(i))
            release_module(layer)

    streamed.load(LM_HEAD, options.device)
    if LM_HEAD not in walk.float_layers:
        make_observer = observer_factory(cfg.act_method, {n: s.range_param for n, s in walk.post_stats.items()})
        walk.outcome.update(calibrate_head(model, walk.calib_calls, cfg, make_observer))
    walk.rows[LM_HEAD] = _row(walk, LM_HEAD)
    walk.drop_streams("calib_calls")
    writer.write(model, FINAL_NORM)
    writer.write(model, LM_HEAD)
    release_module(final_norm(model))
    release_module(model.get_submodule(LM_HEAD))
    timings["layerwise_s"] = time.perf_counter() - t

    scheme_reports: dict[str, Any] = {}
    if walk.attention is not None:
        walk.attention.keep_float(model)
        scheme_reports["attention_quant"] = walk.attention.report()
    if walk.kv_cache is not None:
        scheme_reports["kv_cache"] = walk.kv_cache.report()
    result = QuantResult(
        model=model,
        config=cfg,
        quant_type=cfg.quant_type,
        layers=[walk.rows[n] for n in walk.names],
        anti_outlier=walk.report,
        timings=timings,
        calib_batches=len(batches),
        calib_tokens=batch_tokens(batches),
        scheme_reports=scheme_reports,
    )
    return result
