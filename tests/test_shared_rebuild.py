"""A rebuild shared out by stream between processes (``projections.parts``), on both
backends: the same views as one process, and the old views kept whole until the end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest
import rawdb
from viewdump import dump

from ledger import chain
from ledger.errors import StoreError, UsageError
from ledger.grants import add_grant, revoke_grant
from ledger.ingest import ingest
from ledger.store import Store
from ledger.verify import id_ranges
from ledger.workload import demo_events
from projections import Projector, parts
from projections.analytics import UPSERT_HOURLY, AnalyticsProjection
from projections.failures import FailureProjection
from projections.runner import NAMES
from projections.scratch import part_ddl, part_insert, scratch_schema
from projections.sql import view_db


def snapshot(store: Store) -> dict[str, Any]:
    """Every view row, each projection's position and built version."""
    db = view_db(store.backend)
    views: dict[str, Any] = dict(dump(store))
    views["positions"] = sorted(db.query("SELECT application_name, notification_id "
                                         "FROM {tracking}"))
    views["versions"] = sorted(db.query("SELECT name, version FROM {projection_state}"))
    return views


def scratch_left(url: str) -> list[str]:
    """What a shared rebuild of the store at ``url`` has left behind."""
    if not rawdb.is_postgres(url):
        path = Path(url.removeprefix("sqlite://")[1:])
        return sorted(p.name for p in path.parent.glob(f".{path.name}.rebuild-*"))
    conninfo, schema = rawdb._pg_target(url)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                            (scratch_schema(schema, 0)[:-1],)).fetchall()
    return sorted(r[0] for r in rows)


PARTS = 4  # the demo's one write authorized by a grant then lies apart from the grant


def part_of(stream: UUID, count: int) -> int:
    return next(k for k, (lo, hi) in enumerate(id_ranges(count))
                if lo <= stream and (hi is None or stream < hi))


@pytest.fixture
def ledger(store: Store, tmp_path: Path) -> Store:
    """The demo workload, with what crosses streams or is odd: grants of the tenant
    (one revoked) covering cross-agent writes of its traces, a conflicting event (a
    finding) and a garbled record (an unreadable entry)."""
    events = demo_events()
    demo = tmp_path / "demo.jsonl"
    demo.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    ingest(store, [str(demo)], reject_file=str(tmp_path / "rejects.jsonl"))
    Projector(store).catch_up()
    db = view_db(store.backend)
    uncovered = db.query("SELECT DISTINCT tenant, executed_by, scope FROM {write_attribution} "
                         "WHERE cross_agent = 1 AND authorized = 0 ORDER BY 1, 2, 3")
    assert len(uncovered) >= 2, "the demo has cross-agent writes nothing authorizes"
    grants = [add_grant(store, tenant, agent, scope, valid_from="2000-01-01")
              for tenant, agent, scope in uncovered]
    revoke_grant(store, grants[0].tenant, grants[0].grant_id, at="2001-01-01")
    conflict = dict(events[0], payload={"rewritten": True})
    other = tmp_path / "conflict.jsonl"
    other.write_bytes(orjson.dumps(conflict) + b"\n")
    ingest(store, [str(other)], reject_file=str(tmp_path / "rejects.jsonl"))
    last = events[-1]
    sid = chain.trace_stream_id(last.get("tenant", "default"), last["trace_id"])
    rawdb.set_state(store.url, sid, last["seq"], b"X" + rawdb.get_state(store.url, sid,
                                                                       last["seq"])[1:])
    return store


def test_shared_rebuild_gives_the_views_of_one_process(
    ledger: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ledger
    expected_read = Projector(store).rebuild(workers=1)
    one_process = snapshot(store)
    assert one_process["findings"] and one_process["unreadable_entries"]
    granted = [r for r in one_process["write_attribution"] if str(r[-1]).startswith("grant:")]
    assert granted, "some cross-agent write is authorized by a grant"
    # ... and some of those lie in another part than their tenant's $grants stream, so
    # only the merge's settle statements can authorize them.
    assert any(part_of(chain.trace_stream_id(r[0], r[1]), PARTS)
               != part_of(chain.grants_stream_id(r[0]), PARTS) for r in granted)

    monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)  # a short log is shared out too
    shared: list[int] = []
    monkeypatch.setattr(parts, "_merge", _spy(parts._merge, shared))
    progress: list[tuple[int, int]] = []
    # Small batches: a part then writes several batches' counts of one hour, which
    # the merge adds up (the parts' tables of counts have no key: part_insert).
    read = Projector(store, batch_size=25).rebuild(
        workers=PARTS, progress=lambda n, t: progress.append((n, t)))

    assert shared, "the rebuild was shared out"
    assert read == expected_read
    assert snapshot(store) == one_process
    assert progress and progress[-1][0] == read
    status = Projector(store).status()
    assert all(s.lag == 0 and not s.rebuild_needed for s in status)
    assert scratch_left(store.url) == []


def _spy(fn: Any, calls: list[int]) -> Any:
    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return fn(*args, **kwargs)
    return spy


def test_a_failing_part_stops_the_rebuild_and_keeps_the_views(
    ledger: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ledger
    Projector(store).catch_up()
    before = snapshot(store)
    monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)

    def fail(*args: Any, **kwargs: Any) -> int:  # the part run in this process
        raise StoreError("disk full (test)")

    monkeypatch.setattr(Projector, "_run_slice", fail)
    with pytest.raises(StoreError, match="disk full"):
        Projector(store).rebuild(workers=2)
    assert snapshot(store) == before
    assert scratch_left(store.url) == []


def test_a_worker_part_failing_stops_the_part_here_too(
    ledger: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned part fails (its scratch cannot be opened) while the part run here would
    take a minute: the error surfaces at once, and the views are kept."""
    store = ledger
    Projector(store).catch_up()
    before = snapshot(store)
    monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)
    real_scratch = parts.scratch

    @contextmanager
    def broken(db: Any, count: int) -> Iterator[Any]:
        with real_scratch(db, count) as place:
            real_url = place.url
            place.url = lambda k: real_url(k) if k == 0 else "sqlite:////nonexistent/x.db"
            yield place

    def slow(self: Projector, part: Any, progress: Any, batch_size: int) -> int:  # part 0
        for _ in range(600):
            progress(0, 1)
            time.sleep(0.1)
        return 0

    monkeypatch.setattr(parts, "scratch", broken)
    monkeypatch.setattr(Projector, "_run_slice", slow)
    started = time.monotonic()
    with pytest.raises(UsageError, match="no such folder /nonexistent"):
        Projector(store).rebuild(workers=2)
    assert time.monotonic() - started < 30
    assert snapshot(store) == before
    assert scratch_left(store.url) == []


KILLED = """
import sys
from ledger.store import Store
from projections import Projector, parts

if __name__ == "__main__":
    parts.ENTRIES_PER_PART = 1
    with Store.open(sys.argv[1]) as store:
        print("start", flush=True)
        Projector(store).rebuild(workers=2)
"""


UNGUARDED = """
import sys
from ledger.store import Store
from projections import Projector, parts

parts.ENTRIES_PER_PART = 1
with Store.open(sys.argv[1]) as store:
    Projector(store).rebuild(workers=2)
"""


def test_a_script_without_the_main_guard_stops_naming_it(ledger: Store, tmp_path: Path) -> None:
    """The spawned part runs the script again as it starts, and with it the rebuild:
    that rebuild fails at once, so the script's fails naming the guard. (On PostgreSQL
    it waited for the scratch lock the script's rebuild held: both waited for ever.)
    The views are as they were and no scratch is left."""
    store = ledger
    Projector(store).catch_up()
    before = snapshot(store)
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script), store.url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "rebuild: started in a spawned process as it imports the main module" in done.stderr
    assert done.stderr.strip().endswith(
        "a script that asks for workers > 1 must start from `if __name__ == '__main__':`")
    assert snapshot(store) == before
    assert scratch_left(store.url) == []


def test_a_killed_shared_rebuild_leaves_the_views_as_they_were(
    ledger: Store, tmp_path: Path
) -> None:
    """kill -9 while the parts run: the views and their positions are the old ones
    (older than the log's head here, so a finished merge would show), the parts die
    with it, and the next rebuild removes the scratch and completes."""
    store = ledger
    Projector(store).catch_up()
    before = snapshot(store)
    more = tmp_path / "more.jsonl"  # logged after the views' position
    more.write_bytes(b"".join(orjson.dumps(dict(e, trace_id="late-" + e["trace_id"])) + b"\n"
                              for e in demo_events()[:200]))
    ingest(store, [str(more)], reject_file=str(tmp_path / "rejects.jsonl"))
    script = tmp_path / "rebuild.py"
    script.write_text(KILLED)
    child = subprocess.Popen([sys.executable, str(script), store.url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not scratch_left(store.url):
            assert child.poll() is None, f"the rebuild ended first: {child.stderr.read()}"
            assert time.monotonic() < deadline, "no scratch appeared"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert snapshot(store) == before
    if not rawdb.is_postgres(store.url):
        assert scratch_left(store.url) != []  # a kill leaves it; the next rebuild removes it

    Projector(store).rebuild(workers=1)
    one_process = snapshot(store)
    parts_module_limit = parts.ENTRIES_PER_PART
    try:
        parts.ENTRIES_PER_PART = 1
        Projector(store).rebuild(workers=2)
    finally:
        parts.ENTRIES_PER_PART = parts_module_limit
    assert snapshot(store) == one_process
    assert scratch_left(store.url) == []


def test_scratch_a_killed_rebuild_left_is_removed_by_the_next(
    ledger: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ledger
    if rawdb.is_postgres(store.url):
        conninfo, schema = rawdb._pg_target(store.url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{scratch_schema(schema, 7)}"')
        ledger_there = scratch_schema(schema, 8)  # named like scratch, but holds a ledger
        Store.open(store.url.replace(schema, ledger_there)).close()
        kept = [ledger_there]
    else:
        path = Path(store.url.removeprefix("sqlite://")[1:])
        dead = path.parent / f".{path.name}.rebuild-{2**22 + 12345}"  # above pid_max
        dead.mkdir()
        (dead / "part1.db").write_bytes(b"left behind")
        alive = path.parent / f".{path.name}.rebuild-{os.getppid()}"  # a running process's
        alive.mkdir()
        kept = [alive.name]
    monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)
    Projector(store).rebuild(workers=2)
    assert scratch_left(store.url) == kept


def test_a_short_log_is_rebuilt_in_this_process(ledger: Store) -> None:
    projector = Projector(ledger)
    assert parts.part_count(projector, 8) == 1  # the demo is far below 50,000 a part
    assert set(NAMES) == {p.name for p in projector.projections}


KEYED = {"tool_calls": "tenant, trace_id, seq", "failures": "tenant, trace_id, seq",
         "memory_writes": "tenant, trace_id, seq", "write_attribution": "tenant, trace_id, seq",
         "findings": "tenant, finding_seq"}


@pytest.mark.parametrize("workers", [1, PARTS])
def test_every_view_keeps_its_key_after_a_rebuild(
    ledger: Store, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tables whose key is a unique index built after the rows still refuse a
    duplicate row, whichever way they were rebuilt."""
    monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)
    Projector(ledger).rebuild(workers=workers)
    db = view_db(ledger.backend)
    wanted = {re.search(r"EXISTS (\w+)", s).group(1)
              for p in Projector(ledger).projections for s in p.ddl + p.query_indexes
              if "INDEX" in s}
    assert wanted <= indexes(ledger)  # (on PostgreSQL built by several connections)
    for table, key in KEYED.items():
        assert db.query("SELECT count(*) FROM {" + table + "}")[0][0] > 0, table
        with pytest.raises(StoreError, match=r"(?i)unique"), db.transaction() as cur:
            db.execute(cur, "INSERT INTO {" + table + "} SELECT * FROM {" + table + "} "
                       "WHERE (" + key + ") IN (SELECT " + key + " FROM {" + table + "} "
                       "LIMIT 1)")


def indexes(store: Store) -> set[str]:
    db = view_db(store.backend)
    if db.dialect == "sqlite":
        return {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return {r[0] for r in db.query("SELECT indexname FROM pg_indexes WHERE schemaname = ?",
                                   (db.schema,))}


def test_a_parts_tables_of_counts_take_rows_without_a_key() -> None:
    ddl = dict(zip(AnalyticsProjection.ddl, part_ddl(AnalyticsProjection()), strict=True))
    changed = {a: b for a, b in ddl.items() if a != b}
    assert len(changed) == 1  # tool_hourly; recoveries keep their key (marked recovered)
    (before, after), = changed.items()
    assert "{tool_hourly}" in before and "PRIMARY KEY" in before and "PRIMARY KEY" not in after
    assert part_ddl(FailureProjection())[0] == FailureProjection.ddl[0]
    sums = tuple(AnalyticsProjection.sums)
    assert part_insert(UPSERT_HOURLY, sums) == (
        "INSERT INTO {tool_hourly} (tenant, hour, group_key, tool, executed_by, execs, "
        "failures) VALUES (?, ?, ?, ?, ?, ?, ?)")
    assert part_insert(UPSERT_HOURLY, ()) == UPSERT_HOURLY  # not a table of counts here
    context = ("INSERT INTO {projection_context} AS c (projection, stream, context) "
               "VALUES (?, ?, ?) ON CONFLICT (projection, stream) DO UPDATE SET context = 1")
    assert part_insert(context, sums) == context
