"""A tiny model directory with one planted sensitive linear, and the overrides that point
``sweep.analyze`` / ``sweep.tune`` at it (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_data import write_calib_file
from tiny_models import build_tiny_llama, build_tiny_tokenizer

PLANTED = "model.layers.1.mlp.down_proj"
TEXT_LINES = [
    " = Ghost in the Shell = ",
    " Ghost in the Shell is an anime film produced by Production I.G in 1995 . ",
    " The quick brown fox jumps over the lazy dog . There are 15 trees in the grove . ",
    " Ethanol fuel takes energy to produce from biomass grown , collected and dried . ",
]


def plant_sensitive_linear(model: torch.nn.Module, layer: int = 1, factor: float = 300.0) -> None:
    """Make layer ``layer``'s down_proj sensitive without changing the float model: shrink up_proj's
    output channel 0 by ``factor`` and grow down_proj's input column 0 by it. down_proj's int8 row
    scales are then set by that column (its other weights round to a few levels) and its input
    channel 0 falls below one activation step."""
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.up_proj.weight[0, :] /= factor
        mlp.down_proj.weight[:, 0] *= factor


def write_planted_inputs(root: Path) -> list[str]:
    """Model directory, calibration and text files under ``root``; returns the config overrides."""
    root.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama("llama2")
    plant_sensitive_linear(model)
    model.save_pretrained(root / "model")
    build_tiny_tokenizer().save_pretrained(root / "model")
    calib = write_calib_file(root / "calib.jsonl")
    text = root / "text.raw"
    text.write_text("\n".join(TEXT_LINES * 80) + "\n")
    return [
        f"model.path={root / 'model'}",
        f"calib.calib_file={calib}",
        f"tokens.data_path={text}",
        "tokens.block_size=32",
        "tokens.n_blocks=32",
        "anti_method=none",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'artifacts'}",
    ]
