"""Bad input to ``python -m sweep``: one line naming the key (and the file), exit 2, in under 5 s,
before any model loads, and nothing written: no MLflow store, no output or sweep directory, no cache.

The 5 s are CPU seconds of the process (user + system): on a shared machine its wall time grows with
the other processes' load, not with what it does (about a second of wall time on an idle machine)."""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

import pytest

from sweep_helpers import TinyInputs, failure_report, make_tiny_inputs, run_module

MAX_SECONDS = 5.0


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> tuple[TinyInputs, Path]:
    """The tiny inputs, plus broken copies: a truncated model.safetensors, a config.json that is not
    JSON, a binary file where text is expected, a text file that is not JSONL."""
    inputs = make_tiny_inputs(tmp_path_factory.mktemp("bad-input"))
    files = inputs.root / "bad"
    truncated = files / "truncated-model"
    shutil.copytree(inputs.model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_config = files / "bad-config-model"
    shutil.copytree(inputs.model_dir, bad_config)
    (bad_config / "config.json").write_text("{not json\n")
    (files / "binary.bin").write_bytes(b"\xff\xfe\x00\x01garbage")
    (files / "prose.txt").write_text("this is prose, not one JSON object per line\n")
    return inputs, files


# (overrides, the start of the one line on stderr, a text that line must contain)
CASES = [
    (["eval.boolq.limit=abc"], "eval.boolq.limit: invalid value 'abc'", "positive integer"),
    (["eval.boolq.limit=0"], "eval.boolq.limit: invalid value 0", "positive integer"),
    (["eval.boolq.limit=-3"], "eval.boolq.limit: invalid value -3", "positive integer"),
    (["eval.boolq.batch_size=abc"], "eval.boolq.batch_size: invalid value 'abc'", "positive integer"),
    (["eval.boolq.data_path={bad}/binary.bin"], "eval.boolq.data_path: {bad}/binary.bin: not a BoolQ file", "JSONL"),
    (["eval.boolq.data_path={bad}/prose.txt"], "eval.boolq.data_path: {bad}/prose.txt: not a BoolQ file", "JSONL"),
    (["eval.boolq.data_path={bad}/missing.jsonl"], "eval.boolq.data_path: no such file: {bad}/missing.jsonl", "JSONL"),
    (
        ["eval.perplexity.enabled=true", "eval.perplexity.data_path={bad}/binary.bin"],
        "eval.perplexity.data_path: {bad}/binary.bin: not readable text",
        "UTF-8",
    ),
    (
        ["model.path={bad}/truncated-model"],
        "model.path: {bad}/truncated-model/model.safetensors is truncated or not a safetensors file",
        "config.json + safetensors",
    ),
    (
        ["model.path={bad}/bad-config-model"],
        "model.path: {bad}/bad-config-model/config.json is not valid JSON",
        "config.json + safetensors",
    ),
    (["foo=1"], "foo: not a config key", "valid keys here: model, calib, scheme"),
    (["scheme=w3a3"], "scheme: no config 'w3a3'", "valid values: w4a16, w4a8_dynamic, w8a16, w8a8"),
    (["act_method=7"], "act_method: invalid value 7", "valid values: 1, 2, 3"),
    (["eval.boolq.limit=${{nope}}"], "eval.boolq.limit: Interpolation key 'nope' not found", "nope"),
    (["model.path=???"], "model.path: Missing mandatory value", "model.path"),
    (["anti_method=none,m1"], "anti_method: several values 'none,m1' in a single run", "-m to sweep"),
    (["-m", "scheme=w3a3,w8a8"], "scheme: no config 'w3a3'", "valid values: w4a16"),
    (["-m", "foo=1,2"], "foo: not a config key", "valid keys here"),
    (["-m", "disable_level=L0,L1", "eval.boolq.limit=0"], "eval.boolq.limit: invalid value 0", "positive integer"),
]


@pytest.mark.parametrize(("overrides", "start", "contains"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_sweep_input_is_one_line_exit_2_nothing_written(bad_files, tmp_path, overrides, start, contains):
    inputs, bad = bad_files
    outputs = inputs.elsewhere(tmp_path / "out")
    flags = [o for o in overrides if o == "-m"]  # Hydra's flags come before the overrides
    args = [*flags, *outputs.sweep_args(), *(o.format(bad=bad) for o in overrides if o != "-m")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_module("sweep", args, cwd=outputs.root, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and not proc.stdout.strip(), proc.stdout + proc.stderr
    assert lines[0].startswith("sweep: error: " + start.format(bad=bad)), lines[0]
    assert contains in lines[0]
    assert seconds < MAX_SECONDS, f"{seconds:.1f} CPU s"
    assert list(outputs.root.iterdir()) == [], "something was written"


def test_hydra_help_and_cfg_are_left_to_hydra(bad_files, tmp_path):
    inputs, _ = bad_files
    outputs = inputs.elsewhere(tmp_path / "out")
    proc = run_module("sweep", [*outputs.sweep_args(), "--cfg", "job"], cwd=outputs.root, timeout=120)
    assert proc.returncode == 0, failure_report(proc)
    assert "disable_level: L0" in proc.stdout
