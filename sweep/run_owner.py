"""Which process owns an MLflow run, and whether that process still lives.

Every run the sweep starts carries its owner's host, pid and (on Linux) the pid's start time, so
that any later process on the same host can tell a run that is still being written from one whose
process was killed (pid reuse included). Runs owned by another host cannot be judged from here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

HOST_TAG = "sweep.host"
PID_TAG = "sweep.pid"
PID_START_TAG = "sweep.pid_start"  # /proc/<pid>/stat start time (clock ticks since boot); "" elsewhere


def process_start(pid: int) -> str:
    """The start time of process ``pid`` as /proc reports it, or "" when unknown (no /proc, no such pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def owner_tags() -> dict[str, str]:
    """Tags naming this process as a run's owner."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid)}


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by a run's owner tags still runs: None when it cannot be told
    (another host, no owner tags), else True/False. A reused pid with another start time is dead."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return None
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return None
    if pid <= 0 or not process_alive(pid):
        return False
    recorded = tags.get(PID_START_TAG, "")
    return not recorded or process_start(pid) in ("", recorded)
