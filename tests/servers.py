"""Real servers for the team-tracking tests, on loopback only: a throwaway PostgreSQL cluster and
an ``mlflow server`` on it. Both are torn down by their context managers."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
PG_USER = "mlflow"  # the cluster's superuser name (trust authentication on loopback, tests only)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, else Debian's ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass(frozen=True)
class Postgres:
    """A running cluster: connect as :data:`PG_USER` to ``127.0.0.1:port``."""

    port: int

    def uri(self, database: str) -> str:
        return f"postgresql://{PG_USER}@{LOOPBACK}:{self.port}/{database}"


@contextlib.contextmanager
def postgres_server(bin_dir: Path) -> Iterator[Postgres]:
    """initdb a cluster in a fresh directory, start it on a free loopback port, stop and remove it after."""
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))  # not under pytest's root-only tmp tree
    data = root / "data"
    if user is not None:
        record = pwd.getpwnam(user)
        os.chown(root, record.pw_uid, record.pw_gid)
    run_as = {"user": user} if user is not None else {}
    port = free_port()
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            cwd=root,
            **run_as,
        )
        options = f"-h {LOOPBACK} -p {port} -k {root} -c fsync=off"
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            cwd=root,
            **run_as,
        )
        try:
            yield Postgres(port)
        finally:
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                cwd=root,
                **run_as,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: Postgres, name: str) -> str:
    """``CREATE DATABASE name``; returns its URI."""
    import psycopg  # the driver SQLAlchemy 2.1 uses for postgresql:// URIs

    with psycopg.connect(host=LOOPBACK, port=server.port, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.uri(name)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow server`` as docs/scaling.md starts it, on a free loopback port; yields its URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    url = f"http://{LOOPBACK}:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, proc, log, timeout)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")
