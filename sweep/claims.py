"""Claiming a config before running it, so that sweeps side by side never run one config twice.

A claim is the job's own MLflow run, created RUNNING with its owner's host and pid before any work
starts. The protocol needs no lock, so it holds for a SQLite file and a team server alike: create
the run, then look at every live claim of the same config hash; the oldest (start time, then run
id) wins, and every process sees the same oldest. A loser deletes its run and waits for the winner:
when the winner FINISHED, its result is reused; when it failed or its process died (then it is
marked KILLED here), the config is claimed again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from sweep.run_owner import owner_alive
from sweep.search_filter import latest_run, quoted
from sweep.stale_runs import reap_stale_runs
from sweep.tracking import store_lock

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim_config`: ``run_id`` to run the job in, or ``finished`` to reuse."""

    run_id: str | None = None
    finished: Run | None = None
    waited: bool = False  # another process held the claim first


def finished_run(client: MlflowClient, experiment_id: str, config_hash: str) -> Run | None:
    """The latest FINISHED run of this config in the experiment (what resume skips on), if any."""
    finished = f"tags.config_hash = {quoted(config_hash)} and attributes.status = 'FINISHED'"
    return latest_run(client, experiment_id, finished)


def live_claims(client: MlflowClient, experiment_id: str, config_hash: str) -> list[Run]:
    """RUNNING runs of this config whose owner lives (or cannot be judged: another host), oldest first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = {quoted(config_hash)} and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    live = [r for r in runs if owner_alive(r.data.tags) is not False]
    return sorted(live, key=lambda r: (r.info.start_time, r.info.run_id))


def claim_config(
    client: MlflowClient,
    tracking_uri: str,
    experiment_id: str,
    config_hash: str,
    run_name: str,
    tags: dict[str, str],
    poll_seconds: float = POLL_SECONDS,
) -> Claim:
    """Claim ``config_hash`` for this process: a new RUNNING run (``tags`` must carry the config
    hash and the owner) when no other live claim is older, else wait for the older one to end.

    For a SQLite store the look-and-create step runs under :func:`sweep.tracking.store_lock`, so even
    two claims made in the same millisecond are ordered; a server store relies on the oldest-wins rule.
    """
    waited = False
    while True:
        with store_lock(tracking_uri):
            done = finished_run(client, experiment_id, config_hash)
            if done is not None:
                return Claim(finished=done, waited=waited)
            mine = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            claims = live_claims(client, experiment_id, config_hash)
        if not claims or claims[0].info.run_id == mine:
            return Claim(run_id=mine, waited=waited)
        client.delete_run(mine)
        waited = True
        _wait_until_ended(client, experiment_id, claims[0].info.run_id, poll_seconds)


def _wait_until_ended(client: MlflowClient, experiment_id: str, run_id: str, poll_seconds: float) -> None:
    while client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
        if reap_stale_runs(client, experiment_id):  # the owner died while we waited
            continue
        time.sleep(poll_seconds)
