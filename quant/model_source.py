"""Where a model's weights come from, and whether its files can be read: no torch, no transformers.

Kept free of heavy imports so that bad input (a missing directory, a truncated ``model.safetensors``,
a ``config.json`` that is not JSON) is reported in a fraction of a second, before any model loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from quant.errors import QuantInputError

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_JSON_FILES = ("config.json", "model.safetensors.index.json", "generation_config.json")
MODEL_PATH_VALID = "valid: an HF model directory (config.json + safetensors), a .gguf file or a directory with one"


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: ``kind`` is ``hf_dir``, ``gguf`` or ``hub``."""

    kind: str
    location: str
    gguf_file: str | None = None

    @property
    def directory(self) -> str:
        return str(Path(self.location).parent) if self.kind == "gguf" else self.location


def resolve_model_source(model_path: str, param: str = "model_path") -> ModelSource:
    """Decide how to load ``model_path``; a clear error names ``param`` when it cannot be."""
    path = Path(model_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        has_config = (path / "config.json").is_file()
        if not has_config and len(ggufs) == 1:
            return ModelSource("gguf", str(ggufs[0].resolve()), ggufs[0].name)
        if not has_config:
            raise QuantInputError(
                param, f"{model_path} has no config.json and no single .gguf file; {MODEL_PATH_VALID}"
            )
        return ModelSource("hf_dir", str(path.resolve()))
    if path.exists():
        raise QuantInputError(param, f"{model_path} is neither a model directory nor a .gguf file; {MODEL_PATH_VALID}")
    if _HUB_ID_RE.match(model_path) and not model_path.startswith((".", "/")):
        return ModelSource("hub", model_path)
    raise QuantInputError(param, f"{model_path} does not exist; {MODEL_PATH_VALID}")


def check_model_files(source: ModelSource, param: str = "model_path") -> None:
    """Raise :class:`QuantInputError` (naming ``param`` and the file) when a local model's JSON files
    do not parse or a ``.safetensors`` file is truncated or not a safetensors file.

    Reads only the JSON files and each safetensors header (which must cover the whole file), never
    the tensors. Hub ids and GGUF files are left to the loader.
    """
    if source.kind != "hf_dir":
        return
    directory = Path(source.location)
    for name in _JSON_FILES:
        path = directory / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise QuantInputError(param, f"{path} is not valid JSON ({exc}); {MODEL_PATH_VALID}") from None
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except SafetensorError as exc:
            raise QuantInputError(
                param, f"{path} is truncated or not a safetensors file ({exc}); {MODEL_PATH_VALID}"
            ) from None
