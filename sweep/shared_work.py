"""What the jobs of a sweep share through the process's :class:`~sweep.store.WorkStore`: the
model's identity, the loaded float model, its BoolQ (and perplexity) baseline, and the memo that
``quant.pipeline.quantize`` asks for the calibration data, float statistics and smoothing.

One model identity keys all of it: the sha256 of every file the load reads (weights, config,
tokenizer; :func:`quant.model_io.source_files`), each file hashed once and memoised in the store
under its path, size, mtime and inode. A copied model file is hashed once more and then hits
every entry of the original; a changed one misses them all.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from eval.baseline import FloatBaseline, evaluation_identity, float_baseline
from quant.device import resolve_device
from quant.errors import QuantInputError
from quant.memo import Memo, content_key
from quant.model_io import LoadedModel, ModelSource, load_model, load_tokenizer, resolve_model_source, source_files
from quant.shard_writer import save_module_tensors
from sweep.provenance import UNRESOLVED_MODEL
from sweep.store import CacheEvent, JsonCodec, WorkStore

# Which model sources keep their loaded float model on disk: "converted" = those whose loading
# converts the weights (GGUF), "all", or "none".
FLOAT_MODEL_DISK_POLICIES = ("converted", "all", "none")
_HASH_CHUNK = 1 << 24


@dataclass(frozen=True)
class FloatModel:
    """The loaded float model (shared: never modify it) and its content identity."""

    loaded: LoadedModel
    identity: str


def file_sha256(store: WorkStore, path: Path) -> str:
    """sha256 of a file's bytes, memoised under its path, size, mtime and inode."""
    stat = path.stat()

    def digest() -> str:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                sha.update(chunk)
        return sha.hexdigest()

    key = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino]
    return store.get_or_compute("file_sha256", key, digest, JsonCodec(str, str))


def path_identity(store: WorkStore, model_path: str) -> str:
    """:func:`model_identity` of the model at ``model_path``; "unresolved" when no model is there
    (the checks that load it report the bad path)."""
    try:
        return model_identity(store, resolve_model_source(model_path))
    except (QuantInputError, OSError):
        return UNRESOLVED_MODEL


def model_identity(store: WorkStore, source: ModelSource) -> str:
    """Content identity of a model source: its files' bytes by name (a hub id: its name)."""
    if source.kind == "hub":
        return content_key("hub", source.location)
    base = Path(source.location) if source.kind == "hf_dir" else Path(source.location).parent
    return content_key(source.kind, {str(p.relative_to(base)): file_sha256(store, p) for p in source_files(source)})


class FloatModelCodec:
    """The loaded float model as safetensors + config, reloaded in about a second (loading a GGUF
    file dequantizes every tensor: tens of seconds for SmolLM2-135M). The tokenizer is always
    loaded from the model's own source."""

    WEIGHTS, META = "model.safetensors", "meta.json"

    def __init__(self, source: ModelSource, device_type: str, trust_remote_code: bool, tokenizer_args: Any) -> None:
        self.source, self.device_type = source, device_type
        self.trust_remote_code, self.tokenizer_args = trust_remote_code, tokenizer_args

    def write(self, value: LoadedModel, directory: Path) -> None:
        model = value.model
        save_module_tensors(model, directory / self.WEIGHTS)  # tied tensors once
        model.config.save_pretrained(directory)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(directory)
        meta = {
            "source": value.source,
            "original_dtype": str(value.original_dtype).removeprefix("torch."),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        }
        (directory / self.META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def read(self, directory: Path) -> LoadedModel:
        """The :class:`LoadedModel` that ``load_model`` returned: same tensors, buffers and configs."""
        meta = json.loads((directory / self.META).read_text(encoding="utf-8"))
        config = AutoConfig.from_pretrained(directory, trust_remote_code=self.trust_remote_code)
        # A GGUF-loaded config names its quantizer; the cached weights are plain float tensors, so
        # build without it and give the model its original config afterwards (export writes it).
        build_config = copy.deepcopy(config)
        if hasattr(build_config, "quantization_config"):
            del build_config.quantization_config
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            config=build_config,
            dtype=getattr(torch, meta["dtype"]),
            trust_remote_code=self.trust_remote_code,
            use_safetensors=True,
        )
        config._name_or_path = self.source.directory  # as when loaded from the source itself
        model.config = config
        if (directory / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(directory)
        model = model.to(resolve_device(self.device_type)).eval()
        tokenizer = load_tokenizer(
            self.source, trust_remote_code=self.trust_remote_code, tokenizer_args=self.tokenizer_args
        )
        return LoadedModel(model, tokenizer, meta["source"], getattr(torch, meta["original_dtype"]))


def float_model(
    store: WorkStore,
    model_path: str,
    *,
    device_type: str = "cpu",
    trust_remote_code: bool = False,
    tokenizer_args: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    disk_policy: str = "converted",
) -> FloatModel:
    """The loaded float model: from memory, the store's disk (per ``disk_policy``), or its source."""
    if disk_policy not in FLOAT_MODEL_DISK_POLICIES:
        raise ValueError(f"cache.float_model: {disk_policy!r}; valid: {', '.join(FLOAT_MODEL_DISK_POLICIES)}")
    source = resolve_model_source(model_path)
    identity = model_identity(store, source)
    on_disk = disk_policy == "all" or (disk_policy == "converted" and source.kind == "gguf")
    codec = FloatModelCodec(source, device_type, trust_remote_code, tokenizer_args) if on_disk else None
    key = [
        identity,
        device_type,
        trust_remote_code,
        tokenizer_args or {},
        allow_pickle,
        transformers.__version__,  # the GGUF conversion lives in transformers
        torch.__version__,
    ]
    loaded = store.get_or_compute(
        "float_model",
        key,
        lambda: load_model(
            model_path,
            device_type=device_type,
            trust_remote_code=trust_remote_code,
            tokenizer_args=tokenizer_args,
            allow_pickle=allow_pickle,
        ),
        codec,
    )
    return FloatModel(loaded, identity)


def pipeline_memo(store: WorkStore, model: FloatModel, tokenizer_args: dict[str, Any] | None) -> Memo:
    """What ``quantize`` shares through the store for this float model (its tokenizer settings included)."""
    return store.memo([model.identity, tokenizer_args or {}])


def baseline(
    store: WorkStore, model: FloatModel, boolq: dict[str, Any], perplexity: dict[str, Any] | None
) -> tuple[FloatBaseline, CacheEvent]:
    """The float model's BoolQ (and perplexity) through the store: evaluated once per content.

    ``boolq``: ``evaluate_boolq`` arguments (device included); ``perplexity``: ``wikitext_perplexity``
    arguments with ``path``, or None.
    """
    loaded = model.loaded
    parameter = next(loaded.model.parameters())
    key = [
        model.identity,
        str(parameter.dtype),
        str(parameter.device),
        evaluation_identity(boolq, perplexity),
        torch.__version__,
        transformers.__version__,
    ]
    found = store.lookup(
        "baseline",
        key,
        lambda: float_baseline(loaded.model, loaded.tokenizer, boolq=boolq, perplexity=perplexity),
        JsonCodec(FloatBaseline.to_dict, FloatBaseline.from_dict),
    )
    return found.value, found.event
