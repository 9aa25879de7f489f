"""Fixtures for the eval tests: offline hub settings, small text files, the real SmolLM2 model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in these tests may reach a hub; set before datasets / huggingface_hub read them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SMALL_TEXT_LINES = [
    " = Ghost in the Shell = ",
    " Ghost in the Shell is an anime film produced by Production I.G in 1995 . ",
    " The quick brown fox jumps over the lazy dog . There are 15 trees in the grove . ",
    " Ethanol fuel takes energy to produce from biomass grown , collected and dried . ",
]


@pytest.fixture()
def small_text_lf(tmp_path) -> Path:
    """A few WikiText-style lines with LF line endings."""
    path = tmp_path / "small_lf.raw"
    path.write_bytes(("\n".join(SMALL_TEXT_LINES) + "\n").encode("utf-8"))
    return path


@pytest.fixture()
def small_text_crlf(tmp_path) -> Path:
    """The same lines as ``small_text_lf`` with CRLF line endings (like the shared wiki.test.raw)."""
    path = tmp_path / "small_crlf.raw"
    path.write_bytes(("\r\n".join(SMALL_TEXT_LINES) + "\r\n").encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """(model, tokenizer) of the real SmolLM2-135M-Instruct GGUF, loaded once per module (~15 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent / "hf_tokenizer")
    return model.eval(), tokenizer
