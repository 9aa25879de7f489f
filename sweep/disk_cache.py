"""A content-keyed store on disk that several processes may fill at the same time.

An entry is a directory ``<root>/<kind>/<key>/``. It is written under a temporary name beside
its final place and renamed into place in one step, so a reader sees either no entry or a
complete one. When two writers race, the first rename wins and the loser drops its copy: both
computed the same content, since the key is a hash of everything the content depends on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class DiskCache:
    """Entries by ``(kind, key)`` under ``root``; see the module docstring for the write protocol."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def entry(self, kind: str, key: str) -> Path:
        """Where the entry lives (it may not exist)."""
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return self.entry(kind, key).is_dir()

    def write(self, kind: str, key: str, fill: Callable[[Path], None]) -> Path:
        """Create the entry by calling ``fill(directory)`` on a private directory, then publish it.

        Returns the entry's path; when another process published it first, theirs is kept.
        """
        final = self.entry(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
        try:
            fill(tmp)
            os.rename(tmp, final)  # atomic; fails if ``final`` already exists as a non-empty directory
        except OSError:
            if not final.is_dir():
                raise
            log.info("%s cache entry %s was written by another process first", kind, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def discard(self, kind: str, key: str) -> None:
        """Remove an unreadable entry: rename it away first so no reader sees it half-deleted."""
        final = self.entry(kind, key)
        if not final.exists():
            return
        doomed = Path(tempfile.mkdtemp(prefix=f".{key}.discard-", dir=final.parent))
        with contextlib.suppress(OSError):  # another process discarded or replaced it meanwhile
            os.rename(final, doomed / key)
        shutil.rmtree(doomed, ignore_errors=True)
