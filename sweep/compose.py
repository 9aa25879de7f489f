"""Hydra's compose API for the command-line tools that are not Hydra apps (``sweep.select``,
``sweep.regress``): same ``conf/`` tree, same ``key=value`` overrides, no output directories."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from quant.errors import QuantInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)  # conf/config.yaml's data_root
# A suffix of hydra.sweep.dir that differs between sweeps started in the same second. Cached like
# Hydra's ${now:}: every job of a sweep (Hydra copies the cache into each job's config) sees one value.
OmegaConf.register_new_resolver("sweep_suffix", lambda: secrets.token_hex(3), use_cache=True, replace=True)


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
        raise hydra_input_error(exc) from None
    return OmegaConf.create(resolved)


def hydra_input_error(exc: Exception, valid_keys: Sequence[str] | None = None) -> QuantInputError:
    """Hydra's (multi-line) composition error as one line naming the key and what is valid:
    ``scheme: no config 'w3a3'; valid values: w4a16, ...``. ``valid_keys``: the keys that exist
    where an unknown key was overridden, when the caller knows them."""
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        group, _, name = str(exc.missing_cfg_file).rpartition("/")
        return QuantInputError(group or "config", f"no config {name!r}; valid values: {', '.join(exc.options)}")
    key = getattr(exc.__cause__, "full_key", None) or getattr(exc, "full_key", None)
    if key and " is not in struct" in str(exc.__cause__ or exc):
        valid = f"; valid keys here: {', '.join(valid_keys)}" if valid_keys else ""
        return QuantInputError(str(key), f"not a config key (add a new one with +{key}=...){valid}")
    text = _first_line(exc)
    match = re.match(r"Ambiguous value for argument '([^=']+)=([^']*)'", text)
    if match:
        return QuantInputError(
            match.group(1), f"several values {match.group(2)!r} in a single run; valid: one value, or -m to sweep them"
        )
    cause = f" ({_first_line(exc.__cause__)})" if exc.__cause__ is not None else ""
    return QuantInputError(str(key) if key else "overrides", f"{text}{cause}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else exc.__class__.__name__
