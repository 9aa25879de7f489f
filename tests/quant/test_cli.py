"""quant-llama: the reference's parameter names and spellings; bad input is one line and exit 2."""

import json
import shutil
import subprocess
import sys

import pytest

from quant.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def _base(tiny_model_dir, calib_file, out):
    return ["--model_path", tiny_model_dir, "--save_directory", out, "--calib_file", calib_file]


def test_cli_quantizes_with_reference_spellings(tiny_model_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    argv = [*_base(tiny_model_dir, calib_file, out),
        "--w_bit", "8", "--a_bit", "8", "--act_method", "1", "--anti_method", "m1",
        "--disable_level", "L1", "--device_type", "cpu", "--trust_remote_code", "False",
        "--disable_names", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj",
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    desc = json.loads((out / "quant_model_description.json").read_text())
    assert desc["model_quant_type"] == "W8A8"
    assert desc["model.layers.0.mlp.down_proj.weight"] == "FLOAT"
    recipe = json.loads((out / "quant_recipe.json").read_text())
    assert recipe["anti_method"] == "m1" and recipe["disable_level"] == "L1" and recipe["trust_remote_code"] is False


@pytest.mark.parametrize(
    ("extra", "param", "valid"),
    [
        (["--anti_method", "m9"], "anti_method", "none, m1, m2, m3, m4, m5, m6"),
        (["--w_bit", "5"], "w_bit", "4, 8, 16"),
        (["--trust_remote_code", "yes"], "trust_remote_code", "True, False"),
        (["--disable_level", "5"], "disable_level", "L<n>"),
        (["--act_method", "7"], "act_method", "1, 2, 3"),
    ],
)
def test_bad_values_give_one_line_naming_parameter(tiny_model_dir, calib_file, tmp_path, capsys, extra, param, valid):
    out = tmp_path / "out"
    code, err = _run([*_base(tiny_model_dir, calib_file, out), *extra], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{param}:" in err and valid in err
    assert not out.exists()


def test_missing_model_path(calib_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(_base(tmp_path / "no-such-model", calib_file, out), capsys)
    assert code == 2 and err.count("\n") == 0
    assert "model_path:" in err and "does not exist" in err
    assert not out.exists()


def test_empty_equals_value_is_explained(tiny_model_dir, calib_file, tmp_path, capsys):
    argv = ["--model_path", tiny_model_dir, "--save_directory", tmp_path / "out", "--calib_file=", calib_file]
    code, err = _run(argv, capsys)
    assert code == 2 and "calib_file: empty value" in err and "stray argument" in err


def test_console_script_entry_point(tmp_path):
    exe = shutil.which("quant-llama")
    cmd = [exe] if exe else [sys.executable, "-m", "quant.cli"]
    proc = subprocess.run(
        [*cmd, "--model_path", str(tmp_path / "missing"), "--save_directory", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("quant-llama: error: model_path:")


# SPEC §2, the reference's parameter table, written out here independently of QuantConfig.
REFERENCE_PARAMETERS = [
    "model_path",
    "save_directory",
    "part_file_size",
    "calib_texts",
    "calib_file",
    "w_bit",
    "a_bit",
    "disable_names",
    "device_type",
    "fraction",
    "act_method",
    "co_sparse",
    "anti_method",
    "disable_level",
    "do_smooth",
    "use_sigma",
    "use_reduce_quant",
    "tp_size",
    "sigma_factor",
    "is_lowbit",
    "mm_tensor",
    "w_sym",
    "use_kvcache_quant",
    "use_fa_quant",
    "fa_amp",
    "is_dynamic",
    "input_ids_name",
    "attention_mask_name",
    "tokenizer_args",
    "disable_last_linear",
    "model_name",
    "model_type",
    "anti_calib_file",
    "trust_remote_code",
    "open_outlier",
    "group_size",
    "pdmix",
    "disable_threshold",
    "mindie_format",
]


def test_parser_takes_every_reference_parameter():
    from quant.cli import build_parser

    options = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert {f"--{name}" for name in REFERENCE_PARAMETERS} <= options


def test_runtime_only_and_spelled_values_are_recorded(tiny_model_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    argv = [*_base(tiny_model_dir, calib_file, out),
        "--use_reduce_quant", "True", "--tokenizer_args", "{'padding_side': 'left'}", "--mindie_format",
        "--disable_names", "model.layers.0.mlp.down_proj,model.layers.1.mlp.down_proj", "--model_name", "tiny",
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    recipe = json.loads((out / "quant_recipe.json").read_text())
    assert recipe["use_reduce_quant"] is True and recipe["mindie_format"] is True
    assert recipe["tokenizer_args"] == {"padding_side": "left"} and recipe["model_name"] == "tiny"
    assert recipe["disable_names"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert (out / "quant_model_description_w8a8.json").is_file()
