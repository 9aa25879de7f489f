"""Map a composed Hydra config onto the one validated :class:`QuantConfig`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from quant.config import QuantConfig

# Groups whose keys are QuantConfig fields; "name" only labels the choice.
_FIELD_GROUPS = ("scheme", "calib", "quant")
_MODEL_FIELDS = {"path": "model_path", "model_type": "model_type", "tokenizer_args": "tokenizer_args"}


def quant_config_from_hydra(cfg: DictConfig) -> QuantConfig:
    """Build the recipe from the groups (scheme, calib, quant), the model, the anti-outlier
    method and the short top-level axes (act_method, disable_level)."""
    values: dict[str, Any] = {}
    for group in _FIELD_GROUPS:
        node = OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else {}
        values.update({k: v for k, v in node.items() if k != "name"})
    model = OmegaConf.to_container(cfg.model, resolve=True)
    values.update({field: model[key] for key, field in _MODEL_FIELDS.items() if key in model})
    anti = OmegaConf.to_container(cfg.anti_method, resolve=True)
    values["anti_method"] = anti["name"]
    values["anti_params"] = dict(anti.get("params") or {})
    values["act_method"] = cfg.act_method
    values["disable_level"] = cfg.disable_level
    values["save_directory"] = str(cfg.save_directory)
    return QuantConfig.from_dict(values)
