"""The job's LoggedModel is created whatever characters its run name carries."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from sweep.logged_model import log_quantized_model, logged_model_name


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
