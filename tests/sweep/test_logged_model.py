"""The job's LoggedModel is created whatever characters its run name carries; its data inputs are
logged when parallel jobs log the same file at once."""

from __future__ import annotations

import multiprocessing

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep.logged_model import log_data_inputs, log_quantized_model, logged_model_name


def test_run_name_with_characters_mlflow_refuses_still_logs_a_model(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment_id)
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}", encoding="utf-8")
    run_name = "llama_33b_sparse:w8a8s-none-act2-L0/boolq50.c0deba%'\""

    model_id = log_quantized_model(client, run.info.run_id, experiment_id, run_name, [recipe], {})

    model = client.get_logged_model(model_id)
    assert model.name == logged_model_name(run_name) == "llama_33b_sparse-w8a8s-none-act2-L0-boolq50-c0deba---"
    assert "READY" in str(model.status)


class _CollidingClient:
    """A client whose first ``log_inputs`` fails as MLflow's SQL store does when another job inserted
    the same dataset between its lookup and its insert (seen with the Ray launcher)."""

    def __init__(self, client: MlflowClient, error: str) -> None:
        self._client, self._error, self.calls = client, error, 0

    def log_inputs(self, run_id, datasets=None, models=None):
        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self._error)
        return self._client.log_inputs(run_id, datasets=datasets, models=models)

    def __getattr__(self, name):
        return getattr(self._client, name)


COLLISION = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest"


def _store_with_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    data = tmp_path / "calib.jsonl"
    data.write_text('{"text": "a"}\n', encoding="utf-8")
    return client, client.create_run(experiment_id).info.run_id, data


def test_a_dataset_inserted_by_a_concurrent_job_is_linked_not_failed(tmp_path):
    client, run_id, data = _store_with_run(tmp_path)
    colliding = _CollidingClient(client, COLLISION)

    tags = log_data_inputs(colliding, run_id, {"calibration": str(data)})

    assert colliding.calls == 2
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["calib.jsonl"]
    assert tags["data.calibration_sha256"] == client.get_run(run_id).data.tags["data.calibration_sha256"]


def test_other_input_errors_are_not_retried(tmp_path):
    client, run_id, data = _store_with_run(tmp_path)
    colliding = _CollidingClient(client, "Run 'abc' not found")

    with pytest.raises(MlflowException, match="not found"):
        log_data_inputs(colliding, run_id, {"calibration": str(data)})
    assert colliding.calls == 1


def _log_same_file(uri: str, experiment_id: str, data: str, barrier) -> str:
    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id).info.run_id
    barrier.wait()
    log_data_inputs(client, run_id, {"calibration": data})
    return run_id


def test_processes_logging_one_file_at_once_all_link_it(tmp_path):
    client, _, data = _store_with_run(tmp_path)
    experiment_id = client.get_experiment_by_name("e").experiment_id
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        barrier = manager.Barrier(4)
        args = [(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_id, str(data), barrier)] * 4
        run_ids = pool.starmap(_log_same_file, args)

    for run_id in run_ids:
        assert [i.dataset.name for i in client.get_run(run_id).inputs.dataset_inputs] == ["calib.jsonl"]
