"""SQLite backend: the embedded default.

Writes go through ``LedgerSQLiteRecorder`` (``ledger.backends.sqlite_recorder``), the
library's recorder with a stricter table; reads use queries of their own, over a
pool of connections (``ledger.backends.sqlite_file``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from typing import Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore

from ledger.backends import catalog
from ledger.backends.base import (
    SCHEMA_VERSION,
    Backend,
    IdRange,
    StreamHead,
    StreamQuery,
    StreamScan,
    version_bounds,
)
from ledger.backends.sqlite_file import ConnectionPool, read_only_name, use_wal
from ledger.backends.sqlite_recorder import (
    CHUNK,
    LedgerSQLiteRecorder,
    render_sql,
    select_heads,
    state_bytes,
)
from ledger.errors import SchemaVersionError, StoreError


def _within(c: SQLiteCursor, max_bytes: int | None) -> list[Any]:
    """The query's rows, or with ``max_bytes`` those up to the one whose state (the last
    column) brings their total to it: SQLite reads a row only when it is asked for."""
    if max_bytes is None:
        return c.fetchall()  # type: ignore[no-any-return]
    rows, held = [], 0
    for row in c.sqlite_cursor:
        rows.append(row)
        held += len(row[-1])
        if held >= max_bytes:
            break
    return rows


_SELECT_LOG = (  # CAST: a state edited by hand into TEXT still comes back as its bytes
    "SELECT notification_id, topic, originator_id, originator_version, CAST(state AS BLOB) "
    "FROM " + catalog.EVENTS_TABLE)


def _id_chunks(stream_ids: Sequence[UUID] | None) -> list[list[str] | None]:
    """Stream keys in order, ``CHUNK`` a statement; ``[None]`` (no condition on the
    ids) when no ids are given."""
    if stream_ids is None:
        return [None]
    keys = sorted(s.hex for s in stream_ids)
    return [keys[i : i + CHUNK] for i in range(0, len(keys), CHUNK)]


@contextmanager
def immediate(cursor: sqlite3.Cursor) -> Iterator[sqlite3.Cursor]:
    """A write transaction that takes the write lock as it begins (``BEGIN IMMEDIATE``).

    A deferred one reads first; if another process commits before its first write, that
    write fails at once with "database is locked" (SQLite cannot move its snapshot
    forward), where this one waits for the lock like any writer.
    """
    cursor.execute("BEGIN IMMEDIATE")
    try:
        yield cursor
    except BaseException:
        if cursor.connection.in_transaction:  # SQLite may have rolled it back itself
            cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


class SQLiteBackend(Backend):
    """Ledger store in one SQLite file (WAL mode)."""

    recorder: LedgerSQLiteRecorder

    def __init__(self, path: str, *, url: str | None = None) -> None:
        self.url = url or f"sqlite:///{path}"
        self.path = path  # the file (or ":memory:" / a "file:" URI)
        name = path
        if (opened := read_only_name(path, self.url)) is not None:
            name, self.read_only = opened
        else:
            use_wal(path, self.url)
        self.datastore = SQLiteDatastore(db_name=name, originator_id_type="uuid")
        self.datastore.pool = ConnectionPool(db_name=name)  # the library's defaults
        self.recorder = LedgerSQLiteRecorder(self.datastore)

    @contextmanager
    def _txn(self, *, commit: bool) -> Iterator[SQLiteCursor]:
        try:
            with self.datastore.transaction(commit=commit) as c:
                yield c
        except PersistenceError as exc:
            raise StoreError(f"SQLite store {self.url}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.url}: {exc}") from exc

    def schema_version(self) -> int:
        with self._txn(commit=False) as c:
            c.execute("SELECT name FROM sqlite_master WHERE name = ?", (catalog.SCHEMA_TABLE,))
            if c.fetchone() is None:
                return 0
            c.execute(render_sql(catalog.SELECT_SCHEMA_VERSION))
            return int(c.fetchone()[0] or 0)

    def migrate(self) -> list[int]:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store {self.url} has schema version {current}; this AgentLedger "
                f"understands up to {SCHEMA_VERSION}: upgrade agentledger"
            )
        if current == SCHEMA_VERSION:
            return []
        self.writable(f"bring its schema from version {current} to {SCHEMA_VERSION}")
        try:  # a process migrating too: wait for it
            with self.datastore.get_connection(commit=True) as conn, \
                    immediate(conn.cursor().sqlite_cursor) as cursor:
                return self._migrate_locked(cursor)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.label}: {exc}") from exc

    def _migrate_locked(self, c: sqlite3.Cursor) -> list[int]:
        """The migrations not yet applied, under the write lock (checked again there:
        another process may have applied them while this one waited)."""
        c.execute(render_sql(catalog.CREATE_SCHEMA_TABLE))
        c.execute(render_sql(catalog.SELECT_SCHEMA_VERSION))
        if int(c.fetchone()[0] or 0) >= 1:
            return []
        for statement in self.recorder.create_table_statements:
            c.execute(statement)
        for statement in catalog.CATALOG_DDL_V1:
            c.execute(render_sql(statement))
        c.execute(
            render_sql(catalog.INSERT_SCHEMA_VERSION),
            (1, "events, stream catalog", datetime.now(UTC).isoformat()),
        )
        return [1]

    def load_heads(self, stream_ids: Sequence[UUID]) -> dict[UUID, StreamHead]:
        with self._txn(commit=False) as c:
            return select_heads(c, stream_ids)

    @property
    def label(self) -> str:
        return f"SQLite store {self.url}"

    def iter_streams(self, query: StreamQuery) -> Generator[StreamHead, None, None]:
        sql, params = catalog.list_streams_sql(query)
        with self._txn(commit=False) as c:
            c.execute(render_sql(sql), params)
            for r in c.sqlite_cursor:  # fetched in steps as iterated
                yield catalog.head_from_row(r, UUID(r[0]))

    def scan_streams(self, stream_ids: Sequence[UUID] | None = None, *,
                     id_range: IdRange | None = None) -> StreamScan:
        with self._txn(commit=False) as c:
            yield from self._scan(c, stream_ids, id_range)

    @contextmanager
    def snapshot_scan(
        self, tenant: str | None = None, *, id_range: IdRange | None = None,
        stream_ids: Sequence[UUID] | None = None,
    ) -> Iterator[tuple[list[StreamHead], StreamScan]]:
        with self._txn(commit=False) as c:  # one read transaction: one snapshot of the WAL
            heads = self._catalog(c, tenant, id_range, stream_ids)
            if stream_ids is None and tenant is not None:
                stream_ids = [h.stream_id for h in heads]
            yield heads, self._scan(c, stream_ids, id_range)

    def _scan(self, c: SQLiteCursor, stream_ids: Sequence[UUID] | None,
              id_range: IdRange | None) -> StreamScan:
        """scan_streams' rows, read in ``c``'s transaction."""
        sql = (  # CAST: a state edited by hand into TEXT still comes back as its bytes
            "SELECT originator_id, originator_version, notification_id, topic, "
            "CAST(state AS BLOB) FROM " + catalog.EVENTS_TABLE
        )
        bounds, lo_hi = catalog.id_bounds("originator_id", id_range, "?")
        bound_params: list[Any] = [u.hex for u in lo_hi]
        batches = _id_chunks(stream_ids)
        cursor = c.sqlite_cursor  # errors become StoreError in the caller's _txn
        for batch in batches:
            where = list(bounds)
            if batch is not None:
                where.append("originator_id IN (" + ",".join("?" * len(batch)) + ")")
            cursor.execute(sql + (" WHERE " + " AND ".join(where) if where else "")
                           + " ORDER BY originator_id, originator_version",
                           bound_params + (batch or []))
            for key, rows in groupby(cursor, itemgetter(0)):  # a row at a time, as read:
                yield UUID(key), rows  # no stream, nor thousands of rows, held whole

    def _catalog(self, c: SQLiteCursor, tenant: str | None, id_range: IdRange | None,
                 stream_ids: Sequence[UUID] | None = None) -> list[StreamHead]:
        where, lo_hi = catalog.id_bounds("stream_id", id_range, "?")
        params: list[Any] = [u.hex for u in lo_hi]
        if tenant is not None:
            where, params = [*where, "tenant = ?"], [*params, tenant]
        heads: list[StreamHead] = []
        for chunk in _id_chunks(stream_ids):
            clauses = where if chunk is None else [
                *where, "stream_id IN (" + ",".join("?" * len(chunk)) + ")"]
            sql = render_sql(catalog.SELECT_STREAMS) + (
                " WHERE " + " AND ".join(clauses) if clauses else "")
            c.execute(sql + " ORDER BY stream_id", params + (chunk or []))
            heads += [catalog.head_from_row(r, UUID(r[0])) for r in c.fetchall()]
        return heads

    def iter_catalog(self, tenant: str | None = None, *,
                     id_range: IdRange | None = None) -> Iterator[StreamHead]:
        with self._txn(commit=False) as c:
            heads = self._catalog(c, tenant, id_range)
        yield from heads

    def read_log(self, after: int, limit: int, max_bytes: int | None = None
                 ) -> list[tuple[int, str, str, int, bytes]]:
        with self._txn(commit=False) as c:
            c.execute(_SELECT_LOG + " WHERE notification_id > ? ORDER BY notification_id LIMIT ?",
                      (after, limit))
            return _within(c, max_bytes)

    def read_streams(self, id_range: IdRange, after: int, upto: int, limit: int,
                     max_bytes: int | None = None) -> list[tuple[int, str, str, int, bytes]]:
        where, bounds = catalog.slice_bounds(id_range, after, upto, "?")
        params = [p.hex if isinstance(p, UUID) else p for p in bounds]
        with self._txn(commit=False) as c:
            c.execute(_SELECT_LOG + " WHERE " + " AND ".join(where)
                      + " ORDER BY notification_id LIMIT ?", (*params, limit))
            return _within(c, max_bytes)

    def read_stream(self, stream_id: UUID, *, gt: int | None = None,
                    lte: int | None = None) -> list[tuple[int, bytes]]:
        with self._txn(commit=False) as c:
            cursor = c.sqlite_cursor  # this transaction's own: plain tuples, not Rows
            cursor.row_factory = None
            cursor.execute(render_sql(catalog.READ_STREAM),
                           (stream_id.hex, *version_bounds(gt, lte)))
            return cursor.fetchall()

    def read_state(self, stream_id: UUID, version: int) -> bytes | None:
        with self._txn(commit=False) as c:
            c.execute("SELECT state FROM " + catalog.EVENTS_TABLE
                      + " WHERE originator_id = ? AND originator_version = ?",
                      (stream_id.hex, version))
            row = c.fetchone()
            return None if row is None else state_bytes(row[0])

    def read_states(self, stream_ids: Sequence[UUID], version: int) -> dict[UUID, bytes]:
        found: dict[UUID, bytes] = {}
        with self._txn(commit=False) as c:
            for chunk in _id_chunks(stream_ids):
                keys = chunk or []  # ids are given: never None
                c.execute("SELECT originator_id, state FROM " + catalog.EVENTS_TABLE
                          + " WHERE originator_version = ? AND originator_id IN ("
                          + ",".join("?" * len(keys)) + ")", (version, *keys))
                found.update((UUID(k), state_bytes(state)) for k, state in c.fetchall())
        return found

    def last_notification_id(self) -> int:
        with self._txn(commit=False) as c:
            c.execute("SELECT MAX(notification_id) FROM " + catalog.EVENTS_TABLE)
            return int(c.fetchone()[0] or 0)

    def close(self) -> None:
        self.datastore.close()

    def check_connections(self) -> None:
        """Nothing to replace: a SQLite connection does not break when the file is busy."""

    def shrink_log(self) -> bool:
        """Copy the write-ahead log into the file without holding up writers; if all was
        copied, empty it once no one reads or writes (100 ms at most). False if busy."""
        if self.datastore.pool.is_sqlite_memory_mode:
            return True
        try:
            with self.datastore.get_connection(commit=True) as conn:
                cursor = conn.cursor().sqlite_cursor
                _, log, copied = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if copied < log:  # written meanwhile, or read from an older state
                    return False
                previous = cursor.execute("PRAGMA busy_timeout").fetchone()[0]
                cursor.execute("PRAGMA busy_timeout = 100")
                try:
                    busy = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    cursor.execute(f"PRAGMA busy_timeout = {int(previous)}")
                return not busy
        except sqlite3.Error as exc:
            raise StoreError(f"{self.label}: {exc}") from exc
