"""Progress: bars per stage only on a terminal and never when quiet; one float-layer line; peak memory."""

import io

from quant import progress
from quant.cli import main


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch) -> _Terminal:
    # Set in the test body: pytest's capture replaces sys.stderr again after fixtures run.
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    return stream


def test_stage_bar_counts_layers_on_a_terminal(monkeypatch):
    terminal = _terminal(monkeypatch)
    assert list(progress.stage("calibrate", iter(range(3)), total=3)) == [0, 1, 2]
    assert "calibrate:" in terminal.getvalue() and "0/3" in terminal.getvalue()


def test_no_bar_when_quiet_or_not_a_terminal(monkeypatch):
    terminal = _terminal(monkeypatch)
    with progress.quiet_mode(True):
        assert list(progress.stage("observe", range(2), total=2)) == [0, 1]
        assert list(progress.batches(range(2), total=2)) == [0, 1]
    assert terminal.getvalue() == ""
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or file: isatty() is False
    assert not progress.bars_enabled()


def test_float_layers_summary_counts_reasons():
    line = progress.float_layers_summary(
        {
            "model.layers.0.mlp.down_proj": "disable_level L2: range_param 9.1 ranks 1",
            "model.layers.1.mlp.down_proj": "disable_level L2: range_param 3.0 ranks 2",
            "lm_head": "disable_last_linear",
        },
        "quant_layer_report.json",
    )
    assert line == (
        "3 linears kept in float (2 disable_level L2, 1 disable_last_linear); "
        "the full list is in quant_layer_report.json"
    )
    assert progress.float_layers_summary({}) == "no linear kept in float"


def test_cli_bars_float_line_and_peak_memory(tiny_model_dir, calib_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["--model_path", tiny_model_dir, "--save_directory", out, "--calib_file", calib_file,
            "--disable_level", "L2", "--anti_method", "m1"]  # fmt: skip
    stream = _terminal(monkeypatch)
    assert main([str(a) for a in argv]) == 0
    bars = stream.getvalue()
    # tiny model: 2 decoder layers; each bar is drawn at 0/2 at least (tqdm redraws at most every 0.1 s).
    # quant-llama runs layer-wise: disable_level needs a statistics pass (observe, smooth, range_param)
    # before the calibration pass.
    assert "observe:" in bars and "calibrate:" in bars and "0/2" in bars
    assert "calibration batches:" in bars
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "5 linears kept in float (2 default disable_names of model_type llama2, 2 disable_level L2, "
        "1 disable_last_linear); the full list is in quant_layer_report.json"
    )
    assert lines[2].startswith("peak memory: ") and lines[2].endswith(" GB RSS")


def test_cli_quiet_is_a_bare_flag_and_draws_nothing(tiny_model_dir, calib_file, tmp_path, monkeypatch):
    argv = ["--model_path", tiny_model_dir, "--save_directory", tmp_path / "out", "--calib_file", calib_file,
            "--quiet"]  # fmt: skip
    stream = _terminal(monkeypatch)
    try:
        assert main([str(a) for a in argv]) == 0
    finally:
        progress.set_quiet(False)
    assert stream.getvalue() == ""  # transformers' weight-loading bar included
