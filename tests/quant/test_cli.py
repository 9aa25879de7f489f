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
