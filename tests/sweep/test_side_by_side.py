"""Sweeps side by side on one MLflow store, and runs killed with SIGKILL.

Three sweeps started at the same moment on a fresh directory (no store yet) whose configs overlap:
the store is created once, each sweep gets its own multirun folder and parent run, every config is
FINISHED exactly once (a sweep that finds a config claimed by another waits and reuses its result).
A single run killed with SIGKILL is marked KILLED by the next sweep command on the store, and what
it left on disk is removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweep.run_records import sweep_runs
from sweep_helpers import EXPERIMENT, TinyInputs, job_lines, run_module, subprocess_env

# Three sweeps over disable_level, each sharing one config with each other sweep.
SWEEPS = ("L0,L1", "L1,L2", "L0,L2")


def _sweep_command(inputs: TinyInputs, levels: str) -> list[str]:
    args = [a for a in inputs.sweep_args() if not a.startswith("hydra.sweep.dir=")]  # the default: unique
    return [sys.executable, "-m", "sweep", "-m", "anti_method=none", f"disable_level={levels}", *args]


def test_three_sweeps_at_once_on_a_fresh_directory(tmp_path, shared_inputs):
    inputs = shared_inputs.elsewhere(tmp_path / "fresh")
    assert not inputs.db.exists()
    procs = [
        subprocess.Popen(
            _sweep_command(inputs, levels),
            cwd=inputs.root,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for levels in SWEEPS
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
        assert len(job_lines(out)) == 2, out

    client = MlflowClient(inputs.uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    jobs = [r for r in runs if r.data.tags.get("sweep.role") == "job"]
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)
    finished = Counter(r.data.tags["disable_level"] for r in jobs if r.info.status == "FINISHED")
    assert finished == {"L0": 1, "L1": 1, "L2": 1}  # every config once: no duplicate, none lost
    assert all(r.info.status == "FINISHED" for r in jobs)  # the claims of the losers were withdrawn

    # Each sweep: its own folder with its own parent file, and exactly its two configs.
    folders = {p.data.tags["sweep.overrides"]: p for p in parents}
    dirs = list((inputs.root / "multirun").glob("*/*/mlflow_parent.json"))
    assert len(dirs) == 3
    for levels in SWEEPS:
        parent = next(p for key, p in folders.items() if f"disable_level={levels}" in key)
        records = sweep_runs(client, experiment_id, parent.info.run_id)
        assert sorted(r.tags["disable_level"] for r in records) == sorted(levels.split(","))
        assert all(r.status == "FINISHED" for r in records)
    # The first two configs finished in the sweep that claimed them; the others reused them.
    reused = sum(k.startswith("reused.") for p in parents for k in p.data.tags)
    children = sum(r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents} for r in jobs)
    assert children == 3 and reused == 3


def _wait_for_output(save_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the run is writing or has written its quantized model (a temporary or the final folder)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if save_dir.exists() or list(save_dir.parent.glob(f".{save_dir.name}.tmp-*")):
            return
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    raise AssertionError("the run wrote no output in time")


def test_killed_single_run_is_marked_killed_and_its_leftovers_removed(tiny_inputs, wikitext_raw):
    run_dir = tiny_inputs.root / "killed-run"
    save_dir = run_dir / "quantized"
    args = [
        *tiny_inputs.sweep_args(),
        f"hydra.run.dir={run_dir}",
        # BoolQ and perplexity of the saved model keep the run busy after the save: time to kill it.
        "eval.perplexity.enabled=true",
        f"eval.perplexity.data_path={wikitext_raw}",
        "eval.perplexity.max_tokens=400",
        "eval.perplexity.block_size=64",
        "eval.perplexity.stride=32",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", *args],
        cwd=tiny_inputs.root,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_output(save_dir, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    client = MlflowClient(tiny_inputs.uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "RUNNING"  # nobody ended it
    assert save_dir.exists() or list(run_dir.glob(".quantized.tmp-*"))

    select = run_module("sweep.select", ["--dry-run", *tiny_inputs.tool_args()], cwd=tiny_inputs.root)
    assert select.returncode in (0, 1), select.stderr[-3000:]  # any sweep command opens the store
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert f"process {proc.pid} ended before the run did" in run.data.tags["error"]
    assert not save_dir.exists() and not list(run_dir.glob(".quantized.*"))


def test_a_sweep_whose_parent_run_cannot_be_opened_stops_with_one_line(tiny_inputs):
    """The start hook's failure ends the sweep (Hydra would only warn and launch the jobs)."""
    args = ["-m", "disable_level=L0,L1", *tiny_inputs.sweep_args(), "tracking.tracking_uri=nosuchscheme://store"]
    proc = run_module("sweep", args, cwd=tiny_inputs.root)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep: error: could not open the sweep's parent run:") and "nosuchscheme" in last
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not job_lines(proc.stdout)  # no job was launched
