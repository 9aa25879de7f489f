"""Hydra's compose API for the command-line tools that are not Hydra apps (``sweep.select``,
``sweep.regress``): same ``conf/`` tree, same ``key=value`` overrides, no output directories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from quant.errors import QuantInputError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_tool_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, resolved (``${hydra:runtime.cwd}`` is the
    current directory); a bad override is a :class:`QuantInputError` naming it."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # serves ${hydra:...} interpolations
        with open_dict(cfg):
            del cfg["hydra"]
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise QuantInputError("overrides", first_line) from None
    return OmegaConf.create(resolved)
