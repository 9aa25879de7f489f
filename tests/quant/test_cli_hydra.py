"""The CLI and the Hydra experiment are two front doors to one recipe: the same seed through
``quant-llama`` and through ``experiment=<name>`` gives the same QuantConfig and byte-identical files."""

from pathlib import Path

import pytest
from seed_helpers import model_family, read_seed_table, runnable_argv, save_family_model, write_data_root

import sweep.app  # noqa: F401  (registers the conf/ resolvers)
from quant.cli import build_parser, config_from_args, main
from quant.runner import quantize_to_directory
from sweep.compose import compose_tool_config
from sweep.hydra_config import quant_config_from_hydra

SEEDS = {seed.experiment: seed for seed in read_seed_table()}
# Settings the two doors spell differently on purpose: the output path, and the Hydra anti_method
# group's explicit method settings where the CLI leaves the method's defaults.
_DIFFERENT_BY_DESIGN = {"save_directory", "anti_params"}


@pytest.mark.parametrize("experiment", ["llama2_7b_w8a8", "llama_65b_w8a16", "llama31_8b_instruct_w4a8_dynamic"])
def test_cli_and_hydra_write_identical_bytes(experiment, tmp_path, monkeypatch):
    seed = SEEDS[experiment]
    data_root = write_data_root(tmp_path / "data", texts=2)
    monkeypatch.setenv("QUANT_DATA_DIR", str(data_root))  # read by conf/config.yaml's data_root too
    model_dir = save_family_model(tmp_path / "model", model_family(seed.argv))
    cli_out, hydra_out = tmp_path / "cli", tmp_path / "hydra"

    argv = runnable_argv(seed, model_dir, cli_out, data_root)
    cli_cfg, _ = config_from_args(build_parser().parse_args(argv))
    hydra_cfg = quant_config_from_hydra(
        compose_tool_config(
            "config", [f"experiment={experiment}", f"model.path={model_dir}", f"save_directory={hydra_out}"]
        )
    )
    cli_values, hydra_values = cli_cfg.to_dict(), hydra_cfg.to_dict()
    for key in _DIFFERENT_BY_DESIGN:
        cli_values.pop(key), hydra_values.pop(key)
    assert cli_values == hydra_values

    assert main(argv) == 0
    quantize_to_directory(hydra_cfg)
    weights = sorted(p.name for p in cli_out.glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in hydra_out.glob("*.safetensors"))
    for name in [*weights, "quant_model_description.json"]:
        assert (cli_out / name).read_bytes() == (hydra_out / name).read_bytes(), name


def test_hydra_experiment_names_match_the_table():
    conf = Path(__file__).resolve().parents[2] / "conf" / "experiment"
    assert sorted(p.stem for p in conf.glob("*.yaml")) == sorted(SEEDS)
