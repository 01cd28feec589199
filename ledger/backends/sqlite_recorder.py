"""eventsourcing's SQLite application recorder, with a stricter table and the catalog.

``LedgerSQLiteRecorder`` is eventsourcing's ``SQLiteApplicationRecorder`` with a
stricter table: the notification id is an explicit ``INTEGER PRIMARY KEY
AUTOINCREMENT`` column instead of the implicit rowid, so positions are never
reused after a delete and never renumbered by ``VACUUM`` (projections track them).
Each insert upserts the stream catalog in the same transaction, which holds the
write lock from its start. It passes the library's own recorder test suites
(``tests/test_library_suites.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteTransaction,
)

from ledger.backends import catalog
from ledger.backends.base import LockedReads, SharedAppend, StreamHead

CHUNK = 500  # stream ids a statement


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
                WriteTransaction(conn, commit=True) as curs, curs:
            return self._insert_events(curs, stored_events, **kwargs)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        heads: Sequence[StreamHead] = kwargs.get("heads", ())
        shared: SharedAppend | None = kwargs.get("shared")
        if shared is not None:
            reads = LockedReads(partial(select_heads, c), partial(self._states, c))
            more, more_heads = shared(reads)
            stored_events, heads = [*stored_events, *more], [*heads, *more_heads]
        params = [
            (stream_key(s.originator_id), s.originator_version, s.topic, s.state)
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
            c.executemany(render_sql(catalog.UPSERT_STREAM), rows)
        return ids

    def _states(self, c: SQLiteCursor, stream_id: UUID, after: int) -> list[tuple[int, bytes]]:
        """A stream's ``(version, state)`` after ``after``, read with ``c``."""
        c.execute(f"SELECT originator_version, state FROM {self.events_table_name} "
                  "WHERE originator_id = ? AND originator_version > ? "
                  "ORDER BY originator_version", (stream_key(stream_id), after))
        return [(int(v), state_bytes(state)) for v, state in c.fetchall()]

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


class WriteTransaction(SQLiteTransaction):
    """The library's transaction, begun with ``BEGIN IMMEDIATE`` (see :func:`immediate`)."""

    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


def select_heads(c: SQLiteCursor, stream_ids: Sequence[UUID]) -> dict[UUID, StreamHead]:
    """Catalog rows of the given streams that exist, read with ``c``."""
    heads: dict[UUID, StreamHead] = {}
    for i in range(0, len(stream_ids), CHUNK):
        chunk = [s.hex for s in stream_ids[i : i + CHUNK]]
        c.execute(render_sql(catalog.SELECT_STREAMS) + " WHERE stream_id IN ("
                  + ",".join("?" * len(chunk)) + ")", chunk)
        for row in c.fetchall():
            sid = UUID(row[0])
            heads[sid] = catalog.head_from_row(row, sid)
    return heads


def state_bytes(value: Any) -> bytes:
    """Stored state as bytes (a row edited by hand may have become TEXT)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


def render_sql(template: str) -> str:
    return catalog.render_sqlite(template)


def stream_key(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id
