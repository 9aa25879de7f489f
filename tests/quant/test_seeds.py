"""Every seed command of the README table runs through ``quant-llama`` on a tiny model of the
matching family (LLaMA-1/2 MHA, LLaMA-3 GQA, LLaMA-3.1 rope scaling, Instruct with a chat
template), writes the reference's files, and reloads."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from seed_helpers import model_family, read_seed_table, runnable_argv, save_family_model, write_data_root

from quant.cli import main
from quant.reload import load_quantized

SEEDS = read_seed_table()
# What each seed must produce (SPEC §6, §7), written out independently of the configs.
EXPECTED_TYPE = {
    "llama_33b_sparse": "W8A8S",
    "llama_65b_w8a16": "W8A16",
    "llama2_7b_w8a8": "W8A8",
    "llama2_13b_w8a8": "W8A8",
    "llama2_sparse": "W8A8S",
    "llama2_70b_w8a8": "W8A8",
    "llama2_70b_w8a16": "W8A16",
    "llama3_70b_w8a16": "W8A16",
    "llama31_8b_w8a8": "W8A8",
    "llama31_70b_w8a8": "W8A8",
    "llama31_70b_w8a8_kv": "W8A8",
    "llama31_70b_w8a8_fa": "W8A8",
    "llama31_70b_w8a8_pdmix_kv": "W8A8_MIX",
    "llama31_8b_instruct_w4a8_dynamic": "W4A8_DYNAMIC",
    "llama31_70b_instruct_w4a8_dynamic": "W4A8_DYNAMIC",
}
_HEADER_KEYS = {"model_quant_type", "version", "kv_cache_type", "kv_quant_type", "fa_quant_type", "group_size"}
# Commands that appear twice in the reference README run once.
_UNIQUE = list({seed.argv: seed for seed in SEEDS}.values())


def test_table_lists_every_seed_with_an_existing_experiment():
    assert [s.experiment for s in SEEDS] == list(EXPECTED_TYPE)
    for seed in SEEDS:
        assert (Path(__file__).resolve().parents[2] / "conf" / "experiment" / f"{seed.experiment}.yaml").is_file()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_data_root(tmp_path_factory.mktemp("data"), texts=2)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: save_family_model(root / family, family) for family in {model_family(s.argv) for s in SEEDS}}


@pytest.mark.parametrize("seed", _UNIQUE, ids=[s.experiment for s in _UNIQUE])
def test_seed_command_runs_as_written(seed, family_models, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_DATA_DIR", str(data_root))  # the default calib_file of the Instruct seeds
    out = tmp_path / "out"
    family = model_family(seed.argv)
    assert main(runnable_argv(seed, family_models[family], out, data_root)) == 0

    quant_type = EXPECTED_TYPE[seed.experiment]
    description = json.loads((out / "quant_model_description.json").read_text())
    assert description["model_quant_type"] == quant_type and description["version"] == "1.0.0"
    with safe_open(str(out / f"quant_model_weight_{quant_type.lower()}.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert set(description) - names <= _HEADER_KEYS and names <= set(description)
    types = set(description[n] for n in names)
    assert quant_type in types, "no linear was quantized"
    assert ("C8" in types) == ("--use_kvcache_quant" in seed.argv)
    assert ("FAQuant" in types) == ("--use_fa_quant" in seed.argv)
    assert {"config.json", "tokenizer.json", "special_tokens_map.json", "quant_recipe.json"} <= {
        p.name for p in out.iterdir()
    }
    recipe = json.loads((out / "quant_recipe.json").read_text())
    assert recipe["trust_remote_code"] is True and recipe["device_type"] == "cpu"
    if "--calib_file" not in seed.argv:
        assert recipe["calib_file"] == str(data_root / "msmodelslim_common" / "teacher_qualification.jsonl")

    reloaded = load_quantized(out)
    assert reloaded.quant_type == quant_type
    prompt = "Question: is the sky blue?"
    if family.endswith("-instruct"):
        assert reloaded.tokenizer.chat_template, "the chat template was lost"
        chat = [{"role": "user", "content": prompt}]
        prompt = reloaded.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert "<|start_header_id|>assistant" in prompt
    ids = reloaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = reloaded.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
