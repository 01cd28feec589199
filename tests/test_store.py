"""Backend conformance: the Backend interface behaves the same on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from ledger import chain
from ledger.backends.base import SCHEMA_VERSION, LockedReads, StreamHead, StreamQuery
from ledger.errors import ConcurrencyError, SchemaVersionError, UsageError
from ledger.store import Store, open_backend
from ledger.verify import id_ranges


def _head(tenant: str, name: str, n: int, **kw: object) -> StreamHead:
    return StreamHead(chain.trace_stream_id(tenant, name), "trace", tenant, name, n,
                      "sha256:" + "1" * 64, **kw)  # type: ignore[arg-type]


def _events(tenant: str, name: str, seqs: range) -> list[StoredEvent]:
    sid = chain.trace_stream_id(tenant, name)
    return [StoredEvent(sid, s, chain.EVENT_TOPIC, b'{"seq":%d}' % s) for s in seqs]


def test_migrate_is_idempotent(store: Store) -> None:
    """Opening a store twice applies no migration the second time."""
    assert store.backend.schema_version() == SCHEMA_VERSION
    assert store.backend.migrate() == []


def test_append_returns_the_notification_ids_it_stored(store: Store) -> None:
    """append() returns exactly the ids select_notifications reports for the new rows."""
    store.backend.append(_events("t", "a", range(1, 4)), [_head("t", "a", 3)])
    ids = store.backend.append(_events("t", "b", range(1, 4)), [_head("t", "b", 3)])
    listed = store.backend.recorder.select_notifications(start=None, limit=100)
    assert list(ids) == [n.id for n in listed][3:]


def test_append_at_an_existing_version_raises_concurrency_error(store: Store) -> None:
    """A second append at a stored (stream, version) fails and writes nothing."""
    store.backend.append(_events("t", "a", range(1, 3)), [_head("t", "a", 2)])
    with pytest.raises(ConcurrencyError):
        store.backend.append(_events("t", "a", range(2, 4)), [_head("t", "a", 3)])
    assert len(store.backend.read_stream(chain.trace_stream_id("t", "a"))) == 2
    assert store.backend.load_heads([chain.trace_stream_id("t", "a")]).popitem()[1].last_seq == 2


def test_shared_events_are_chained_on_heads_read_in_the_append(
    store: Store, store_url: str
) -> None:
    """``shared`` builds its events from heads read inside the append's transaction:
    it sees what another connection appended after the caller's last look (heads and
    stored states), its events follow the others (notification ids included), and
    alone it still writes."""
    shared_id = chain.findings_stream_id("t")
    seen: list[int] = []

    def one_more(reads: LockedReads) -> tuple[list[StoredEvent], list[StreamHead]]:
        head = reads.heads([shared_id]).get(shared_id)
        assert reads.states(shared_id, 0) == [(v, b'{"n":%d}' % (v - 1))
                                              for v in range(1, len(seen) + 1)]
        assert reads.states(shared_id, len(seen)) == []
        last = head.last_seq if head else 0
        seen.append(last)
        return ([StoredEvent(shared_id, last + 1, chain.FINDING_TOPIC, b'{"n":%d}' % last)],
                [StreamHead(shared_id, "findings", "t", "$findings", last + 1, "sha256:x")])

    with Store.open(store_url) as other:
        assert store.backend.load_heads([shared_id]) == {}  # the caller's last look
        other.backend.append([], [], shared=one_more)
        ids = store.backend.append(_events("t", "a", range(1, 3)), [_head("t", "a", 2)],
                                   shared=one_more)
    assert seen == [0, 1]
    assert [v for v, _ in store.backend.read_stream(shared_id)] == [1, 2]
    listed = store.backend.recorder.select_notifications(start=None, limit=100)
    assert [(n.originator_id, n.originator_version) for n in listed] == [
        (shared_id, 1), (chain.trace_stream_id("t", "a"), 1),
        (chain.trace_stream_id("t", "a"), 2), (shared_id, 2)]
    assert list(ids) == [n.id for n in listed][1:]
    assert store.backend.load_heads([shared_id])[shared_id].last_seq == 2


def test_catalog_columns_are_the_stream_heads_fields_in_order() -> None:
    """head_from_row builds a StreamHead from a catalog row by position."""
    from dataclasses import fields

    from ledger.backends import catalog

    assert tuple(f.name for f in fields(StreamHead)) == catalog.STREAM_COLUMNS


def test_catalog_head_is_upserted_with_the_events(store: Store) -> None:
    """The catalog row reflects the last append."""
    store.backend.append(_events("t", "a", range(1, 3)), [_head("t", "a", 2)])
    store.backend.append(_events("t", "a", range(3, 4)),
                         [_head("t", "a", 3, status="terminated")])
    head = store.backend.load_heads([chain.trace_stream_id("t", "a")])[
        chain.trace_stream_id("t", "a")]
    assert (head.last_seq, head.status) == (3, "terminated")


def test_read_state_returns_one_events_stored_bytes(store: Store) -> None:
    """read_state() is the stored state at (stream, version), None where there is none."""
    store.backend.append(_events("t", "a", range(1, 4)), [_head("t", "a", 3)])
    store.backend.append(_events("u", "a", range(1, 2)), [_head("u", "a", 1)])
    sid = chain.trace_stream_id("t", "a")
    assert store.backend.read_state(sid, 2) == b'{"seq":2}'
    assert store.backend.read_state(sid, 4) is None
    assert store.backend.read_state(chain.trace_stream_id("t", "b"), 1) is None
    assert [store.backend.read_state(sid, v) for v in (1, 2, 3)] == [
        state for _, state in store.backend.read_stream(sid)]


def test_read_states_gives_one_version_of_many_streams(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_states() is the state at one version of each given stream that has it,
    by stream id, over as many queries as the ids take; no other stream's."""
    import ledger.backends.postgres
    import ledger.backends.sqlite

    monkeypatch.setattr(ledger.backends.sqlite, "CHUNK", 2)
    monkeypatch.setattr(ledger.backends.postgres, "STATES_AT_ONCE", 2)
    for tenant, name, last in (("t", "a", 3), ("t", "b", 1), ("u", "a", 2), ("t", "c", 2)):
        store.backend.append(_events(tenant, name, range(1, last + 1)),
                             [_head(tenant, name, last)])
    ids = [chain.trace_stream_id(t, n) for t, n in (("t", "a"), ("t", "b"), ("u", "a"),
                                                    ("t", "missing"))]
    assert store.backend.read_states(ids, 2) == {ids[0]: b'{"seq":2}', ids[2]: b'{"seq":2}'}
    assert store.backend.read_states(ids, 1) == dict.fromkeys(ids[:3], b'{"seq":1}')
    assert store.backend.read_states(ids, 4) == {}
    assert store.backend.read_states([], 1) == {}


def test_read_stream_gives_the_versions_between_its_bounds(store: Store) -> None:
    """read_stream() is one stream's (version, state) pairs with gt < version <= lte, in
    version order, as plain tuples; another stream's rows never come with them."""
    store.backend.append(_events("t", "a", range(1, 6)), [_head("t", "a", 5)])
    store.backend.append(_events("t", "b", range(1, 3)), [_head("t", "b", 2)])
    sid = chain.trace_stream_id("t", "a")
    every = [(v, b'{"seq":%d}' % v) for v in range(1, 6)]
    rows = store.backend.read_stream(sid)
    assert rows == every
    assert all(type(v) is int and type(s) is bytes for v, s in rows)
    for gt in (None, 0, 1, 4, 5):
        for lte in (None, 0, 1, 3, 5, 9):
            wanted = [r for r in every if (gt is None or r[0] > gt)
                      and (lte is None or r[0] <= lte)]
            assert store.backend.read_stream(sid, gt=gt, lte=lte) == wanted, (gt, lte)
    assert store.backend.read_stream(chain.trace_stream_id("t", "c")) == []


def test_scan_streams_gives_each_stream_by_id_with_rows_in_version_order(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_streams() yields every stream once, by stream id, its rows in version order;
    ids ranges split the streams without loss or overlap, and so does the catalog."""
    import ledger.backends.postgres_scan
    import ledger.backends.sqlite

    monkeypatch.setattr(ledger.backends.sqlite, "CHUNK", 2)  # given ids: several queries
    monkeypatch.setattr(ledger.backends.postgres_scan, "SCAN_IDS", 2)
    names = [f"trace-{i}" for i in range(12)]
    for name in names:  # interleaved appends: log order is not stream order
        store.backend.append(_events("t", name, range(1, 3)), [_head("t", name, 2)])
    for name in reversed(names):
        store.backend.append(_events("t", name, range(3, 4)), [_head("t", name, 3)])
    store.backend.append(_events("u", "other", range(1, 2)), [_head("u", "other", 1)])
    scanned = [(sid, list(rows)) for sid, rows in store.backend.scan_streams()]
    sids = [sid for sid, _ in scanned]
    assert sids == sorted(sids) and len(sids) == 13
    for sid, rows in scanned:
        assert [r[1] for r in rows] == list(range(1, len(rows) + 1))
        assert [r[4] for r in rows] == [state for _, state in store.backend.read_stream(sid)]
        assert [r[3] for r in rows] == [chain.EVENT_TOPIC] * len(rows)
        nids = [r[2] for r in rows]
        assert nids == sorted(nids)
    wanted = [chain.trace_stream_id("t", "trace-3"), chain.trace_stream_id("u", "other"),
              chain.trace_stream_id("t", "trace-7"), chain.trace_stream_id("t", "missing")]
    assert [sid for sid, _ in store.backend.scan_streams(wanted)] == sorted(wanted[:3])

    ranges = id_ranges(5)
    parts = [[sid for sid, _ in store.backend.scan_streams(id_range=r)] for r in ranges]
    assert [sid for part in parts for sid in part] == sids
    for (lo, hi), part in zip(ranges, parts, strict=True):
        assert all(lo <= sid and (hi is None or sid < hi) for sid in part)
    heads = [[h.stream_id for h in store.backend.iter_catalog(id_range=r)] for r in ranges]
    assert heads == parts
    only_t = [h.stream_id for r in ranges for h in store.backend.iter_catalog("t", id_range=r)]
    assert only_t == [sid for sid in sids if sid != chain.trace_stream_id("u", "other")]
    assert [row.version for row in store.backend.iter_rows(wanted[:1])] == [1, 2, 3]


def test_scan_streams_reads_a_long_stream_whole_and_in_version_order(store: Store) -> None:
    """A stream longer than the rows a PostgreSQL scan sends in one message comes whole,
    in version order, however its appends interleaved with another stream's."""
    for first in range(1, 201, 7):
        batch = range(first, min(first + 7, 201))
        store.backend.append(_events("t", "long", batch), [_head("t", "long", batch[-1])])
        store.backend.append(_events("t", f"short-{first}", range(1, 2)),
                             [_head("t", f"short-{first}", 1)])
    sid = chain.trace_stream_id("t", "long")
    stored = [state for _, state in store.backend.read_stream(sid)]
    for rows in ({s: list(rows) for s, rows in store.backend.scan_streams()}[sid],
                 {s: list(rows) for s, rows in store.backend.scan_streams([sid])}[sid]):
        assert [r[1] for r in rows] == list(range(1, 201))
        assert [r[4] for r in rows] == stored
        assert [r[2] for r in rows] == sorted(r[2] for r in rows)
    with store.backend.snapshot_scan("t") as (_, streams):
        assert [len(list(rows)) for s, rows in streams if s == sid] == [200]


@pytest.mark.parametrize("leave", ["break", "raise", "close"])
def test_a_scan_left_part_way_gives_the_store_back(store: Store, leave: str) -> None:
    """Leaving a snapshot scan before its last stream (a caller's break, an error such
    as a full disk while exporting) or closing a scan_streams() early ends the read:
    the store answers the next call. On PostgreSQL a COPY still sending held the
    connection, and leaving the snapshot's transaction waited for it forever."""
    import threading

    for name in ("a", "b", "c"):
        store.backend.append(_events("t", name, range(1, 80)), [_head("t", name, 79)])
    done: list[object] = []

    def leave_part_way() -> None:
        try:
            with store.backend.snapshot_scan() as (_, streams):
                for _sid in streams:
                    if leave == "raise":
                        raise OSError("No space left on device")
                    break
        except OSError:
            pass
        scan = store.backend.scan_streams()
        next(scan)
        if leave == "close":
            scan.close()
        del scan
        done.append(len(list(store.backend.scan_streams())))

    worker = threading.Thread(target=leave_part_way, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the store never answered after a scan was left"
    assert done == [3]


@pytest.mark.parametrize("too_big", [["a"], ["c"], ["a", "d"]])
@pytest.mark.parametrize("scope", ["all", "ids"])
def test_a_postgres_scan_goes_on_row_by_row_past_a_group_the_server_cannot_send(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch, too_big: list[str],
        scope: str) -> None:
    """A group of rows bigger than a server can put in one message (over 1 GiB) fails
    with program_limit_exceeded; the scan then reads on row by row, from the stream it
    was reading: every stream comes once, whole. The limit is reached here by a function
    that raises the server's error for the streams named (not by a gigabyte of rows).
    Streams are read in the order of their ids, not of their names."""
    import psycopg
    from psycopg import sql
    from rawdb import _pg_target

    import ledger.backends.postgres_scan as pg_scan

    names = ["a", "b", "c", "d", "e"]
    with Store.open(postgres_url) as store:
        for name in names:
            store.backend.append(_events("t", name, range(1, 71)), [_head("t", name, 70)])
        expected = {sid: [(r[1], r[2], r[3], r[4]) for r in rows]
                    for sid, rows in store.backend.scan_streams()}
        conninfo, schema = _pg_target(postgres_url)
        ids = sql.SQL(", ").join(sql.Literal(str(chain.trace_stream_id("t", n)))
                                 for n in too_big)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL(
                "CREATE FUNCTION {}(id uuid, state bytea) RETURNS bytea LANGUAGE plpgsql AS "
                "$$ BEGIN IF id IN ({}) THEN RAISE EXCEPTION 'array size "
                "exceeds the maximum allowed' USING ERRCODE = 'program_limit_exceeded'; "
                "END IF; RETURN state; END $$").format(
                    sql.Identifier(schema, "too_big"), ids))
            with pytest.raises(psycopg.errors.ProgramLimitExceeded):  # as a group fails
                conn.execute(sql.SQL("SELECT array_agg({}(originator_id, state)) FROM {} "
                                     "GROUP BY originator_id").format(
                    sql.Identifier(schema, "too_big"),
                    sql.Identifier(schema, pg_scan.catalog.EVENTS_TABLE)))
        monkeypatch.setattr(pg_scan, "GROUPED_SCAN", pg_scan.GROUPED_SCAN.replace(
            "array_agg(state)", f'array_agg("{schema}".too_big(originator_id, state))'))
        wanted = sorted(expected) if scope == "ids" else None
        scanned = {sid: [(r[1], r[2], r[3], r[4]) for r in rows]
                   for sid, rows in store.backend.scan_streams(wanted)}
        assert scanned == expected and list(scanned) == sorted(expected)
        with store.backend.snapshot_scan(stream_ids=wanted) as (heads, streams):  # read-only
            snapshot = {sid: [(r[1], r[2], r[3], r[4]) for r in rows] for sid, rows in streams}
        assert snapshot == expected and len(heads) == len(names)


def test_read_streams_pages_a_range_of_streams_in_log_order(store: Store) -> None:
    """read_streams() gives the entries of the streams in an id range, up to a head and
    after a position, in notification order, like read_log() filtered by stream; the
    ranges of id_ranges() share the log out without loss or overlap."""
    for name in [f"trace-{i}" for i in range(12)]:  # interleaved: log order is not
        store.backend.append(_events("t", name, range(1, 3)), [_head("t", name, 2)])
    for name in [f"trace-{i}" for i in reversed(range(12))]:  # stream order
        store.backend.append(_events("t", name, range(3, 4)), [_head("t", name, 3)])
    log = store.backend.read_log(0, 1000)
    head = log[-5][0]  # entries past the head are left out
    shared = []
    for lo, hi in id_ranges(3):
        part, after = [], 0
        while rows := store.backend.read_streams((lo, hi), after, head, 4):  # small pages
            assert len(rows) <= 4
            part += [tuple(r) for r in rows]
            after = rows[-1][0]
        assert [r[0] for r in part] == sorted(r[0] for r in part)
        assert all(lo.hex <= r[2] and (hi is None or r[2] < hi.hex) for r in part)
        shared += part
    assert sorted(shared) == [tuple(r) for r in log if r[0] <= head]


def _sized(tenant: str, name: str, sizes: list[int]) -> list[StoredEvent]:
    sid = chain.trace_stream_id(tenant, name)
    return [StoredEvent(sid, seq, chain.EVENT_TOPIC, b"x" * size)
            for seq, size in enumerate(sizes, 1)]


def test_a_page_of_the_log_ends_where_its_states_reach_max_bytes(store: Store) -> None:
    """With max_bytes, read_log() and read_streams() give the entries up to the one that
    brings their states' bytes to it (always one at least; limit still applies): a page
    of large events holds few of them, and paging on loses none."""
    sizes = [10, 500, 20, 30, 40, 2000, 5, 5, 5, 5]
    store.backend.append(_sized("t", "a", sizes), [_head("t", "a", len(sizes))])
    log = store.backend.read_log(0, 1000)
    assert [len(r[4]) for r in log] == sizes
    pages = {}
    for max_bytes in (1, 30, 520, 600, 10**6):
        for read in (lambda after, limit, mb: store.backend.read_log(after, limit, mb),
                     lambda after, limit, mb: store.backend.read_streams(
                         (chain.trace_stream_id("t", "a"), None), after, log[-1][0], limit, mb)):
            found, after = [], 0
            while rows := read(after, 4, max_bytes):
                found.append([len(r[4]) for r in rows])
                after = rows[-1][0]
            assert [size for page in found for size in page] == sizes
            pages[max_bytes] = found
    assert pages[1] == [[size] for size in sizes]
    assert pages[30] == [[10, 500], [20, 30], [40], [2000], [5, 5, 5, 5]]
    assert pages[520] == [[10, 500, 20], [30, 40, 2000], [5, 5, 5, 5]]
    assert pages[600] == [[10, 500, 20, 30], [40, 2000], [5, 5, 5, 5]]
    assert pages[10**6] == [[10, 500, 20, 30], [40, 2000, 5, 5], [5, 5]]  # the limit: 4


def test_list_streams_filters_by_tenant_status_and_time(store: Store) -> None:
    """list_streams never crosses tenants and applies status/since/until."""
    for tenant, name, status, first, last in [
        ("acme", "a", "active", "2026-11-01T00:00:00.000000Z", "2026-11-02T00:00:00.000000Z"),
        ("acme", "b", "terminated", "2026-11-05T00:00:00.000000Z", "2026-11-06T00:00:00.000000Z"),
        ("globex", "a", "active", "2026-11-01T00:00:00.000000Z", "2026-11-02T00:00:00.000000Z"),
    ]:
        store.backend.append(_events(tenant, name, range(1, 2)),
                             [_head(tenant, name, 1, status=status, first_ts=first, last_ts=last)])
    names = lambda **kw: [h.name for h in store.backend.list_streams(StreamQuery(**kw))]  # noqa: E731
    assert names(tenant="acme") == ["a", "b"]
    assert names(tenant="acme", status="terminated") == ["b"]
    assert names(tenant="acme", since="2026-11-03T00:00:00.000000Z") == ["b"]
    assert names(tenant="acme", until="2026-11-03T00:00:00.000000Z") == ["a"]
    assert names(tenant="globex") == ["a"]


def test_a_store_newer_than_this_code_is_refused(store_url: str) -> None:
    """Opening a store with a schema version we do not know raises SchemaVersionError."""
    backend = open_backend(store_url)
    try:
        backend.migrate()
        from ledger.backends import catalog

        if store_url.startswith("sqlite"):
            with backend.datastore.transaction(commit=True) as c:  # type: ignore[attr-defined]
                c.execute(catalog.render_sqlite(catalog.INSERT_SCHEMA_VERSION),
                          (99, "future", "2030-01-01"))
        else:
            from ledger.backends.postgres import pg_sql

            with backend.datastore.transaction(commit=True) as c:  # type: ignore[attr-defined]
                c.execute(pg_sql(catalog.INSERT_SCHEMA_VERSION, backend.schema),  # type: ignore[attr-defined]
                          (99, "future", "2030-01-01"))
    finally:
        backend.close()
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        Store.open(store_url)


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://", "nonsense"])
def test_unsupported_store_url_is_a_usage_error(url: str) -> None:
    """A URL that names no supported backend raises UsageError."""
    with pytest.raises(UsageError):
        open_backend(url)


def _pragma(store: Store, name: str) -> object:
    with store.backend.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
        c.execute(f"PRAGMA {name}")
        return c.fetchone()[0]


def test_new_sqlite_files_get_large_pages_and_checkpoint_less_often(tmp_path: Path) -> None:
    """A new SQLite store file gets PAGE_SIZE pages, and every connection lets its
    write-ahead log grow to WAL_CHECKPOINT_BYTES before a commit copies it into the file
    (an ingest's batches each paid a checkpoint with SQLite's 1,000 pages); a file made
    with another page size keeps it, with the same log size in its pages; an in-memory
    store has no log."""
    from ledger.backends.sqlite_file import PAGE_SIZE, WAL_CHECKPOINT_BYTES

    assert PAGE_SIZE != 4096
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        assert _pragma(store, "page_size") == PAGE_SIZE
        assert _pragma(store, "wal_autocheckpoint") == WAL_CHECKPOINT_BYTES // PAGE_SIZE
        assert _pragma(store, "journal_mode") == "wal"
    with closing(sqlite3.connect(tmp_path / "old.db")) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE made_before (x)")
    with Store.open(f"sqlite:///{tmp_path}/old.db") as old:
        assert _pragma(old, "page_size") == 4096
        assert _pragma(old, "wal_autocheckpoint") == WAL_CHECKPOINT_BYTES // 4096
        assert _pragma(old, "journal_mode") == "wal"
    with Store.open("sqlite:///:memory:") as memory:
        assert _pragma(memory, "wal_autocheckpoint") == 1000


def test_shrink_log_gives_back_the_logs_space_unless_others_use_the_store(
        store: Store, store_url: str) -> None:
    """``shrink_log`` on an idle store succeeds, and writes nothing. On SQLite, with
    another connection open (so closing does not remove the log), it empties the
    write-ahead log file that appends grew; while that connection reads (a state the
    log holds, or an older one, so that not all of it can be copied), it answers False
    at once, the log as it was, and succeeds once the read has ended. The data is all
    still there."""
    for n in range(20):
        store.backend.append(_events("t", f"s{n}", range(1, 201)),
                             [_head("t", f"s{n}", 200)])
    head = store.backend.last_notification_id()
    if not store_url.startswith("sqlite"):
        assert store.backend.shrink_log()
        assert store.backend.last_notification_id() == head
        return
    wal = Path(store.backend.path + "-wal")  # type: ignore[attr-defined]
    with closing(sqlite3.connect(store.backend.path, isolation_level=None)) as other:  # type: ignore[attr-defined]
        other.execute("BEGIN")
        assert other.execute("SELECT COUNT(*) FROM agentledger_events").fetchone()[0] == head
        before = wal.stat().st_size
        assert before > 0
        assert not store.backend.shrink_log()  # the reader still uses the log
        assert wal.stat().st_size == before
        store.backend.append(_events("t", "late", range(1, 201)), [_head("t", "late", 200)])
        head += 200
        assert not store.backend.shrink_log()  # and holds an older state than the log's
        other.execute("COMMIT")
        assert store.backend.shrink_log()
        assert wal.stat().st_size == 0
        assert other.execute("SELECT COUNT(*) FROM agentledger_events").fetchone()[0] == head
    assert store.backend.last_notification_id() == head
    assert store.backend.shrink_log()  # nothing to give back: still done


def test_a_new_trace_is_owned_by_its_first_events_owner(store: Store, tmp_path: Path) -> None:
    """The catalog's agent_owner of a trace comes from its first event, not a later one."""
    import orjson

    from ledger.ingest import ingest
    from ledger.reader import list_traces

    lines = [orjson.dumps({"trace_id": "t", "seq": n, "event": "EXEC_NEXT",
                           "ts": "2026-11-20T10:00:00Z", "agent_owner": owner,
                           "executed_by": owner, "payload": {}})
             for n, owner in ((1, "planner"), (2, "writer"))]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    ingest(store, [str(source)], reject_file=str(tmp_path / "r.jsonl"))
    assert [t.agent_owner for t in list_traces(store, "default")] == ["planner"]


@pytest.mark.parametrize("scope", ["all", "tenant", "range", "ids"])
def test_snapshot_scan_does_not_see_what_writers_commit_meanwhile(
        store: Store, scope: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog rows and the stream rows of snapshot_scan() come from one snapshot:
    another writer's appends inside the block (to a scanned stream, and a new stream)
    show in neither, however the streams are chosen, even over several queries."""
    import ledger.backends.postgres_scan
    import ledger.backends.sqlite

    monkeypatch.setattr(ledger.backends.sqlite, "CHUNK", 1)
    monkeypatch.setattr(ledger.backends.postgres_scan, "SCAN_IDS", 1)
    for name in ("a", "b"):
        store.backend.append(_events("t", name, range(1, 3)), [_head("t", name, 2)])
    ids = [chain.trace_stream_id("t", name) for name in ("a", "b")]
    kwargs: dict[str, Any] = {"all": {}, "tenant": {"tenant": "t"},
                              "range": {"id_range": (min(ids), None)},
                              "ids": {"stream_ids": ids}}[scope]
    with Store.open(store.url, migrate=False) as other, \
            store.backend.snapshot_scan(**kwargs) as (heads, streams):
        for name in ("a", "b"):
            other.backend.append(_events("t", name, range(3, 4)), [_head("t", name, 3)])
        other.backend.append(_events("t", "new", range(1, 2)), [_head("t", "new", 1)])
        scanned = {sid: [r[1] for r in rows] for sid, rows in streams}
    wanted = sorted(ids)  # the range starts at the lower id
    assert [h.stream_id for h in heads] == wanted and {h.last_seq for h in heads} == {2}
    assert scanned == {sid: [1, 2] for sid in wanted}
    assert chain.trace_stream_id("t", "new") not in scanned  # committed after the snapshot
