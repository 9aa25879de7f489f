"""Calibration data (SPEC §1): texts from a JSONL file or a list, one text per batch; and the
anti-outlier data of ``anti_calib_file`` (``.jsonl``: groups of 4 texts without special tokens;
``.json``: a list of batches of ``[text]`` with BOS), right-padded with id 0 and unmasked."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from quant.errors import QuantInputError

if TYPE_CHECKING:
    from quant.config import QuantConfig

Batch = dict[str, torch.Tensor]
TEXT_KEY = "inputs_pretokenized"
ANTI_JSONL_GROUP = 4  # .jsonl anti-outlier texts are batched in groups of 4 (SPEC §1)
ANTI_PAD_ID = 0
_ANTI_PARAM = "anti_calib_file"
_JSON_SHAPE = 'a JSON list of batches, each a list of [text] items, e.g. [[["a"], ["b"]]]'


DEFAULT_CALIB_FILE = "msmodelslim_common/teacher_qualification.jsonl"


def default_calib_file() -> Path:
    """The reference's default ``calib_file`` (its ``example/common/teacher_qualification.jsonl``),
    looked up in the shared data: ``$QUANT_DATA_DIR``, else ``../shared/data`` beside the repository."""
    data_root = os.environ.get("QUANT_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(data_root) / DEFAULT_CALIB_FILE


CALIB_FILE_VALID = f"valid: a readable JSONL file, one JSON object per line with a non-empty '{TEXT_KEY}' text"


def read_calib_texts(calib_file: str | Path, param: str = "calib_file") -> list[str]:
    """Texts of a JSONL file: each line's ``inputs_pretokenized``, or the raw line when a JSON object
    lacks that key (SPEC §1); a line that is a JSON string is taken as is.

    Blank lines are skipped; a line that is not JSON, or whose ``inputs_pretokenized`` is empty or not
    a string, is an error naming the line.
    """
    path = Path(calib_file)
    if not path.is_file():
        raise QuantInputError(param, f"{calib_file} is not a readable file; {CALIB_FILE_VALID}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantInputError(
            param, f"{calib_file} cannot be read as UTF-8 text ({exc.__class__.__name__}); {CALIB_FILE_VALID}"
        ) from None
    texts = [_text_of_line(line, param, calib_file, n) for n, line in enumerate(lines, start=1) if line.strip()]
    if not texts:
        raise QuantInputError(param, f"{calib_file} holds no calibration text; {CALIB_FILE_VALID}")
    return texts


def _text_of_line(line: str, param: str, calib_file: str | Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise QuantInputError(param, f"{calib_file} line {number} is not JSON; {CALIB_FILE_VALID}") from None
    if isinstance(record, dict) and TEXT_KEY not in record:
        return line  # the reference uses the raw line when the key is missing
    text = record.get(TEXT_KEY) if isinstance(record, dict) else record
    if not isinstance(text, str) or not text.strip():
        raise QuantInputError(param, f"{calib_file} line {number} holds no '{TEXT_KEY}' text; {CALIB_FILE_VALID}")
    return text


def _model_inputs(encoded: Any, input_ids_name: str, attention_mask_name: str) -> tuple[Any, Any]:
    """The token ids and mask of a tokenizer output, under the configured key names."""
    for name, param in ((input_ids_name, "input_ids_name"), (attention_mask_name, "attention_mask_name")):
        if name not in encoded:
            raise QuantInputError(param, f"{name!r} is not a key of the tokenizer output; valid: {', '.join(encoded)}")
    return encoded[input_ids_name], encoded[attention_mask_name]


def check_input_names(tokenizer: Any, input_ids_name: str, attention_mask_name: str) -> None:
    """Fail before calibration when the configured key names are not in the tokenizer's output."""
    _model_inputs(tokenizer("a", return_tensors="pt"), input_ids_name, attention_mask_name)


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
        ids, mask = _model_inputs(encoded, input_ids_name, attention_mask_name)
        batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return batches


def read_anti_calib_file(anti_calib_file: str | Path) -> tuple[list[list[str]], bool]:
    """The anti-outlier batches of texts and whether special tokens are added (SPEC §1 item 3).

    ``.jsonl``: texts read like ``calib_file``, in groups of 4, no special tokens.
    ``.json``: a list of batches, each a list of ``[text]`` items (a bare string is taken too),
    BOS added.
    """
    path = Path(anti_calib_file)
    if path.suffix == ".jsonl":
        texts = read_calib_texts(path, param=_ANTI_PARAM)
        return [texts[i : i + ANTI_JSONL_GROUP] for i in range(0, len(texts), ANTI_JSONL_GROUP)], False
    if path.suffix != ".json":
        raise QuantInputError(_ANTI_PARAM, f"{anti_calib_file}: valid: a .json or .jsonl file")
    if not path.is_file():
        raise QuantInputError(_ANTI_PARAM, f"{anti_calib_file} is not a readable file; valid: {_JSON_SHAPE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantInputError(
            _ANTI_PARAM, f"{anti_calib_file} is not valid JSON ({exc.__class__.__name__}); valid: {_JSON_SHAPE}"
        ) from None
    return [_json_batch(batch, b, anti_calib_file) for b, batch in enumerate(_json_list(data, anti_calib_file))], True


def _json_list(data: Any, source: str | Path) -> list[Any]:
    if not isinstance(data, list) or not data:
        raise QuantInputError(_ANTI_PARAM, f"{source} must hold {_JSON_SHAPE}")
    return data


def _json_batch(batch: Any, index: int, source: str | Path) -> list[str]:
    if not isinstance(batch, list) or not batch:
        raise QuantInputError(_ANTI_PARAM, f"{source} batch {index} is not a non-empty list; expected {_JSON_SHAPE}")
    texts = []
    for item in batch:
        text = item[0] if isinstance(item, list) and len(item) == 1 else item
        if not isinstance(text, str) or not text.strip():
            raise QuantInputError(
                _ANTI_PARAM,
                f"{source} batch {index}: item {item!r:.60} is not [text] with a non-empty text; valid: {_JSON_SHAPE}",
            )
        texts.append(text)
    return texts


def tokenize_padded(
    tokenizer: Any,
    texts: list[str],
    *,
    add_special_tokens: bool,
    device: torch.device | str = "cpu",
    input_ids_name: str = "input_ids",
    attention_mask_name: str = "attention_mask",
    mask_padding: bool = True,
) -> Batch:
    """One batch of several texts, each tokenized alone, right-padded with id 0.

    ``mask_padding``: the attention mask is 0 on the padding; else it is all ones, so the model
    sees the padded positions as ordinary tokens (the reference's unmasked ``.jsonl`` batch).
    """
    rows = []
    for text in texts:
        encoded = tokenizer(text, add_special_tokens=add_special_tokens)
        ids, mask = _model_inputs(encoded, input_ids_name, attention_mask_name)
        rows.append((list(ids), list(mask)))
    length = max(1, *(len(ids) for ids, _ in rows))
    input_ids = torch.full((len(rows), length), ANTI_PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, : len(mask)] = torch.tensor(mask, dtype=torch.long)
    if not mask_padding:
        attention_mask.fill_(1)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def anti_calibration_batches(
    tokenizer: Any,
    anti_calib_file: str | Path,
    *,
    device: torch.device | str = "cpu",
    input_ids_name: str = "input_ids",
    attention_mask_name: str = "attention_mask",
) -> list[Batch]:
    """The anti-outlier batches of ``anti_calib_file`` (SPEC §1 item 3), tokenized and padded.

    The batches run without an attention mask, as the reference's do (``.jsonl`` [exact]; ``.json``:
    its script passes the token ids alone there too): the padded positions are ordinary tokens and
    count in every statistic.
    """
    groups, special = read_anti_calib_file(anti_calib_file)
    return [
        tokenize_padded(
            tokenizer,
            texts,
            add_special_tokens=special,
            device=device,
            input_ids_name=input_ids_name,
            attention_mask_name=attention_mask_name,
            mask_padding=False,
        )
        for texts in groups
    ]


def calibration_batches(tokenizer: Any, cfg: QuantConfig, device: torch.device | str) -> list[Batch]:
    """Tokenized calibration data: ``calib_file`` if given, else ``calib_texts`` (SPEC §1)."""
    if cfg.calib_file:
        texts = read_calib_texts(cfg.calib_file)
    elif cfg.calib_texts:
        texts = list(cfg.calib_texts)
    else:
        raise QuantInputError("calib_file", "no calibration data: give calib_file (JSONL) or calib_texts")
    return tokenize_texts(
        tokenizer,
        texts,
        device=device,
        input_ids_name=cfg.input_ids_name,
        attention_mask_name=cfg.attention_mask_name,
    )


def anti_outlier_batches(
    tokenizer: Any, cfg: QuantConfig, device: torch.device | str, calib: Sequence[Batch]
) -> list[Batch]:
    """The anti-outlier data: ``anti_calib_file`` if given, else the calibration batches (SPEC §1)."""
    if not cfg.anti_calib_file:
        return list(calib)
    return anti_calibration_batches(
        tokenizer,
        cfg.anti_calib_file,
        device=device,
        input_ids_name=cfg.input_ids_name,
        attention_mask_name=cfg.attention_mask_name,
    )


def batch_tokens(batches: Sequence[Batch]) -> int:
    """Token positions in ``batches`` (padding included: what the model runs over)."""
    return sum(int(batch["input_ids"].numel()) for batch in batches)


def batches_digest(batches: Sequence[Batch]) -> str:
    """Hash of the token batches exactly as the model sees them (keys, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            tensor = batch[name].detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
