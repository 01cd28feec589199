"""Crash recovery: an ingest killed with SIGKILL mid-way loses nothing and a re-run completes it.

A child process ingests a large synthetic file in small batches and is killed
once some batches are committed; the test then re-runs the same ingest in-process
and checks that every valid input event is stored exactly once and the ledger
verifies. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb

from ledger import chain
from ledger.ingest import ingest
from ledger.store import Store
from ledger.verify import verify
from ledger.workload import synthetic_lines

N_EVENTS = 30_000
BAD_EVERY = 5_000  # a malformed line after every this many valid ones
CHILD_BATCH = 50
KILL_AFTER = 3_000  # rows committed before the child is killed
DEADLINE_S = 120.0

CHILD = """
import sys
from ledger import ingest_processes
from ledger.ingest import ingest
from ledger.store import Store
if __name__ == "__main__":
    url, src, rejects, batch, workers = sys.argv[1:]
    ingest_processes.BYTES_PER_PROCESS = 1  # share the input out even though it is small
    with Store.open(url) as store:
        ingest(store, [src], reject_file=rejects, batch_size=int(batch), workers=int(workers))
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], int]:
    """A JSONL file of N_EVENTS valid events with a few malformed lines among them."""
    path = tmp_path_factory.mktemp("crash") / "big.jsonl"
    events: list[dict[str, Any]] = []
    bad = 0
    with path.open("wb") as fh:
        for i, line in enumerate(synthetic_lines(N_EVENTS), 1):
            fh.write(line)
            events.append(orjson.loads(line))
            if i % BAD_EVERY == 0:
                fh.write(b'{"trace_id": "cut off\n')
                bad += 1
    return path, events, bad


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its exit status is left


def kill_midway(url: str, src: Path, rejects: Path, workers: int = 1) -> int:
    """Start the child ingest, SIGKILL it once KILL_AFTER rows are stored; return rows stored
    once every process of that ingest has stopped."""
    script = src.parent / "child_ingest.py"  # a file: spawned processes re-import __main__
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), url, str(src), str(rejects), str(CHILD_BATCH),
         str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while rawdb.count(url) < KILL_AFTER:
            if child.poll() is not None:
                pytest.fail(f"child ingest exited ({child.returncode}) before it was killed: "
                            f"{child.stderr.read().decode() if child.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail("child ingest stored too few rows in time")
            time.sleep(0.01)
        spawned = children_of(child.pid)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL, "the child finished before it was killed"
    assert len(spawned) >= workers - 1, f"expected {workers - 1} spawned ingest processes"
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in spawned), "spawned ingest processes outlived the kill"
    return rawdb.count(url)


@pytest.mark.parametrize("workers", [1, 3])
def test_rerun_after_sigkill_stores_every_event_exactly_once(
    store: Store, store_url: str, source: tuple[Path, list[dict[str, Any]], int], tmp_path: Path,
    workers: int,
) -> None:
    """After a SIGKILLed ingest (one process, or three sharing the streams), a re-run stores
    each valid event once and the ledger verifies."""
    src, events, bad = source
    committed = kill_midway(store_url, src, tmp_path / "rejected-killed.jsonl", workers)
    assert 0 < committed < N_EVENTS

    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"),
                     batch_size=1_000)
    assert (summary.duplicates, summary.accepted, summary.rejected) == (
        committed, N_EVENTS - committed, bad)

    rows = rawdb.rows(store_url)
    assert len(rows) == N_EVENTS
    assert len({(r.stream_id, r.version) for r in rows}) == N_EVENTS
    assert all(r.topic == chain.EVENT_TOPIC for r in rows)
    by_key = {(ev["tenant"], ev["trace_id"], ev["seq"]): ev for ev in events}
    seen: set[tuple[str, str, int]] = set()
    for row in rows:
        record = chain.decode(row.state)
        key = (record["tenant"], record["trace_id"], record["seq"])
        assert key not in seen, f"stored twice: {key}"
        seen.add(key)
        assert row.stream_id == chain.trace_stream_id(record["tenant"], record["trace_id"])
        assert all(record[k] == v for k, v in by_key[key].items()), key
    assert seen == set(by_key)

    report = verify(store)
    assert report.ok, report.problems[:5]
    assert report.events == N_EVENTS
