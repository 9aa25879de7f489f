"""In-process candidates for ``sweep.analyze`` and ``sweep.tune``: one float model, one
calibration, one smoothing per anti-outlier setting, and a quantized model per recipe, all scored
against the float model on one fixed token set (``eval.token_scores``)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from eval.token_scores import FloatReference, TokenBlocks, token_blocks
from quant.config import QuantConfig
from quant.model_io import LoadedModel, load_model
from quant.pipeline import QuantResult, Smoothing, calibration_batches, quantize, smooth, smoothing_settings
from sweep.compose import CONF_DIR
from sweep.hydra_config import quant_config_from_hydra


@dataclass(frozen=True)
class Setting:
    """One point of the search space before the fallback: anti-outlier method × act_method."""

    anti_method: str
    act_method: int

    @property
    def label(self) -> str:
        return f"{self.anti_method}-act{self.act_method}"


@dataclass
class Workbench:
    """The float model, its calibration batches and its reference scores on the token set."""

    cfg: DictConfig
    loaded: LoadedModel
    batches: list[Any]
    blocks: TokenBlocks
    reference: FloatReference
    _smoothed: dict[str, tuple[nn.Module, Smoothing]] = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: DictConfig) -> Workbench:
        """Load the model of ``cfg`` (``model``, ``calib``, ``quant.device_type``) and score float on ``tokens``."""
        qcfg = quant_config_from_hydra(cfg)
        loaded = load_model(
            qcfg.model_path,
            device_type=qcfg.device_type,
            trust_remote_code=qcfg.trust_remote_code,
            tokenizer_args=qcfg.tokenizer_args,
            allow_pickle=bool(cfg.model.get("allow_pickle", False)),
        )
        device = next(loaded.model.parameters()).device
        batches = calibration_batches(loaded.tokenizer, qcfg, device)
        tokens = cfg.tokens
        blocks = token_blocks(
            loaded.tokenizer, str(tokens.data_path), block_size=int(tokens.block_size), n_blocks=int(tokens.n_blocks)
        )
        reference = FloatReference(loaded.model, blocks, batch_size=int(tokens.get("batch_size", 8)))
        return cls(cfg, loaded, batches, blocks, reference)

    def recipe(self, setting: Setting, float_linears: Sequence[str]) -> QuantConfig:
        """The recipe of ``setting`` with exactly ``float_linears`` float (and lm_head, by disable_last_linear)."""
        cfg = copy.deepcopy(self.cfg)
        cfg.anti_method = OmegaConf.load(CONF_DIR / "anti_method" / f"{setting.anti_method}.yaml")  # replaced whole
        cfg.act_method = setting.act_method
        cfg.disable_level = "L0"
        qcfg = quant_config_from_hydra(cfg)
        return dataclasses.replace(qcfg, disable_names=list(float_linears))

    def smoothed(self, qcfg: QuantConfig) -> tuple[nn.Module, Smoothing]:
        """The float model after the recipe's anti-outlier step (computed once per smoothing setting)."""
        key = json.dumps(smoothing_settings(qcfg), sort_keys=True, default=str)
        if key not in self._smoothed:
            model = copy.deepcopy(self.loaded.model)
            self._smoothed[key] = (model, smooth(model, self.batches, qcfg))
        return self._smoothed[key]

    def quantized(self, qcfg: QuantConfig) -> QuantResult:
        """A fresh copy of the smoothed model quantized by ``qcfg`` (fake-quant modules in place)."""
        smoothed_model, smoothing = self.smoothed(qcfg)
        model = copy.deepcopy(smoothed_model)
        return quantize(model, self.loaded.tokenizer, qcfg, calib_batches=self.batches, smoothing=smoothing)
