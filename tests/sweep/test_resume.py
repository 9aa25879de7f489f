"""Kill a real sweep mid-way (SIGKILL: no cleanup at all), re-run it: every config ends with
exactly one FINISHED run, all under the same parent, and the re-run reuses the disk caches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from mlflow.tracking import MlflowClient

from sweep_helpers import EXPERIMENT, job_lines, run_module, subprocess_env

N_JOBS = 6


def _wait_for_finished_jobs(log_path, count: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = [line for line in job_lines(log_path.read_text()) if "| FINISHED " in line]
        if len(finished) >= count:
            return
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} jobs finished in {timeout} s")


def test_sweep_killed_then_rerun_has_exactly_one_finished_run_per_config(tiny_inputs):
    # m1 first, so the killed process has written the observation to disk before it dies.
    args = [
        "-m",
        "anti_method=m1,none",
        "disable_level=L0,L1,L2",
        "cache.float_model=all",  # the tiny model is an HF directory; keep it on disk too
        *tiny_inputs.sweep_args(),
    ]
    log_path = tiny_inputs.root / "first.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweep", *args],
            cwd=tiny_inputs.root,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_finished_jobs(log_path, 2, proc)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    first_lines = job_lines(log_path.read_text())
    done_before = {line.split(" | ")[0].split("] ")[1] for line in first_lines if "| FINISHED " in line}
    assert 2 <= len(done_before) < N_JOBS

    rerun = run_module("sweep", args, cwd=tiny_inputs.root)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = job_lines(rerun.stdout)
    assert len(lines) == N_JOBS
    skipped = {line.split(" | ")[0].split("] ")[1] for line in lines if "SKIPPED" in line}
    assert skipped == done_before
    assert sum("| FINISHED " in line for line in lines) == N_JOBS - len(done_before)
    assert "resuming parent run" in rerun.stdout

    client = MlflowClient(tiny_inputs.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    jobs = [r for r in runs if r.data.tags.get("sweep.role") == "job"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in jobs)
    finished = Counter(r.data.tags["config_hash"] for r in jobs if r.info.status == "FINISHED")
    assert len(finished) == N_JOBS and set(finished.values()) == {1}  # none missing, no duplicates
    assert {r.data.tags["config_hash"] for r in jobs} == set(finished)
    assert not [r for r in jobs if r.info.status == "RUNNING"]
    killed = [r for r in jobs if r.info.status == "KILLED"]
    assert len(killed) <= 1  # the job that was running when the process died, if it had started its run
    for run in killed:
        assert "killed" in run.data.tags["error"]

    # The re-run is a new process: its first job found the float model and the observation on disk.
    rerun_jobs = sorted(
        (r for r in jobs if r.info.status == "FINISHED" and r.data.tags["sweep.pid"] != str(proc.pid)),
        key=lambda r: r.info.start_time,
    )
    assert len(rerun_jobs) == N_JOBS - len(done_before)
    assert rerun_jobs[0].data.tags["cache.float_model"] == "disk"
    assert all(r.data.tags["cache.float_model"] == "memory" for r in rerun_jobs[1:])
    smoothed = [r for r in rerun_jobs if r.data.tags["choice.anti_method"] == "m1"]
    if smoothed:
        assert smoothed[0].data.tags["cache.observation"] == "disk"
