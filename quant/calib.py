"""Calibration data (SPEC §1): texts from a JSONL file or a list, one text per batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from quant.errors import QuantInputError

Batch = dict[str, torch.Tensor]
TEXT_KEY = "inputs_pretokenized"


def read_calib_texts(calib_file: str | Path, param: str = "calib_file") -> list[str]:
    """Texts of a JSONL file: each line's ``inputs_pretokenized``, or the raw line if the key is missing."""
    path = Path(calib_file)
    if not path.is_file():
        raise QuantInputError(param, f"{calib_file} is not a readable file")
    texts: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantInputError(param, f"{calib_file} cannot be read as UTF-8 text ({exc.__class__.__name__})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        texts.append(_text_of_line(line, param, calib_file, number))
    if not texts:
        raise QuantInputError(param, f"{calib_file} holds no calibration text")
    return texts


def _text_of_line(line: str, param: str, calib_file: str | Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(record, dict):
        text = record.get(TEXT_KEY)
        if text is None:
            return line
        if not isinstance(text, str) or not text.strip():
            raise QuantInputError(param, f"{calib_file} line {number}: '{TEXT_KEY}' is not a non-empty string")
        return text
    if isinstance(record, str):
        return record
    return line


def tokenize_texts(
    tokenizer: Any,
    texts: list[str],
    *,
    device: torch.device | str = "cpu",
    input_ids_name: str = "input_ids",
    attention_mask_name: str = "attention_mask",
) -> list[Batch]:
    """One batch per text, tokenized alone with special tokens (BOS) as the reference does."""
    batches: list[Batch] = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=True)
        for name, param in ((input_ids_name, "input_ids_name"), (attention_mask_name, "attention_mask_name")):
            if name not in encoded:
                raise QuantInputError(param, f"{name!r} is not a key of the tokenizer output: {sorted(encoded)}")
        batches.append(
            {
                "input_ids": encoded[input_ids_name].to(device),
                "attention_mask": encoded[attention_mask_name].to(device),
            }
        )
    return batches
