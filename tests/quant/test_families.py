"""Every model family quantizes and reloads under every seed recipe (the seed test runs each seed
on its own family; this runs it on the other three). 39 runs, about 3 minutes on 2 CPU cores:
marked slow, skip with ``-m "not slow"``."""

import json

import pytest
import torch
from seed_helpers import FAMILIES, model_family, read_seed_table, runnable_argv, save_family_model, write_data_root

from quant.cli import main
from quant.reload import load_quantized

_UNIQUE = list({seed.argv: seed for seed in read_seed_table()}.values())
_CASES = [(family, seed) for family in FAMILIES for seed in _UNIQUE if family != model_family(seed.argv)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data_root(tmp_path_factory.mktemp("data"), texts=2)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    # Six layers for every family: the llama3* model_types keep layers 0-4 in float.
    root = tmp_path_factory.mktemp("families")
    return {family: save_family_model(root / family, family, num_layers=6) for family in FAMILIES}


@pytest.mark.slow
@pytest.mark.parametrize(("family", "seed"), _CASES, ids=[f"{f}-{s.experiment}" for f, s in _CASES])
def test_family_quantizes_and_reloads_under_seed(family, seed, family_models, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_DATA_DIR", str(data_root))
    out = tmp_path / "out"
    assert main(runnable_argv(seed, family_models[family], out, data_root)) == 0
    description = json.loads((out / "quant_model_description.json").read_text())
    quant_type = description["model_quant_type"]
    assert quant_type in description.values(), "no linear was quantized"
    reloaded = load_quantized(out)
    ids = reloaded.tokenizer("Question: is the sky blue?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(reloaded.model(input_ids=ids).logits).all()
