"""The sweep's own inputs, checked on the composed config before any model loads: BoolQ and
perplexity settings and data files, and the model's files.

Nothing here imports torch, transformers or MLflow, so a mistake is reported in well under a second.
Each check raises :class:`QuantInputError` naming the config key (``eval.boolq.limit``) and the
valid values; the recipe itself is validated by :class:`quant.config.QuantConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eval.data import read_boolq_jsonl
from quant.errors import QuantInputError, invalid_value
from quant.model_source import check_model_files, resolve_model_source

BOOLQ_FILE_VALID = "valid: a JSONL file, one object per line with question, passage and label"
TEXT_FILE_VALID = "valid: a UTF-8 text file (e.g. wiki.test.raw)"


def check_sweep_inputs(cfg: DictConfig) -> None:
    """Every sweep-side input of one job's config: evaluation settings and files, model files."""
    check_eval_inputs(cfg)
    model_path = str(cfg.model.path)
    check_model_files(resolve_model_source(model_path, param="model.path"), param="model.path")


def check_eval_inputs(cfg: DictConfig) -> None:
    """``eval.boolq.*`` always; ``eval.perplexity.*`` when it is enabled."""
    boolq = _node(cfg, "eval.boolq")
    limit = boolq.get("limit")
    if limit is not None:
        _int_at_least("eval.boolq.limit", limit, 1, "a positive integer, or null for all examples")
    seed = boolq.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid_value("eval.boolq.seed", seed, "an integer, or null for the first examples")
    _int_at_least("eval.boolq.batch_size", boolq.get("batch_size", 8), 1, "a positive integer")
    if not isinstance(boolq.get("add_bos_token", True), bool):
        raise invalid_value("eval.boolq.add_bos_token", boolq.get("add_bos_token"), "true, false")
    _check_boolq_file(boolq.get("data_path"))
    ppl = _node(cfg, "eval.perplexity") if OmegaConf.select(cfg, "eval.perplexity") is not None else {}
    if not isinstance(ppl.get("enabled", False), bool):
        raise invalid_value("eval.perplexity.enabled", ppl.get("enabled"), "true, false")
    if ppl.get("enabled", False):
        _check_perplexity(ppl)


def _node(cfg: DictConfig, key: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)


def _int_at_least(key: str, value: Any, minimum: int, valid: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid_value(key, value, valid or f"an integer >= {minimum}")
    return value


def _existing_file(key: str, path: Any, valid: str) -> Path:
    if path is None or not Path(str(path)).expanduser().is_file():
        raise QuantInputError(key, f"no such file: {path}; {valid}")
    return Path(str(path)).expanduser()


def _check_boolq_file(path: Any) -> None:
    file = _existing_file("eval.boolq.data_path", path, BOOLQ_FILE_VALID)
    try:
        read_boolq_jsonl(file)
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        reason = str(exc).removeprefix(f"{file}:").strip()
        message = f"{file}: not a BoolQ file ({reason}); {BOOLQ_FILE_VALID}"
        raise QuantInputError("eval.boolq.data_path", message) from None


def _check_perplexity(ppl: dict[str, Any]) -> None:
    file = _existing_file("eval.perplexity.data_path", ppl.get("data_path"), TEXT_FILE_VALID)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        message = f"{file}: not readable text ({exc}); {TEXT_FILE_VALID}"
        raise QuantInputError("eval.perplexity.data_path", message) from None
    if not text.strip():
        raise QuantInputError("eval.perplexity.data_path", f"{file}: empty; {TEXT_FILE_VALID}")
    for key, minimum in (("max_tokens", 2), ("block_size", 2), ("stride", 1)):
        if ppl.get(key) is not None:
            _int_at_least(f"eval.perplexity.{key}", ppl[key], minimum)
    block_size, stride = ppl.get("block_size"), ppl.get("stride")
    if block_size is not None and stride is not None and stride > block_size:
        raise invalid_value("eval.perplexity.stride", stride, f"1 ... eval.perplexity.block_size ({block_size})")


def log_weights_policy(cfg: DictConfig, multirun: bool) -> bool:
    """``tracking.log_weights``: true, false, or auto (single run: yes; multirun: no, ``sweep.select``
    logs the promoted run's weights)."""
    value = cfg.tracking.get("log_weights", "auto")
    if isinstance(value, bool):
        return value
    if str(value).lower() != "auto":
        raise QuantInputError("tracking.log_weights", f"invalid value {value!r}; valid values: true, false, auto")
    return not multirun
