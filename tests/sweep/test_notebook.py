"""The analysis notebook runs top to bottom on a real (small) sweep's MLflow experiment."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from sweep.regress_record import record_check
from sweep_helpers import REPO_ROOT, fake_check, fake_origin

NOTEBOOK = REPO_ROOT / "notebooks" / "sweep_analysis.ipynb"


def test_analysis_notebook_executes_on_a_small_experiment(sweep8, tmp_path, monkeypatch):
    parent = next(r for r in sweep8.runs() if r.data.tags.get("sweep.role") == "parent")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep8.inputs.uri)
    monkeypatch.setenv("SWEEP_EXPERIMENT", "llama-quant")
    monkeypatch.setenv("SWEEP_PARENT_RUN", parent.info.run_id)
    # Two recorded regression checks of a recipe (the second a regression) in their own experiment.
    checks = "notebook-regress"
    champion, dropped = [True] * 180 + [False] * 20, [True] * 150 + [False] * 50
    artifacts = str(sweep8.inputs.artifacts)
    record_check(fake_check(champion, champion), sweep8.inputs.uri, checks, artifacts, fake_origin("aaaaaaaa", "2.5.1"))
    record_check(fake_check(champion, dropped), sweep8.inputs.uri, checks, artifacts, fake_origin("bbbbbbbb", "2.6.0"))
    monkeypatch.setenv("REGRESS_EXPERIMENT", checks)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it clean"
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 4  # Pareto front, grid heat map, sensitivity, regression history
    text = "\n".join(out.get("text", "") for out in outputs)
    assert "8 configs, 7 finished" in text
    assert "recipe w8a8-m1-act1-L0-boolq50 (content key 0123456789abcdef), gate on boolq_acc, 2 checks" in text
    assert "bbbbbbbb" in text and "fail  <- REGRESSION" in text
    tables = "\n".join(out.get("data", {}).get("text/plain", "") for out in outputs)
    assert "w8a8-m1-act1-L1-boolq50" in tables  # the failure table names the failed job
    assert "model.layers.0.self_attn.q_proj" in tables  # the sensitivity table lists linears
