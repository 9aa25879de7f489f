"""The team tracking setup of docs/scaling.md, for real: a PostgreSQL server on loopback, an
``mlflow server`` on it with its own artifact store, and a sweep of 4 parallel jobs (joblib)
logging to it over HTTP. Every run, metric and artifact must arrive, the same as in the serial
sweep, and be stored where the server keeps them (PostgreSQL rows, files under its artifact root)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from servers import LOOPBACK, PG_USER, create_database, mlflow_server, postgres_bin_dir, postgres_server
from sweep_helpers import artifact_paths, assert_same_results, failure_report, parent_and_children, run_module

PG_BIN = postgres_bin_dir()
pytestmark = pytest.mark.skipif(
    PG_BIN is None,
    reason="PostgreSQL is not installed (initdb/pg_ctl neither on PATH nor in /usr/lib/postgresql/*/bin); "
    ".ci/run installs it with apt-get install postgresql",
)


@pytest.fixture()
def team_server(tmp_path):
    """PostgreSQL and an MLflow server on it, both on free loopback ports; yields (url, artifacts, port)."""
    artifacts = tmp_path / "server-artifacts"
    with postgres_server(PG_BIN) as pg:
        backend = create_database(pg, "mlflow")
        with mlflow_server(backend, artifacts, tmp_path / "mlflow-server.log") as url:
            yield url, artifacts, pg.port


def _rows(port: int, query: str) -> int:
    import psycopg

    with psycopg.connect(host=LOOPBACK, port=port, user=PG_USER, dbname="mlflow") as conn:
        return conn.execute(query).fetchone()[0]


def test_four_parallel_jobs_log_everything_to_the_postgres_backed_server(
    team_server, shared_inputs, serial_smoke, tmp_path
):
    url, artifacts, port = team_server
    assert url.startswith(f"http://{LOOPBACK}:")
    inputs = shared_inputs.elsewhere(tmp_path / "sweep")  # no local store: it must not be needed
    args = ["-m", "grid=smoke", "launcher=joblib", "tracking=server", f"tracking.tracking_uri={url}"]
    proc = run_module("sweep", [*args, *inputs.sweep_args(local_store=False)], cwd=inputs.root)
    assert proc.returncode == 0, failure_report(proc)

    client = MlflowClient(url)
    parent, children = parent_and_children(client)
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert parent.data.metrics["n_finished"] == 4
    _, reference = parent_and_children(serial_smoke.client)
    assert_same_results(client, children, serial_smoke.client, reference)
    assert len({r.data.tags["sweep.pid"] for r in children}) >= 2  # written by several processes

    # Stored by the server: rows in PostgreSQL, files under its artifact destination.
    assert _rows(port, "SELECT count(*) FROM runs") == 5
    logged_metrics = sum(len(r.data.metrics) for r in [parent, *children])
    assert _rows(port, "SELECT count(*) FROM latest_metrics") == logged_metrics
    for run in [parent, *children]:
        (run_dir,) = artifacts.glob(f"*/{run.info.run_id}/artifacts")
        on_disk = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
        assert on_disk == artifact_paths(client, run.info.run_id)
    assert not inputs.db.exists() and not (inputs.root / "mlflow").exists()  # nothing logged locally
