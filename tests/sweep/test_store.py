"""The work store: memory → disk → compute, parallel writers, killed writers, unreadable entries."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from quant.memo import content_key
from sweep.store import ENTRY_FILE, STALE_TMP_S, JsonCodec, WorkStore

TEXT = JsonCodec(str, str)


def test_content_key_separates_parts_and_values():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    assert content_key(b"\x00\x01") != content_key([0, 1])
    assert len(content_key("x")) == 24


def test_lookup_goes_memory_then_disk_then_compute(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or "value"  # noqa: E731
    store = WorkStore(tmp_path)
    first = store.lookup("kind", ["a", 1], compute, TEXT)
    again = store.lookup("kind", ["a", 1], compute, TEXT)
    other_process = WorkStore(tmp_path).lookup("kind", ["a", 1], compute, TEXT)
    assert [e.outcome for e in (first.event, again.event, other_process.event)] == ["computed", "memory", "disk"]
    assert calls == [1] and other_process.value == "value"
    entry = tmp_path / "kind" / first.event.key
    assert first.event.where == str(entry) == other_process.event.where and again.event.where == "memory"
    assert first.event.key == content_key("kind", "a", 1) and (entry / ENTRY_FILE).is_file()
    assert [e.kind for e in store.take_events()] == ["kind", "kind"] and store.take_events() == []
    # Another key part is another entry; without a codec nothing goes to disk.
    store.lookup("kind", ["a", 2], compute, TEXT)
    memory_only = store.lookup("plain", ["a"], compute)
    assert calls == [1, 1, 1] and memory_only.event.where == "computed" and not (tmp_path / "plain").exists()


def test_a_store_without_root_keeps_everything_in_memory(tmp_path):
    store = WorkStore(None)
    assert store.lookup("kind", ["a"], lambda: "v", TEXT).event.outcome == "computed"
    assert store.lookup("kind", ["a"], lambda: "w", TEXT).value == "v"
    assert WorkStore(None).lookup("kind", ["a"], lambda: "w", TEXT).value == "w"


def test_smoothing_keeps_only_the_latest_value_in_memory(tmp_path):
    store = WorkStore(tmp_path)
    store.lookup("smoothing", ["m1"], lambda: "smoothed by m1")
    store.lookup("smoothing", ["m2"], lambda: "smoothed by m2")
    assert store.lookup("smoothing", ["m2"], lambda: "again").event.outcome == "memory"
    assert store.lookup("smoothing", ["m1"], lambda: "again").event.outcome == "computed"


class _SlowBytes:
    """A codec that writes its bytes slowly (so racing writers overlap) and may die half-way."""

    def __init__(self, die_after_half: bool = False) -> None:
        self.die_after_half = die_after_half

    def write(self, value: bytes, directory: Path) -> None:
        with (directory / "payload.bin").open("wb") as handle:
            handle.write(value[: len(value) // 2])
            handle.flush()
            if self.die_after_half:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.2)
            handle.write(value[len(value) // 2 :])

    def read(self, directory: Path) -> bytes:
        return (directory / "payload.bin").read_bytes()


def _race(root: str, barrier, index: int, out: str) -> None:
    barrier.wait()
    found = WorkStore(root).lookup("race", ["same"], lambda: bytes([index]) * 1_000_000, _SlowBytes())
    Path(out).write_bytes(found.value)


def test_two_processes_computing_one_entry_end_with_one_entry_and_the_same_bytes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    outs = [tmp_path / f"out{i}.bin" for i in range(3)]
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "store"), barrier, i, str(outs[i]))) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    results = [o.read_bytes() for o in outs]
    assert len(set(results)) == 1, "a losing writer went on with its own result"
    entries = list((tmp_path / "store" / "race").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # one entry, no temporary leftovers
    assert (entries[0] / "payload.bin").read_bytes() == results[0] == bytes([results[0][0]]) * 1_000_000


def _killed_writer(root: str) -> None:
    WorkStore(root).lookup("kind", ["k"], lambda: b"x" * 1000, _SlowBytes(die_after_half=True))


def test_a_killed_writer_leaves_nothing_that_reads_as_valid(tmp_path):
    root = tmp_path / "store"
    proc = multiprocessing.get_context("fork").Process(target=_killed_writer, args=(str(root),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    leftovers = list((root / "kind").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".") and ".tmp-" in leftovers[0].name
    store = WorkStore(root)
    key = content_key("kind", "k")
    assert not store.has_entry("kind", key)
    assert store.lookup("kind", ["k"], lambda: b"y" * 10, _SlowBytes()).event.outcome == "computed"
    # Once stale, the dead writer's temporary directory is removed when a store is opened.
    old = time.time() - STALE_TMP_S - 60
    os.utime(leftovers[0], (old, old))
    WorkStore(root)
    assert [p.name for p in (root / "kind").iterdir()] == [key]


def test_an_unreadable_or_foreign_entry_is_computed_again(tmp_path):
    store = WorkStore(tmp_path)
    key = store.lookup("kind", ["a"], lambda: "v", TEXT).event.key
    (tmp_path / "kind" / key / JsonCodec.FILE).write_text("{not json")
    fresh = WorkStore(tmp_path).lookup("kind", ["a"], lambda: "recomputed", TEXT)
    assert (fresh.event.outcome, fresh.value) == ("computed", "recomputed")
    assert WorkStore(tmp_path).lookup("kind", ["a"], lambda: "no", TEXT).value == "recomputed"
    # A directory without the entry marker naming it is not an entry.
    entry = tmp_path / "kind" / key
    (entry / ENTRY_FILE).write_text(json.dumps({"kind": "kind", "key": "another", "format": 1}))
    assert not WorkStore(tmp_path).has_entry("kind", key)


def test_a_failing_compute_writes_nothing(tmp_path):
    store = WorkStore(tmp_path)

    def broken() -> str:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        store.lookup("kind", ["a"], broken, TEXT)
    assert not (tmp_path / "kind").exists() or not list((tmp_path / "kind").iterdir())
    assert store.lookup("kind", ["a"], lambda: "v", TEXT).event.outcome == "computed"
