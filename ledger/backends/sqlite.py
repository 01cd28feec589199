"""SQLite backend: the embedded default.

``LedgerSQLiteRecorder`` is eventsourcing's ``SQLiteApplicationRecorder`` with a
stricter table: the notification id is an explicit ``INTEGER PRIMARY KEY
AUTOINCREMENT`` column instead of the implicit rowid, so positions are never
reused after a delete and never renumbered by ``VACUUM`` (projections track them).
It passes the library's own recorder test suites (``tests/test_library_suites.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    Notification,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteTransaction,
)

from ledger.backends import catalog
from ledger.backends.base import (
    SCHEMA_VERSION,
    Backend,
    IdRange,
    LockedReads,
    SharedAppend,
    StreamHead,
    StreamQuery,
    StreamScan,
    version_bounds,
)
from ledger.backends.sqlite_file import ConnectionPool, read_only_name, use_wal
from ledger.errors import SchemaVersionError, StoreError

_CHUNK = 500


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    """Application recorder with a stable notification id and catalog upserts."""

    def __init__(
        self, datastore: SQLiteDatastore, events_table_name: str = catalog.EVENTS_TABLE
    ) -> None:
        super().__init__(datastore, events_table_name)
        table = self.events_table_name
        self.insert_events_statement = (
            "INSERT INTO " + table
            + " (originator_id, originator_version, topic, state) VALUES (?,?,?,?)"
        )
        self.select_events_statement = (
            "SELECT originator_id, originator_version, topic, state FROM " + table
            + " WHERE originator_id=? "
        )
        self._select_notifications = (
            "SELECT notification_id, originator_id, originator_version, topic, state FROM "
            + table
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS " + self.events_table_name + " ("
            "notification_id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "originator_id TEXT NOT NULL, originator_version INTEGER NOT NULL, "
            "topic TEXT NOT NULL, state BLOB NOT NULL, "
            "UNIQUE (originator_id, originator_version))"
        ]

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The library's insert in a transaction that holds the write lock from its start,
        so that heads read in it (``shared``) are the newest."""
        with self.datastore.get_connection(commit=True) as conn, \
                _WriteTransaction(conn, commit=True) as curs, curs:
            return self._insert_events(curs, stored_events, **kwargs)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        heads: Sequence[StreamHead] = kwargs.get("heads", ())
        shared: SharedAppend | None = kwargs.get("shared")
        if shared is not None:
            reads = LockedReads(partial(_heads, c), partial(self._states, c))
            more, more_heads = shared(reads)
            stored_events, heads = [*stored_events, *more], [*heads, *more_heads]
        params = [
            (_key(s.originator_id), s.originator_version, s.topic, s.state)
            for s in stored_events
        ]
        c.executemany(self.insert_events_statement, params)
        ids: list[int] = []
        if params:  # read before the catalog upsert, which moves last_insert_rowid()
            c.execute("SELECT last_insert_rowid()")
            last = int(c.fetchone()[0])
            ids = list(range(last - len(params) + 1, last + 1))
        if heads:
            rows = [catalog.head_params(h, h.stream_id.hex) for h in heads]
            c.executemany(_sql(catalog.UPSERT_STREAM), rows)
        return ids

    def _states(self, c: SQLiteCursor, stream_id: UUID, after: int) -> list[tuple[int, bytes]]:
        """A stream's ``(version, state)`` after ``after``, read with ``c``."""
        c.execute(f"SELECT originator_version, state FROM {self.events_table_name} "
                  "WHERE originator_id = ? AND originator_version > ? "
                  "ORDER BY originator_version", (_key(stream_id), after))
        return [(int(v), _as_bytes(state)) for v, state in c.fetchall()]

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        clauses: list[str] = []
        params: list[Any] = []
        if start is not None:
            clauses.append("notification_id >= ?" if inclusive_of_start else "notification_id > ?")
            params.append(start)
        if stop is not None:
            clauses.append("notification_id <= ?")
            params.append(stop)
        if topics:
            clauses.append("topic IN (" + ",".join("?" * len(topics)) + ")")
            params.extend(topics)
        sql = self._select_notifications
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY notification_id LIMIT ?"
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            return [
                Notification(
                    id=row[0],
                    originator_id=self.convert_originator_id(row[1]),
                    originator_version=row[2],
                    topic=row[3],
                    state=row[4],
                )
                for row in c.fetchall()
            ]


class _WriteTransaction(SQLiteTransaction):
    """The library's transaction, begun with ``BEGIN IMMEDIATE`` (see :func:`immediate`)."""

    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


def _heads(c: SQLiteCursor, stream_ids: Sequence[UUID]) -> dict[UUID, StreamHead]:
    """Catalog rows of the given streams that exist, read with ``c``."""
    heads: dict[UUID, StreamHead] = {}
    for i in range(0, len(stream_ids), _CHUNK):
        chunk = [s.hex for s in stream_ids[i : i + _CHUNK]]
        c.execute(_sql(catalog.SELECT_STREAMS) + " WHERE stream_id IN ("
                  + ",".join("?" * len(chunk)) + ")", chunk)
        for row in c.fetchall():
            sid = UUID(row[0])
            heads[sid] = catalog.head_from_row(row, sid)
    return heads


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


def _as_bytes(value: Any) -> bytes:
    """Stored state as bytes (a row edited by hand may have become TEXT)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


_SELECT_LOG = (  # CAST: a state edited by hand into TEXT still comes back as its bytes
    "SELECT notification_id, topic, originator_id, originator_version, CAST(state AS BLOB) "
    "FROM " + catalog.EVENTS_TABLE)


def _sql(template: str) -> str:
    return catalog.render_sqlite(template)


def _key(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def _id_chunks(stream_ids: Sequence[UUID] | None) -> list[list[str] | None]:
    """Stream keys in order, ``_CHUNK`` a statement; ``[None]`` (no condition on the
    ids) when no ids are given."""
    if stream_ids is None:
        return [None]
    keys = sorted(s.hex for s in stream_ids)
    return [keys[i : i + _CHUNK] for i in range(0, len(keys), _CHUNK)]


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
            c.execute(_sql(catalog.SELECT_SCHEMA_VERSION))
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
        c.execute(_sql(catalog.CREATE_SCHEMA_TABLE))
        c.execute(_sql(catalog.SELECT_SCHEMA_VERSION))
        if int(c.fetchone()[0] or 0) >= 1:
            return []
        for statement in self.recorder.create_table_statements:
            c.execute(statement)
        for statement in catalog.CATALOG_DDL_V1:
            c.execute(_sql(statement))
        c.execute(
            _sql(catalog.INSERT_SCHEMA_VERSION),
            (1, "events, stream catalog", datetime.now(UTC).isoformat()),
        )
        return [1]

    def load_heads(self, stream_ids: Sequence[UUID]) -> dict[UUID, StreamHead]:
        with self._txn(commit=False) as c:
            return _heads(c, stream_ids)

    @property
    def label(self) -> str:
        return f"SQLite store {self.url}"

    def iter_streams(self, query: StreamQuery) -> Generator[StreamHead, None, None]:
        sql, params = catalog.list_streams_sql(query)
        with self._txn(commit=False) as c:
            c.execute(_sql(sql), params)
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
            sql = _sql(catalog.SELECT_STREAMS) + (
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
            cursor.execute(_sql(catalog.READ_STREAM), (stream_id.hex, *version_bounds(gt, lte)))
            return cursor.fetchall()

    def read_state(self, stream_id: UUID, version: int) -> bytes | None:
        with self._txn(commit=False) as c:
            c.execute("SELECT state FROM " + catalog.EVENTS_TABLE
                      + " WHERE originator_id = ? AND originator_version = ?",
                      (stream_id.hex, version))
            row = c.fetchone()
            return None if row is None else _as_bytes(row[0])

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
