"""Load → quantize → save for one recipe, with every input checked before any work starts."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quant.arch import linear_names_for_layers
from quant.calib_data import check_input_names, read_anti_calib_file, read_calib_texts
from quant.checkpoint import open_model
from quant.config import DEFAULT_ATTENTION_MASK_NAME, DEFAULT_INPUT_IDS_NAME, QuantConfig
from quant.device import resolve_device
from quant.errors import QuantInputError
from quant.export import (
    LAYER_REPORT_FILE,
    RECIPE_FILE,
    ModelWriter,
    SavedOutput,
    check_save_directory,
    mindie_quantization_config,
    save_quantized,
)
from quant.fallback import check_disable_names
from quant.model_io import LoadedModel, load_model, load_tokenizer
from quant.model_source import ModelSource, check_model_files, resolve_model_source
from quant.pipeline import QuantResult, quantize
from quant.progress import float_layers_summary
from quant.streaming import LayerwiseOptions, layerwise_unsupported, quantize_layerwise


@contextlib.contextmanager
def _spill_directory(cfg: QuantConfig, offload_dir: str | None) -> Iterator[Path]:
    """``offload_dir`` if given, else a temporary directory beside the output, removed afterwards."""
    if offload_dir:
        path = Path(offload_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    parent = Path(cfg.save_directory).expanduser().absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quant-llama-spill-", dir=parent) as tmp:
        yield Path(tmp)


def check_inputs(cfg: QuantConfig, overwrite: bool = False) -> None:
    """Everything that can be checked without loading the model: paths, files, settings, device.

    disable_names are checked here when the model has a config.json (else right after loading,
    before anything is written); non-default tokenizer key names load the tokenizer alone.
    """
    cfg.check_supported()
    source = resolve_model_source(cfg.model_path)
    check_model_files(source)
    if cfg.save_directory:
        check_save_directory(cfg.save_directory, overwrite)
    if cfg.calib_file:
        read_calib_texts(cfg.calib_file)
    elif not cfg.calib_texts:
        raise QuantInputError("calib_file", "no calibration data: give calib_file (JSONL) or calib_texts")
    if cfg.anti_calib_file:
        read_anti_calib_file(cfg.anti_calib_file)
    resolve_device(cfg.device_type)
    if cfg.disable_names and source.kind == "hf_dir":
        check_disable_names(cfg.disable_names, linear_names_for_layers(_config_layer_count(source)))
    if (cfg.input_ids_name, cfg.attention_mask_name) != (DEFAULT_INPUT_IDS_NAME, DEFAULT_ATTENTION_MASK_NAME):
        tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code, tokenizer_args=cfg.tokenizer_args)
        check_input_names(tokenizer, cfg.input_ids_name, cfg.attention_mask_name)


def _config_layer_count(source: ModelSource) -> int:
    config = json.loads((Path(source.location) / "config.json").read_text(encoding="utf-8"))
    return int(config["num_hidden_layers"])


def output_extras(result: QuantResult) -> dict[str, Any]:
    """What the output holds besides the weights: the recipe, the per-layer report, mindie's config keys."""
    cfg = result.config
    return {
        "extra_json": {RECIPE_FILE: cfg.to_dict(), LAYER_REPORT_FILE: result.layer_report()},
        "config_updates": mindie_quantization_config(cfg) if cfg.mindie_format else None,
    }


def save_result(result: QuantResult, loaded: LoadedModel, save_directory: str, overwrite: bool = False) -> SavedOutput:
    """Write the quantized model plus its recipe and per-layer report beside the weights."""
    return save_quantized(
        result.model,
        loaded.tokenizer,
        save_directory,
        quant_type=result.quant_type,
        original_dtype=loaded.original_dtype,
        overwrite=overwrite,
        part_file_size=result.config.part_file_size,
        mindie_format=result.config.mindie_format,
        **output_extras(result),
    )


def layerwise_serves(cfg: QuantConfig, allow_pickle: bool = False) -> bool:
    """Whether ``quant-llama`` quantizes this recipe layer by layer: a local safetensors or GGUF
    checkpoint and a recipe the layer-wise path supports (the output is the same either way)."""
    source = resolve_model_source(cfg.model_path)
    if source.kind == "gguf":
        return layerwise_unsupported(cfg) is None
    if source.kind != "hf_dir" or not any(Path(source.location).glob("*.safetensors")):
        return False
    return layerwise_unsupported(cfg) is None


def quantize_layerwise_to_directory(
    cfg: QuantConfig, overwrite: bool = False, options: LayerwiseOptions | None = None
) -> tuple[QuantResult, SavedOutput]:
    """Read, quantize and write the model one decoder layer at a time (:mod:`quant.streaming`)."""
    options = options or LayerwiseOptions(device=resolve_device(cfg.device_type))
    streamed = open_model(cfg.model_path, options.device.type, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(
        resolve_model_source(cfg.model_path), trust_remote_code=cfg.trust_remote_code, tokenizer_args=cfg.tokenizer_args
    )
    writer = ModelWriter(
        cfg.save_directory,
        quant_type=cfg.quant_type,
        overwrite=overwrite,
        part_file_size=cfg.part_file_size,
        mindie_format=cfg.mindie_format,
    )
    try:
        result = quantize_layerwise(streamed, tokenizer, cfg, writer, options)
    except BaseException:
        writer.abort()
        raise
    saved = writer.finish(result.model, tokenizer, original_dtype=streamed.original_dtype, **output_extras(result))
    return result, saved


def quantize_to_directory(
    cfg: QuantConfig,
    overwrite: bool = False,
    allow_pickle: bool = False,
    layerwise: bool = True,
    activation_budget_gb: float | None = None,
    offload_dir: str | None = None,
) -> dict[str, Any]:
    """The ``quant-llama`` job: returns a short summary of what was written.

    ``layerwise`` (default) reads, quantizes and writes one decoder layer at a time where
    :func:`layerwise_serves`; ``activation_budget_gb`` / ``offload_dir``: hidden states above the
    budget are spilled there (default: a temporary directory beside the output).
    """
    check_inputs(cfg, overwrite)
    t0 = time.perf_counter()
    if layerwise and layerwise_serves(cfg, allow_pickle):
        with _spill_directory(cfg, offload_dir) as spill_dir:
            budget = None if activation_budget_gb is None else int(activation_budget_gb * 2**30)
            options = LayerwiseOptions(resolve_device(cfg.device_type), budget, spill_dir)
            result, saved = quantize_layerwise_to_directory(cfg, overwrite, options)
        load_s = 0.0  # reading is part of the layer-wise pass
    else:
        loaded = load_model(
            cfg.model_path,
            device_type=cfg.device_type,
            trust_remote_code=cfg.trust_remote_code,
            tokenizer_args=cfg.tokenizer_args,
            allow_pickle=allow_pickle,
        )
        load_s = time.perf_counter() - t0
        result = quantize(loaded.model, loaded.tokenizer, cfg)
        saved = save_result(result, loaded, cfg.save_directory, overwrite)
    return {
        "quant_type": result.quant_type,
        "save_directory": str(saved.directory),
        "float_layers": len(result.float_layers),
        "float_summary": float_layers_summary(result.float_layers, LAYER_REPORT_FILE),
        "load_s": load_s,
        "timings": result.timings,
        "bytes": saved.total_bytes,
    }
