"""Hydra launchers on the tiny model (conf/launcher/): joblib with 4 worker processes, submitit's
local executor and a local Ray cluster with 2 jobs each. Every job must arrive in the MLflow store
(SQLite, written by several processes at once) under the sweep's one parent run, with the same
weights, numbers and files as the serial sweep of the same configs."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from sweep_helpers import assert_same_results, failure_report, fresh_outputs, parent_and_children, run_module

PAIR = ["anti_method=none,m1", "disable_level=L1"]  # two configs of the smoke grid


def _launch(shared_inputs, root, mlflow_template, args: list[str]) -> MlflowClient:
    inputs = fresh_outputs(shared_inputs, root, mlflow_template)
    proc = run_module("sweep", ["-m", *args, *inputs.sweep_args()], cwd=inputs.root)
    assert proc.returncode == 0, failure_report(proc)
    return MlflowClient(inputs.uri)


def _check_sweep(client: MlflowClient, serial_smoke, n_jobs: int) -> list:
    parent, children = parent_and_children(client)
    assert len(children) == n_jobs
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_configs"] == n_jobs and parent.data.metrics["n_finished"] == n_jobs
    _, reference = parent_and_children(serial_smoke.client)
    assert_same_results(client, children, serial_smoke.client, reference)
    return children


def test_joblib_four_workers_lose_no_run_in_the_sqlite_store(shared_inputs, serial_smoke, tmp_path, mlflow_template):
    client = _launch(shared_inputs, tmp_path, mlflow_template, ["grid=smoke", "launcher=joblib"])
    children = _check_sweep(client, serial_smoke, 4)
    # The jobs ran in worker processes, at the same time.
    parent_pid = parent_and_children(client)[0].data.tags["sweep.pid"]
    pids = {r.data.tags["sweep.pid"] for r in children}
    assert parent_pid not in pids and len(pids) >= 2
    assert max(r.info.start_time for r in children) < min(r.info.end_time for r in children)


def test_submitit_local_executor_runs_each_job_in_its_own_process(
    shared_inputs, serial_smoke, tmp_path, mlflow_template
):
    client = _launch(shared_inputs, tmp_path, mlflow_template, [*PAIR, "launcher=submitit_local"])
    children = _check_sweep(client, serial_smoke, 2)
    assert len({r.data.tags["sweep.pid"] for r in children}) == 2
    # submitit's own bookkeeping: one folder per job with its pickled result.
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2


def test_ray_local_cluster_completes_a_two_job_sweep(shared_inputs, serial_smoke, tmp_path, mlflow_template):
    args = [*PAIR, "launcher=ray", "hydra.launcher.ray.init.num_cpus=2"]
    client = _launch(shared_inputs, tmp_path, mlflow_template, args)
    _check_sweep(client, serial_smoke, 2)
