"""python -m sweep.analyze on a tiny model with one planted sensitive linear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from planted import PLANTED, write_planted_inputs

from sweep.analyze import RANKING_ARTIFACT, main


@pytest.fixture(scope="module")
def planted_overrides(tmp_path_factory) -> list[str]:
    return write_planted_inputs(tmp_path_factory.mktemp("planted"))


@pytest.mark.parametrize("mode", ["alone_quantized", "alone_float"])
def test_the_planted_linear_ranks_first_and_the_ranking_is_logged(planted_overrides, mode, capsys, tmp_path):
    overrides = [*planted_overrides, f"mode={mode}", "sensitivity_blocks=8", f"tracking.experiment_name=an-{mode}"]
    assert main(overrides) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[1] == PLANTED  # row 1 of the printed ranking
    uri = next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.tracking_uri="))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"an-{mode}")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "analyze-none-act1" and run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "sensitivity")}
    assert {RANKING_ARTIFACT, "sensitivity/table.txt", "sensitivity/tokens.json"} <= logged
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/sensitivity.png"]
    ranking = json.loads(Path(client.download_artifacts(run.info.run_id, RANKING_ARTIFACT, str(tmp_path))).read_text())
    rows = ranking["rows"]
    assert ranking["module_order"][0] == "model.layers.0.self_attn.q_proj"
    assert ranking["mode"] == mode and len(rows) == 14  # 2 layers x 7 linears; lm_head stays float
    assert rows[0]["name"] == PLANTED and rows[0]["score"] > 3 * rows[1]["score"]
    # The quantizer's own SQNR agrees: the planted linear is by far the noisiest.
    assert rows[0]["sqnr_db"] == min(r["sqnr_db"] for r in rows)


def test_bad_input_is_one_line(planted_overrides, capsys):
    assert main([*planted_overrides, "mode=sideways"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sweep.analyze: error: mode: invalid value 'sideways'; valid values: alone_quantized, alone_float"]
    assert main([*planted_overrides, "sensitivity_blocks=99"]) == 2
    assert "sensitivity_blocks: invalid value 99" in capsys.readouterr().err
