"""The README's "Results of the main job" block has the shape of what ``python -m sweep`` prints.

The main job's composed config is run with only its model and data shrunk (the tiny model, its
calibration texts and 8 BoolQ rows; every other setting is the default job's: W8A8, m1, act 1, L0,
the default output and MLflow locations under the working directory), and its printed table is
compared line by line with the README's: same lines, same column positions, numbers and
placeholders where the README has them. The README's n and quantization type are the default config's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sweep_helpers import REPO_ROOT, failure_report, run_module

README = REPO_ROOT / "README.md"
# README placeholders and the text they stand for in a real run's output.
PLACEHOLDERS = {
    "<s>": r"\d+\.\d",
    "<cwd>": None,  # the run's working directory, filled in per run
    "<date>": r"\d{4}-\d{2}-\d{2}",
    "<time>": r"\d{2}-\d{2}-\d{2}",
    "<run id>": r"[0-9a-f]{32}",
}


def readme_main_job_block() -> list[str]:
    """The lines of the first code block under "## Results of the main job"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Results of the main job") :]
    start = section.index("```\n") + len("```\n")
    return section[start : section.index("```", start)].rstrip("\n").splitlines()


def line_pattern(readme_line: str, cwd: Path) -> re.Pattern[str]:
    """A README line as a regex: each number matches a number with as many digits after the point
    (and a sign where it has one), each placeholder what it stands for, ``(n=100)`` any n, a run of
    spaces any run of spaces (the caller checks the table's width), everything else literally."""
    tokens = re.split(r"(<[^>]+>|[+-]?\d+\.\d+|\(n=\d+\))", readme_line)
    parts = []
    for token in tokens:
        if token in PLACEHOLDERS:
            parts.append(re.escape(str(cwd)) if token == "<cwd>" else PLACEHOLDERS[token])
        elif re.fullmatch(r"[+-]?\d+\.\d+", token):
            sign = "[+-]" if token[0] in "+-" else ""
            parts.append(sign + r"\d+\." + r"\d" * len(token.split(".")[1]))
        elif re.fullmatch(r"\(n=\d+\)", token):
            parts.append(r"\(n=\d+\)")
        else:
            parts.append(r"\s+".join(re.escape(piece) for piece in re.split(r" {2,}", token)))
    return re.compile("".join(parts))


def test_readme_block_matches_the_default_config():
    lines = readme_main_job_block()
    assert lines[0].split() == ["model", "BoolQ", "acc", "(n=100)", "delta", "vs", "float"]
    limit = re.search(r"limit: (\d+)", (REPO_ROOT / "conf/eval/boolq_subset.yaml").read_text()).group(1)
    assert f"(n={limit})" in lines[0]  # the README's n is the default eval.boolq.limit
    assert lines[2].split()[0] == "W8A8" and "scheme: w8a8" in (REPO_ROOT / "conf/config.yaml").read_text()


def test_main_job_prints_the_readme_table(tmp_path, tiny_inputs, mlflow_template):
    """The default job with the tiny model and data: the printed block has the README's shape."""
    cwd = tmp_path / "fresh-clone"
    (cwd / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlflow_template, cwd / "mlflow" / "mlflow.db")  # the default store, already migrated
    shrunk = [
        f"model.path={tiny_inputs.model_dir}",
        f"calib.calib_file={tiny_inputs.calib}",
        f"eval.boolq.data_path={tiny_inputs.boolq}",
        "eval.boolq.limit=8",
    ]
    proc = run_module("sweep", shrunk, cwd=cwd)
    assert proc.returncode == 0, failure_report(proc)
    expected = readme_main_job_block()
    printed = [line.rstrip() for line in proc.stdout.rstrip("\n").splitlines()[-len(expected) :]]
    for want, got in zip(expected, printed):
        pattern = line_pattern(want, cwd)
        assert pattern.fullmatch(got), f"README: {want!r}\nprinted: {got!r}"
    for want, got in zip(expected[:3], printed[:3]):  # the table's columns end where the README's do
        assert len(got) == len(want), (want, got)
    assert (cwd / "outputs").is_dir() and (cwd / "mlflow" / "mlflow.db").is_file()
