"""Runs left RUNNING by a process that no longer exists: marked KILLED, their leftovers removed.

Called whenever a sweep command opens the MLflow store (:func:`sweep.tracking.setup_experiment`,
:func:`sweep.tracking.open_existing_experiment`), so a run killed with SIGKILL does not stay RUNNING
and its half-written outputs do not stay on disk. Only runs whose owner is known to be gone (same
host, pid no longer running) are touched; runs of another host are left alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from quant.export import RECIPE_FILE
from sweep.run_owner import owner_alive
from sweep.search_filter import quoted

log = logging.getLogger(__name__)

OUTPUT_TAG = "sweep.output_dir"  # the run's save_directory, tagged when the run starts
_LEFTOVER_PREFIXES = (".tmp-", ".old-")  # quant.export writes <dir>/.<name>.tmp-* and moves aside to .old-*


def reap_stale_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owner process (on this host) is gone,
    and remove what it left on disk; returns the ids of the runs marked."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    reaped = []
    for run in runs:
        if owner_alive(run.data.tags) is not False:
            continue
        pid = run.data.tags.get("sweep.pid")
        client.set_tag(run.info.run_id, "error", f"process {pid} ended before the run did (killed); marked KILLED")
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        reaped.append(run.info.run_id)
        for path in remove_leftovers(client, experiment_id, run):
            log.warning("removed %s, left by killed run %s", path, run.info.run_id)
    if reaped:
        log.warning("marked %d run(s) of dead processes KILLED: %s", len(reaped), ", ".join(reaped))
    return reaped


def output_dir(run: Run) -> Path | None:
    """Where the run writes its quantized model (its tag, else its logged ``save_directory`` param)."""
    value = run.data.tags.get(OUTPUT_TAG) or run.data.params.get("save_directory")
    return Path(value) if value else None


def remove_leftovers(client: MlflowClient, experiment_id: str, run: Run) -> list[Path]:
    """Remove a run's export temporaries, and its output directory when the run wrote it (a saved
    recipe newer than the run's start) and no FINISHED run owns the same directory; anything else
    there (another tool's files, an older output) is kept. Returns what was removed."""
    directory = output_dir(run)
    if directory is None or not directory.parent.is_dir():
        return []
    removed = [
        p
        for p in sorted(directory.parent.iterdir())
        if p.is_dir() and any(p.name.startswith(f".{directory.name}{prefix}") for prefix in _LEFTOVER_PREFIXES)
    ]
    if _written_by(run, directory) and not _finished_elsewhere(client, experiment_id, run, directory):
        removed.append(directory)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _written_by(run: Run, directory: Path) -> bool:
    recipe = directory / RECIPE_FILE
    return recipe.is_file() and recipe.stat().st_mtime * 1000 >= (run.info.start_time or 0)


def _finished_elsewhere(client: MlflowClient, experiment_id: str, run: Run, directory: Path) -> bool:
    for field in (f"tags.`{OUTPUT_TAG}`", "params.save_directory"):
        query = f"{field} = {quoted(str(directory))} and attributes.status = 'FINISHED'"
        if any(r.info.run_id != run.info.run_id for r in client.search_runs([experiment_id], query, max_results=10)):
            return True
    return False
