"""The projection machinery on both backends: exactly once, resumable, rebuildable."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from viewdump import dump

from ledger.errors import UsageError
from ledger.ingest import ingest
from ledger.payloads import is_failure_point
from ledger.store import Store
from ledger.workload import demo_events
from projections import Projector, queries
from projections.runner import NAMES
from projections.sql import view_db


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


@pytest.fixture
def demo_file(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "demo.jsonl", demo_events())


def test_incremental_equals_rebuild_and_catch_up(store: Store, demo_file: str,
                                                 tmp_path: Path) -> None:
    projector = Projector(store, batch_size=97).attach()
    ingest(store, [demo_file], batch_size=300, reject_file=str(tmp_path / "r.jsonl"))
    incremental = dump(store)
    assert incremental["failures"]
    projector.rebuild()
    assert dump(store) == incremental
    late = Projector(store, batch_size=1000)
    late.rebuild()
    assert dump(store) == incremental


def test_ingest_in_processes_keeps_attached_views_exact(
    store: Store, demo_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With projections attached, this process ingests a smaller share of the streams
    and keeps the views caught up between its batches while spawned processes ingest
    the rest: the views equal a rebuild, and were updated during the ingest."""
    import rawdb

    from ledger import ingest_processes

    monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", 1)
    monkeypatch.setattr(ingest_processes, "FOLLOW_INTERVAL", 0.0)  # small input: catch up
    monkeypatch.setattr(ingest_processes, "_TICK_BYTES", 1)  # at every line this one reads
    Projector(store, batch_size=97).attach()
    seen: list[int] = []
    store.add_commit_listener(lambda: seen.append(rawdb.count(store.url)))
    summary = ingest(store, [demo_file], batch_size=50, workers=3,
                     reject_file=str(tmp_path / "r.jsonl"))
    assert summary.accepted > 0
    assert seen[0] < seen[-1] == rawdb.count(store.url), "caught up while the parts ingested"
    assert all(s.lag == 0 for s in Projector(store).status())
    incremental = dump(store)
    assert incremental["failures"]
    Projector(store).rebuild()
    assert dump(store) == incremental


def test_failure_index_holds_every_failure_point(store: Store, demo_file: str,
                                                 tmp_path: Path) -> None:
    Projector(store).attach()
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    events = demo_events()
    for tenant in {e.get("tenant", "default") for e in events}:
        expected = sorted((e["trace_id"], e["seq"]) for e in events
                          if e.get("tenant", "default") == tenant
                          and is_failure_point(e["event"], e["payload"]))
        got = sorted((r.trace_id, r.seq) for r in queries.failures(store, tenant))
        assert got == expected


def test_status_reports_positions_and_lag(store: Store, demo_file: str, tmp_path: Path) -> None:
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    projector = Projector(store)
    before = {s.name: s for s in projector.status()}
    assert set(before) == set(NAMES)
    assert all(s.position == 0 and s.lag == s.log_head > 0 for s in before.values())
    assert projector.catch_up() == before["memory"].log_head
    after = projector.status()
    assert all(s.lag == 0 and not s.rebuild_needed for s in after)
    assert projector.catch_up() == 0  # nothing new: nothing applied twice


def test_two_projectors_never_apply_an_entry_twice(store: Store, demo_file: str,
                                                   tmp_path: Path) -> None:
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    first, second = Projector(store, batch_size=200), Projector(store, batch_size=350)
    first.catch_up()
    reference = dump(store)
    second.catch_up()  # its positions are stale at first: it must notice, not re-apply
    assert dump(store) == reference


def test_a_version_change_rebuilds_that_projection(store: Store, demo_file: str,
                                                   tmp_path: Path) -> None:
    Projector(store).attach()
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    reference = dump(store)
    db = view_db(store.backend)
    with db.transaction() as cur:
        db.execute(cur, "UPDATE {projection_state} SET version = 0 WHERE name = 'failures'")
    projector = Projector(store)
    assert [s.name for s in projector.status() if s.rebuild_needed] == []  # rebuilt on open
    assert projector.catch_up() > 0
    assert dump(store) == reference


def test_unknown_projection_name_is_a_usage_error(store: Store) -> None:
    with pytest.raises(UsageError, match="unknown projection 'nope'"):
        Projector(store, ["nope"])


def test_an_older_table_layout_is_rebuilt_not_migrated_in_place(store: Store, demo_file: str,
                                                                tmp_path: Path) -> None:
    Projector(store).attach()
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    reference = dump(store)
    db = view_db(store.backend)
    with db.transaction() as cur:  # what analytics v1 looked like: no args_digest column
        db.execute(cur, "DROP TABLE {tool_calls}")
        db.execute(cur, "CREATE TABLE {tool_calls} (tenant TEXT, trace_id TEXT, seq {bigint})")
        db.execute(cur, "UPDATE {projection_state} SET version = 1 WHERE name = 'analytics'")
    Projector(store).catch_up()
    assert dump(store) == reference


def test_sqlite_view_transactions_erase_lightly_and_restore_the_connection(
        sqlite_url: str) -> None:
    with Store.open(sqlite_url) as store:
        db = view_db(store.backend)

        def pragmas(cur: Any) -> tuple[int, int]:
            return tuple(cur.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[return-value]
                         for name in ("secure_delete", "synchronous"))

        with db.read() as cur:
            before = pragmas(cur)
        with db.transaction() as cur:
            assert pragmas(cur) == (2, 1)  # FAST; NORMAL
        with db.read() as cur:  # the ledger's transactions keep the connection's settings
            assert pragmas(cur) == before


def test_catching_up_keeps_the_planners_statistics_of_the_views(
        store: Store, demo_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite has no statistics until asked: a projector takes approximate ones as its
    catch-ups double what it applied. PostgreSQL's autovacuum keeps its own."""
    from projections import runner

    monkeypatch.setattr(runner, "STATISTICS_AFTER", 50)
    projector = Projector(store, batch_size=97).attach()
    ingest(store, [demo_file], batch_size=30, reject_file=str(tmp_path / "r.jsonl"))
    assert projector._counted >= 50 and projector._counted * 2 > projector._applied
    db = view_db(store.backend)
    if db.dialect == "sqlite":
        analyzed = {r[0] for r in db.query("SELECT tbl FROM sqlite_stat1")}
        assert {"agentledger_failures", "agentledger_tool_calls",
                "agentledger_write_attribution"} <= analyzed
        with db.read() as cur:  # the connection's setting is put back
            assert cur.execute("PRAGMA analysis_limit").fetchone()[0] == 0
    else:
        assert db.query("SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = ? AND "
                        "last_analyze IS NOT NULL", (db.schema,))[0][0] == 0  # type: ignore[attr-defined]


def test_a_rebuild_leaves_planner_statistics_for_the_views(
        store: Store, demo_file: str, tmp_path: Path) -> None:
    """A rebuild loads the views, builds their query indexes, then takes statistics
    (approximate ones on SQLite), so the queries after it get good plans."""
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    Projector(store).rebuild()
    db = view_db(store.backend)
    views = {"agentledger_failures", "agentledger_tool_calls", "agentledger_memory_writes",
             "agentledger_write_attribution"}
    if db.dialect == "sqlite":
        assert views <= {r[0] for r in db.query("SELECT tbl FROM sqlite_stat1")}
        with db.read() as cur:  # the connection's setting is put back
            assert cur.execute("PRAGMA analysis_limit").fetchone()[0] == 0
    else:
        analyzed = db.query("SELECT relname FROM pg_stat_user_tables WHERE schemaname = ? "
                            "AND last_analyze IS NOT NULL", (db.schema,))  # type: ignore[attr-defined]
        assert views <= {r[0] for r in analyzed}


def test_upserts_give_the_same_views_however_they_are_sent(
        store: Store, demo_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL sends large upserts through a temporary table: the views equal those
    of upserts sent one statement a row (a rebuild), and counts added to rows in one
    call add up, also when two rows of the call share a key (sent one by one)."""
    from projections import sql
    from projections.analytics import UPSERT_HOURLY
    from projections.base import group_key

    monkeypatch.setattr(sql, "STAGED_UPSERT_ROWS", 1)
    Projector(store, batch_size=97).attach()
    ingest(store, [demo_file], batch_size=300, reject_file=str(tmp_path / "r.jsonl"))
    staged = dump(store)
    monkeypatch.setattr(sql, "STAGED_UPSERT_ROWS", 10**9)
    Projector(store).rebuild()
    assert dump(store) == staged

    monkeypatch.setattr(sql, "STAGED_UPSERT_ROWS", 1)
    db = view_db(store.backend)
    key = ("t", "2026-01-01T00", group_key("search", "agent-a"), "search", "agent-a")
    other = ("t", "2026-01-01T01", group_key("x", "y"), "x", "y")
    with db.transaction() as cur:
        db.executemany(cur, UPSERT_HOURLY, [(*key, 1, 0), (*other, 1, 1)])
        db.executemany(cur, UPSERT_HOURLY, [(*key, 2, 1), (*key, 4, 0)])  # a key twice
        db.executemany(cur, UPSERT_HOURLY, [(*key, 8, 0), (*other, 1, 0)])
    rows = db.query("SELECT hour, execs, failures FROM {tool_hourly} WHERE tenant = 't' "
                    "ORDER BY hour")
    assert [tuple(r) for r in rows] == [("2026-01-01T00", 15, 1), ("2026-01-01T01", 2, 1)]


@contextmanager
def _writing_the_views(url: str) -> Iterator[None]:
    """Another connection in an open transaction that writes the views: what an
    ingest's flush or a follower's batch holds while it runs."""
    if url.startswith("sqlite"):
        lite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")  # the store's write lock
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    import psycopg
    from rawdb import _pg_target

    conninfo, schema = _pg_target(url)
    with psycopg.connect(conninfo) as conn:
        conn.execute(f'LOCK TABLE "{schema}".agentledger_failures IN ROW EXCLUSIVE MODE')
        try:
            yield
        finally:
            conn.rollback()


def test_a_read_command_does_not_wait_for_a_writer_of_the_views(
        store: Store, demo_file: str, tmp_path: Path) -> None:
    """Views in place, a projector prepares nothing (``projections.in_place``): a read
    command answers while another connection's write transaction on the views is open.
    Before, its ``CREATE INDEX IF NOT EXISTS`` statements waited for that transaction."""
    from clirun import run_json

    Projector(store).attach()
    ingest(store, [demo_file], reject_file=str(tmp_path / "r.jsonl"))
    expected = run_json(store.url, "failures", "--tenant", "acme")
    answers: list[Any] = []
    with _writing_the_views(store.url):
        reader = threading.Thread(daemon=True, target=lambda: answers.append(
            run_json(store.url, "failures", "--tenant", "acme")))
        reader.start()
        reader.join(timeout=15)
        waited = reader.is_alive()
    reader.join()
    assert not waited and answers == [expected] and expected


def test_a_projector_still_makes_what_is_missing_from_the_views(store: Store) -> None:
    """An index left out (a rebuild killed before it built them), a table dropped, the
    tracking table gone: the next projector makes them again."""
    from projections.in_place import relations

    Projector(store).catch_up()
    db = view_db(store.backend)
    with db.read() as cur:
        before = relations(db, cur)
    for statement in ("DROP INDEX {}agentledger_failures_ts", "DROP TABLE {}agentledger_grants",
                      "DROP TABLE {}" + db.tracking_table):
        prefix = "" if db.dialect == "sqlite" else f'"{db.schema}".'  # type: ignore[attr-defined]
        with db.transaction() as cur:
            cur.execute(statement.format(prefix))
        with db.read() as cur:
            assert relations(db, cur) < before
        Projector(store).catch_up()
        with db.read() as cur:
            assert relations(db, cur) == before


def test_the_largest_attempts_the_contract_takes_are_projected(
        store: Store, tmp_path: Path) -> None:
    """Attempts up to 2^63-1 are stored and projected on both backends; one beyond is
    rejected, and the views keep up with the rest (such an event used to be stored, then
    stop every projection at it)."""
    most = 2**63 - 1
    def ev(trace: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"trace_id": trace, "seq": 1, "event": event, "ts": "2026-11-20T10:00:00Z",
                "agent_owner": "a", "executed_by": "a", "payload": payload}
    src = write_jsonl(tmp_path / "in.jsonl", [
        ev("t1", "TOOL_EXEC", {"tool": "x", "args": {}, "success": False, "attempt": most}),
        ev("t2", "CALLBACK_RETRY", {"tool": "x", "attempt": most}),
        ev("t3", "CALLBACK_RETRY", {"tool": "x", "attempt": most + 1}),
    ])
    Projector(store).attach()
    summary = ingest(store, [src], reject_file=str(tmp_path / "r.jsonl"))
    assert (summary.accepted, summary.rejected) == (2, 1)
    assert all(s.lag == 0 for s in Projector(store).status())
    db = view_db(store.backend)
    assert [tuple(r) for r in db.query("SELECT trace_id, attempt FROM {tool_calls}")] == [
        ("t1", most)]
    assert [tuple(r) for r in db.query("SELECT trace_id, attempt FROM {recoveries}")] == [
        ("t2", most)]
