"""MLflow search filters: quoted values, and the latest run matching one."""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.tracking import MlflowClient


def quoted(value: str) -> str:
    """``value`` as a quoted string literal of an MLflow filter (``tags.x = 'it\\'s'``)."""
    return "'" + value.replace("'", "\\'") + "'"


def latest_run(client: MlflowClient, experiment_id: str, filter_string: str) -> Run | None:
    """The most recently started run of the experiment matching ``filter_string``, if any."""
    runs = client.search_runs(
        [experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None
