"""The bad-input corpus: every mistake a user of the reference command can make, one case per row.

Each row runs ``quant-llama`` with the base arguments (a tiny model, a good calibration file, a
fresh save_directory) followed by the row's arguments (argparse keeps the last value given), and
expects: exit code 2, exactly one line on stderr naming the parameter and its valid values, no
traceback, and nothing written.
"""

import json
from pathlib import Path

import pytest

from quant.cli import main
from tiny_data import save_tiny_model_dir, write_calib_file


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """The good inputs and every malformed file of the corpus, written once for the module."""
    root = tmp_path_factory.mktemp("bad-input")
    paths = {
        "model": save_tiny_model_dir(root / "tiny-llama", tiny_tokenizer),
        "calib": write_calib_file(root / "calib.jsonl"),
        "empty": root / "empty.jsonl",
        "blank": root / "blank.jsonl",
        "notjsonl": root / "notjsonl.jsonl",
        "binary": root / "binary.jsonl",
        "emptytext": root / "emptytext.jsonl",
        "anti_dict": root / "anti_dict.json",
        "anti_flat": root / "anti_flat.json",
        "anti_badjson": root / "anti_badjson.json",
        "anti_numbers": root / "anti_numbers.json",
        "anti_txt": root / "anti.txt",
        "a_file": root / "a_file",
        "no_config": root / "no-config",
        "tiny_gguf_dir": root / "two-ggufs",
    }
    paths["empty"].write_text("")
    paths["blank"].write_text("\n  \n\n")
    paths["notjsonl"].write_text("this is plain text\nnot json lines\n")
    paths["binary"].write_bytes(b"\xff\xfe\x00\x81binary")
    paths["emptytext"].write_text(json.dumps({"id": 0, "inputs_pretokenized": "  "}) + "\n")
    paths["anti_dict"].write_text(json.dumps({"inputs_pretokenized": "a"}))
    paths["anti_flat"].write_text(json.dumps([[]]))
    paths["anti_badjson"].write_text("[[['a']]")
    paths["anti_numbers"].write_text(json.dumps([[[1], [2]]]))
    paths["anti_txt"].write_text("text")
    paths["a_file"].write_text("keep me")
    paths["no_config"].mkdir()
    paths["tiny_gguf_dir"].mkdir()
    return paths


# (case id, arguments after the base ones, parameter named, text of the valid values)
CORPUS = [
    # every parameter with an out-of-range value
    ("model_path-missing", ["--model_path", "{root}/no-such-model"], "model_path", "an HF model directory"),
    ("model_path-not-model", ["--model_path", "{no_config}"], "model_path", "config.json"),
    ("model_path-file", ["--model_path", "{a_file}"], "model_path", "an HF model directory"),
    ("save_directory-file", ["--save_directory", "{a_file}"], "save_directory", "a new or empty directory"),
    ("save_directory-under-file", ["--save_directory", "{a_file}/out"], "save_directory", "a new or empty directory"),
    ("save_directory-not-writable", ["--save_directory", "/proc/quant-llama-out"], "save_directory", "writable"),
    ("part_file_size-zero", ["--part_file_size", "0"], "part_file_size", "a number of GB > 0"),
    ("part_file_size-text", ["--part_file_size", "big"], "part_file_size", "a number"),
    ("calib_texts-blank", ["--calib_texts", " "], "calib_texts", "one or more non-blank texts"),
    ("calib_file-missing", ["--calib_file", "{root}/none.jsonl"], "calib_file", "a readable JSONL file"),
    ("calib_file-empty", ["--calib_file", "{empty}"], "calib_file", "inputs_pretokenized"),
    ("calib_file-blank-lines", ["--calib_file", "{blank}"], "calib_file", "inputs_pretokenized"),
    ("calib_file-not-jsonl", ["--calib_file", "{notjsonl}"], "calib_file", "one JSON object per line"),
    ("calib_file-binary", ["--calib_file", "{binary}"], "calib_file", "UTF-8"),
    ("calib_file-empty-text", ["--calib_file", "{emptytext}"], "calib_file", "inputs_pretokenized"),
    ("w_bit", ["--w_bit", "5"], "w_bit", "4, 8, 16"),
    ("w_bit-text", ["--w_bit", "eight"], "w_bit", "an integer"),
    ("a_bit", ["--a_bit", "4"], "a_bit", "8, 16"),
    ("disable_names-unknown", ["--disable_names", "model.layers.9.mlp.down_proj"], "disable_names", "lm_head"),
    ("device_type", ["--device_type", "tpu"], "device_type", "cpu, cuda, npu"),
    ("device_type-npu-without-torch_npu", ["--device_type", "npu"], "device_type", "valid here: cpu"),
    ("fraction", ["--fraction", "0.5"], "fraction", "[0.01, 0.1]"),
    ("act_method", ["--act_method", "4"], "act_method", "1, 2, 3"),
    ("co_sparse", ["--co_sparse", "yes"], "co_sparse", "True, False"),
    ("anti_method", ["--anti_method", "m7"], "anti_method", "none, m1, m2, m3, m4, m5, m6"),
    ("disable_level", ["--disable_level", "5"], "disable_level", "L<n>"),
    ("disable_level-negative", ["--disable_level", "L-1"], "disable_level", "L<n>"),
    ("do_smooth", ["--do_smooth", "1"], "do_smooth", "True, False"),
    ("use_sigma", ["--use_sigma", "on"], "use_sigma", "True, False"),
    ("use_reduce_quant", ["--use_reduce_quant", "maybe"], "use_reduce_quant", "True, False"),
    ("tp_size", ["--tp_size", "3"], "tp_size", "1, 2, 4, 8, 16"),
    ("sigma_factor", ["--sigma_factor", "5"], "sigma_factor", "[1.0, 3.0]"),
    ("is_lowbit", ["--is_lowbit", "Yes"], "is_lowbit", "True, False"),
    ("mm_tensor", ["--mm_tensor", "0"], "mm_tensor", "True, False"),
    ("w_sym", ["--w_sym", "no"], "w_sym", "True, False"),
    ("use_kvcache_quant", ["--use_kvcache_quant", "int8"], "use_kvcache_quant", "True, False"),
    ("use_fa_quant", ["--use_fa_quant", "fa3"], "use_fa_quant", "True, False"),
    ("fa_amp", ["--fa_amp", "-1"], "fa_amp", "an integer >= 0"),
    ("is_dynamic", ["--is_dynamic", "per-token"], "is_dynamic", "True, False"),
    ("input_ids_name", ["--input_ids_name", "ids"], "input_ids_name", "input_ids"),
    ("attention_mask_name", ["--attention_mask_name", "mask"], "attention_mask_name", "attention_mask"),
    ("tokenizer_args", ["--tokenizer_args", "padding_side=left"], "tokenizer_args", "a dict"),
    ("tokenizer_args-list", ["--tokenizer_args", "[1, 2]"], "tokenizer_args", "a dict"),
    ("disable_last_linear", ["--disable_last_linear", "lm_head"], "disable_last_linear", "True, False"),
    ("model_name-empty", ["--model_name="], "model_name", "--model_name=VALUE"),
    ("model_type", ["--model_type", "llama4"], "model_type", "llama, llama2, llama3, llama3.1_instruct"),
    ("anti_calib_file-extension", ["--anti_calib_file", "{anti_txt}"], "anti_calib_file", ".json or .jsonl"),
    ("anti_calib_file-missing", ["--anti_calib_file", "{root}/none.json"], "anti_calib_file", "readable"),
    ("anti_calib_file-dict", ["--anti_calib_file", "{anti_dict}"], "anti_calib_file", "list of batches"),
    ("anti_calib_file-empty-batch", ["--anti_calib_file", "{anti_flat}"], "anti_calib_file", "list of batches"),
    ("anti_calib_file-bad-json", ["--anti_calib_file", "{anti_badjson}"], "anti_calib_file", "list of batches"),
    ("anti_calib_file-numbers", ["--anti_calib_file", "{anti_numbers}"], "anti_calib_file", "list of batches"),
    ("anti_calib_file-jsonl-empty", ["--anti_calib_file", "{empty}"], "anti_calib_file", "inputs_pretokenized"),
    ("trust_remote_code", ["--trust_remote_code", "yes"], "trust_remote_code", "True, False"),
    ("open_outlier", ["--open_outlier", "none"], "open_outlier", "True, False"),
    ("group_size", ["--group_size", "48"], "group_size", "32, 64, 128"),
    ("pdmix", ["--pdmix", "Ture"], "pdmix", "True, False"),
    ("disable_threshold", ["--disable_threshold", "-1"], "disable_threshold", "a number >= 0"),
    ("mindie_format", ["--mindie_format", "MindIE"], "mindie_format", "True, False"),
    ("unknown-parameter", ["--w_bits", "8"], "w_bits", "valid parameters"),
    # incompatible combinations
    ("w_bit-4-without-low-bit-mode", ["--w_bit", "4"], "w_bit", "is_lowbit True"),
    ("fa-quant-with-kv-quant", ["--use_fa_quant", "True", "--use_kvcache_quant", "True"], "use_fa_quant", "False"),
    (
        "w4a8-dynamic-asymmetric",
        ["--w_bit", "4", "--is_lowbit", "True", "--open_outlier", "False", "--is_dynamic", "True", "--w_sym", "False"],
        "w_sym",
        "w_sym True",
    ),
    ("w_bit-16-with-a_bit-8", ["--w_bit", "16"], "w_bit", "a_bit 16"),
    # the seed README's own typo: an empty value and the path left over as a stray argument
    (
        "seed-typo-calib_file",
        ["--calib_file=", "../common/teacher_qualification.jsonl"],
        "calib_file",
        "--calib_file=VALUE",
    ),
]


def _fill(arg: str, files: dict[str, Path]) -> str:
    return arg.format(root=files["model"].parent, **files)


@pytest.mark.parametrize(("args", "param", "valid"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_input_is_one_line_exit_2_nothing_written(files, tmp_path, capsys, args, param, valid):
    out = tmp_path / "out"
    a_file_before = files["a_file"].read_text()
    base = ["--model_path", files["model"], "--save_directory", out, "--calib_file", files["calib"]]
    argv = [str(a) for a in base] + [_fill(a, files) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err + captured.out, err
    assert err.startswith(f"quant-llama: error: {param}:"), err
    assert valid in err, err
    assert not out.exists()
    assert files["a_file"].read_text() == a_file_before
    assert not list(files["model"].parent.glob("**/.quant-llama*")), "a probe or temp dir was left behind"


def test_seed_typo_names_the_stray_path(files, tmp_path, capsys):
    """The user is told what happened: the value is empty and the path was left over."""
    argv = ["--model_path", str(files["model"]), "--save_directory", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        main([*argv, "--calib_file=", "../common/teacher_qualification.jsonl"])
    err = capsys.readouterr().err
    assert "empty value" in err and "'../common/teacher_qualification.jsonl' was left over" in err
