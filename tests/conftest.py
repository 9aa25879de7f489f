"""Shared fixtures: tiny in-process LLaMA models, paths to the shared real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tiny_models import build_tiny_llama, build_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared real data: QUANT_DATA_DIR if set (as for the Hydra app), else ../shared/data.
SHARED_DATA = Path(os.environ.get("QUANT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
SMOLLM2_GGUF = SHARED_DATA / "models" / "smollm2-135m-instruct-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BOOLQ_VAL = SHARED_DATA / "boolq" / "val.jsonl"
BOOLQ_CALIB = SHARED_DATA / "msmodelslim_common" / "boolq.jsonl"
WIKITEXT = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model():
    """A fresh tiny LLaMA-2-shaped model (MHA) for each test."""
    return build_tiny_llama("llama2")


@pytest.fixture()
def tiny_model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny LLaMA saved as an HF directory (safetensors + tokenizer)."""
    path = tmp_path / "tiny-llama"
    build_tiny_llama("llama2").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def calib_file(tmp_path) -> Path:
    """Eight short calibration texts in the reference's JSONL form."""
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Question: is the sky blue? Answer: yes",
        "Ethanol fuel takes energy to produce from biomass.",
        "There are 15 trees in the grove.",
        "Ghost in the Shell is an anime film produced in 1995.",
        "A passage about history, science and music.",
        "Question: is fire cold? Answer: no",
        "Grove workers will plant trees today.",
    ]
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"id": i, "inputs_pretokenized": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture()
def tiny_boolq_file(tmp_path) -> Path:
    """Eight BoolQ-style examples in the shared file's format (label "true"/"false")."""
    rows = [
        ("is the sky blue", "The sky is blue on a clear day.", "true"),
        ("is fire cold", "Fire is hot.", "false"),
        ("do fish swim", "Fish swim in water.", "true"),
        ("is ice hot", "Ice is frozen water and cold.", "false"),
        ("is the grove full of trees", "There are 15 trees in the grove.", "true"),
        ("is ethanol free to produce", "Ethanol fuel takes energy to produce.", "false"),
        ("was the film produced in 1995", "Ghost in the Shell was produced in 1995.", "true"),
        ("is the dog quick", "The quick brown fox jumps over the lazy dog.", "false"),
    ]
    path = tmp_path / "boolq.jsonl"
    path.write_text("".join(json.dumps({"question": q, "passage": p, "label": lab}) + "\n" for q, p, lab in rows))
    return path


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared data not found: {path} (the project reads ../shared/data; see README)")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _require(SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def boolq_val() -> Path:
    return _require(BOOLQ_VAL)


@pytest.fixture(scope="session")
def boolq_calib() -> Path:
    return _require(BOOLQ_CALIB)


@pytest.fixture(scope="session")
def wikitext_raw() -> Path:
    return _require(WIKITEXT)
