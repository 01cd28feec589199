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
from ledger.ingest import ingest
from ledger.store import Store
url, src, rejects, batch = sys.argv[1:]
with Store.open(url) as store:
    ingest(store, [src], reject_file=rejects, batch_size=int(batch))
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


def kill_midway(url: str, src: Path, rejects: Path) -> int:
    """Start the child ingest, SIGKILL it once KILL_AFTER rows are stored; return rows stored."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(src), str(rejects), str(CHILD_BATCH)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while rawdb.count(url) < KILL_AFTER:
            if child.poll() is not None:
                pytest.fail(f"child ingest exited ({child.returncode}) before it was killed: "
                            f"{child.stderr.read().decode() if child.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail("child ingest stored too few rows in time")
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL, "the child finished before it was killed"
    return rawdb.count(url)


def test_rerun_after_sigkill_stores_every_event_exactly_once(
    store: Store, store_url: str, source: tuple[Path, list[dict[str, Any]], int], tmp_path: Path
) -> None:
    """After a SIGKILLed ingest, a re-run stores each valid event once and the ledger verifies."""
    src, events, bad = source
    committed = kill_midway(store_url, src, tmp_path / "rejected-killed.jsonl")
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
