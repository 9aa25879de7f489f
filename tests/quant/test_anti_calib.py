"""anti_calib_file (SPEC §1 item 3): .jsonl groups of 4 without special tokens, .json batches with
BOS, both right-padded with id 0; bad files stop with a one-line error naming the parameter."""

import json

import pytest
import torch

from quant.anti_outlier import apply_anti_outlier
from quant.arch import linear_names
from quant.calib_data import anti_calibration_batches, read_anti_calib_file
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.input_stats import observe_linear_inputs
from quant.pipeline import quantize
from quant.runner import check_inputs
from tiny_models import build_tiny_llama

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is fire cold?", "Ethanol fuel.", "Grove", "yes"]


def _jsonl(tmp_path, texts=TEXTS):
    path = tmp_path / "anti.jsonl"
    path.write_text("".join(json.dumps({"id": i, "inputs_pretokenized": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_jsonl_groups_of_four_without_special_tokens_right_padded(tmp_path, tiny_tokenizer):
    batches = anti_calibration_batches(tiny_tokenizer, _jsonl(tmp_path))
    assert [b["input_ids"].shape[0] for b in batches] == [4, 1]
    for b, texts in zip(batches, (TEXTS[:4], TEXTS[4:])):
        for row, text in enumerate(texts):
            ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert b["input_ids"][row, : len(ids)].tolist() == ids  # no BOS in front
            assert (b["input_ids"][row, len(ids) :] == 0).all()  # right padding with id 0
            # No attention mask (all ones): the padded positions are ordinary tokens, as the reference runs them.
            assert b["attention_mask"][row].tolist() == [1] * b["input_ids"].shape[1]


def test_json_batches_of_bracketed_texts_with_bos(tmp_path, tiny_tokenizer):
    path = tmp_path / "anti.json"
    path.write_text(json.dumps([[[TEXTS[0]], [TEXTS[1]]], [[TEXTS[2]]]]))
    batches = anti_calibration_batches(tiny_tokenizer, path)
    assert [len(b["input_ids"]) for b in batches] == [2, 1]
    ids = tiny_tokenizer(TEXTS[1])["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert batches[0]["input_ids"][1, : len(ids)].tolist() == ids
    assert (batches[0]["input_ids"][1, len(ids) :] == 0).all()


def test_shared_llama_anti_prompt_json_has_the_reference_shape(tmp_path):
    from conftest import SHARED_DATA

    groups, special = read_anti_calib_file(SHARED_DATA / "msmodelslim_common" / "llama_anti_prompt.json")
    assert special and [len(g) for g in groups] == [4, 4, 4, 4]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"a": 1}), "must hold a JSON list of batches"),
        (json.dumps([["ok"], "flat"]), "batch 1 is not a non-empty list"),
        (json.dumps([[["a", "b"]]]), "is not \\[text\\] with a non-empty text"),
        (json.dumps([[[3]]]), "is not \\[text\\] with a non-empty text"),
    ],
)
def test_bad_json_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "anti.json"
    path.write_text(content)
    with pytest.raises(QuantInputError, match=f"^anti_calib_file: .*{message}") as info:
        read_anti_calib_file(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_caught_before_the_model_loads(tmp_path, tiny_model_dir):
    missing = str(tmp_path / "none.jsonl")
    cfg = QuantConfig(model_path=str(tiny_model_dir), calib_texts=["a"], anti_method="m1", anti_calib_file=missing)
    with pytest.raises(QuantInputError, match=r"anti_calib_file: .*none\.jsonl is not a readable file"):
        check_inputs(cfg)


def test_anti_outlier_statistics_come_from_the_anti_calib_file(tmp_path, tiny_tokenizer):
    path = _jsonl(tmp_path)
    model = build_tiny_llama("llama2")
    reference = build_tiny_llama("llama2")
    stats = observe_linear_inputs(
        reference, anti_calibration_batches(tiny_tokenizer, path), linear_names(reference)[:-1]
    )
    expected = apply_anti_outlier(reference, "m1", stats)
    cfg = QuantConfig(calib_texts=["Ghost in the Shell.", "Fish swim."], anti_method="m1", anti_calib_file=str(path))
    result = quantize(model, tiny_tokenizer, cfg)
    for name, scales in expected.scales.items():
        assert torch.equal(result.anti_outlier.scales[name], scales), name


def test_calib_line_without_the_text_key_is_used_raw(tmp_path):
    """SPEC §1: each line's inputs_pretokenized, or the raw line when the key is missing."""
    from quant.calib_data import read_calib_texts

    path = tmp_path / "calib.jsonl"
    raw = json.dumps({"id": 0, "question": "q?"})
    path.write_text(json.dumps({"inputs_pretokenized": "hello"}) + "\n" + raw + "\n")
    assert read_calib_texts(path) == ["hello", raw]
