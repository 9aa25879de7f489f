"""Choosing the linears that stay in float (SPEC §1 and §5): names, last linear, level, threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from quant.arch import LM_HEAD, layer_index
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.input_stats import InputStats
from quant.quant_types import QuantType

_EARLY_LAYERS = 5  # layers 0-4 of the llama3 / llama3.1 defaults


def default_disable_names(model_type: str, a_bit: int, all_linears: Sequence[str]) -> list[str]:
    """The reference's default float layers for ``model_type`` (used only when a_bit is 8)."""
    if a_bit != 8:
        return []
    down_projs = [n for n in all_linears if n.endswith(".mlp.down_proj")]
    early = [n for n in all_linears if (idx := layer_index(n)) is not None and idx < _EARLY_LAYERS]
    if model_type in ("llama", "llama2"):
        return down_projs
    if model_type == "llama3":
        return [*early, LM_HEAD]
    if model_type in ("llama3.1_instruct", "llama3.1_fp"):
        early_no_down = [n for n in early if not n.endswith(".mlp.down_proj")]
        return _ordered_union(all_linears, down_projs + early_no_down + [LM_HEAD])
    raise QuantInputError("model_type", f"invalid value {model_type!r}")


def _ordered_union(order: Sequence[str], names: Sequence[str]) -> list[str]:
    wanted = set(names)
    return [n for n in order if n in wanted]


def check_disable_names(names: Sequence[str], all_linears: Sequence[str]) -> None:
    """Stop with a clear error when the user names layers the model does not have."""
    known = set(all_linears)
    missing = [n for n in names if n not in known]
    if missing:
        example = ", ".join(all_linears[:2])
        raise QuantInputError(
            "disable_names",
            f"no linear layer named {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
            f"valid: the model's linear names, e.g. {example}, ..., {LM_HEAD}",
        )


def names_fallback(
    cfg_names: Sequence[str] | None, model_type: str, a_bit: int, all_linears: Sequence[str]
) -> dict[str, str]:
    """Float layers from ``disable_names`` (the user's, else the model_type's defaults) with reasons."""
    if cfg_names is not None:
        check_disable_names(cfg_names, all_linears)
        return {n: "disable_names" for n in cfg_names}
    return {
        n: f"default disable_names of model_type {model_type}"
        for n in default_disable_names(model_type, a_bit, all_linears)
    }


def level_fallback(n: int, range_params: Mapping[str, float], already_float: Sequence[str]) -> dict[str, str]:
    """``disable_level Ln``: the n linears with the largest range_param not already float.

    Ties (q/k/v share one input) go in module order: the sort is stable over ``range_params``'
    order, which must be module order.
    """
    if n <= 0:
        return {}
    skip = set(already_float)
    candidates = [(name, rp) for name, rp in range_params.items() if name not in skip]
    ranked = sorted(candidates, key=lambda item: -item[1])
    return {
        name: f"disable_level L{n}: range_param {rp:.1f} ranks {rank}"
        for rank, (name, rp) in enumerate(ranked[:n], start=1)
    }


def threshold_candidates(disable_names: Sequence[str] | None, all_linears: Sequence[str]) -> list[str]:
    """The linears ``disable_threshold`` judges: the user's disable_names, else every down_proj (SPEC §5)."""
    if disable_names:
        return list(disable_names)
    return [n for n in all_linears if n.endswith(".mlp.down_proj")]


def threshold_fallback(
    threshold: float,
    quantile_scores: Mapping[str, float | None],
    candidates: Sequence[str],
    already_float: Sequence[str],
) -> dict[str, str]:
    """``disable_threshold t > 0``: every candidate whose quantile score exceeds t stays float (SPEC §5).

    The reference's candidates are the user's disable_names if given, else every down_proj; with a
    threshold, candidates scoring ≤ t are quantized even when the user named them.
    """
    if threshold <= 0:
        return {}
    skip = set(already_float)
    missing = [n for n in candidates if quantile_scores.get(n) is None]
    if missing:
        raise ValueError(f"disable_threshold: no quantile score for {', '.join(missing[:3])}")
    return {
        name: f"disable_threshold {threshold:g}: quantile score {quantile_scores[name]:.4g} > {threshold:g}"
        for name in candidates
        if name not in skip and quantile_scores[name] > threshold
    }


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
    if cfg.quant_type == QuantType.FLOAT:
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
