"""In-process candidates for ``sweep.analyze`` and ``sweep.tune``: one float model, one
calibration, one smoothing per anti-outlier setting, and a quantized model per recipe, all scored
against the float model on one fixed token set (``eval.token_scores``)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf
from torch import nn

from eval.token_scores import FloatReference, TokenBlocks, shuffled_blocks, token_blocks
from quant.config import QuantConfig
from quant.memo import MemoryMemo
from quant.model_io import LoadedModel, load_model
from quant.pipeline import QuantResult, quantize, smoothed_model
from quant.smoothing import Smoothing
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
    """The float model, its reference scores on the token set, and the memo that shares the
    calibration data, float statistics and one smoothing per anti-outlier setting between recipes."""

    cfg: DictConfig
    loaded: LoadedModel
    blocks: TokenBlocks
    reference: FloatReference
    memo: MemoryMemo = field(default_factory=MemoryMemo)

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
        tokens = cfg.tokens
        blocks = token_blocks(
            loaded.tokenizer, str(tokens.data_path), block_size=int(tokens.block_size), n_blocks=int(tokens.n_blocks)
        )
        blocks = shuffled_blocks(blocks, tokens.get("shuffle_seed"))
        reference = FloatReference(loaded.model, blocks, batch_size=int(tokens.get("batch_size", 8)))
        return cls(cfg, loaded, blocks, reference)

    def recipe(self, setting: Setting, float_linears: Sequence[str]) -> QuantConfig:
        """The recipe of ``setting`` with exactly ``float_linears`` float (and lm_head, by disable_last_linear)."""
        cfg = copy.deepcopy(self.cfg)
        cfg.anti_method = OmegaConf.load(CONF_DIR / "anti_method" / f"{setting.anti_method}.yaml")  # replaced whole
        cfg.act_method = setting.act_method
        cfg.disable_level = "L0"
        qcfg = quant_config_from_hydra(cfg)
        return dataclasses.replace(qcfg, disable_names=list(float_linears))

    def smoothed(self, qcfg: QuantConfig) -> tuple[nn.Module, Smoothing]:
        """A copy of the float model after the recipe's anti-outlier step (computed once per setting)."""
        return smoothed_model(self.loaded.model, self.loaded.tokenizer, qcfg, self.memo)

    def quantized(self, qcfg: QuantConfig) -> QuantResult:
        """The float model quantized by ``qcfg`` (a copy; fake-quant modules in place)."""
        return quantize(self.loaded.model, self.loaded.tokenizer, qcfg, self.memo)
