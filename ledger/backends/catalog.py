"""SQL shared by both backends for the stream catalog and schema migrations.

Statements are templates: ``?`` placeholders, and ``{streams}`` / ``{schema_table}``
/ ``{events}`` / ``{uuid}`` / ``{bigint}`` / ``{by_code_point}`` / ``{state}`` slots.
SQLite fills the slots with the plain names (``render_sqlite``); PostgreSQL fills them
with schema-qualified ``psycopg.sql.Identifier``s and turns ``?`` into ``%s``
(``postgres.py``). No user input ever reaches a template.

``{by_code_point}`` follows a text expression that orders rows: SQLite compares text
byte by byte (so by code point) already; PostgreSQL would use the database's collation,
which on most servers ignores case and punctuation at first, so it gets ``COLLATE
"C"``. Both backends list rows in one order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from ledger.backends.base import IdRange, StreamHead, StreamQuery

EVENTS_TABLE = "agentledger_events"
STREAMS_TABLE = "agentledger_streams"
SCHEMA_TABLE = "agentledger_schema"

STREAM_COLUMNS = (
    "stream_id", "kind", "tenant", "name", "last_seq", "head_hash", "status",
    "agent_owner", "first_ts", "last_ts",
)

CREATE_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS {schema_table} ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)

SELECT_SCHEMA_VERSION = "SELECT MAX(version) FROM {schema_table}"
INSERT_SCHEMA_VERSION = "INSERT INTO {schema_table} VALUES (?, ?, ?)"

# Migration 1 (after the events table, which the recorder creates).
CATALOG_DDL_V1 = (
    "CREATE TABLE IF NOT EXISTS {streams} ("
    "stream_id {uuid} PRIMARY KEY, kind TEXT NOT NULL, tenant TEXT NOT NULL, "
    "name TEXT NOT NULL, last_seq {bigint} NOT NULL, head_hash TEXT NOT NULL, "
    "status TEXT NOT NULL, agent_owner TEXT, first_ts TEXT, last_ts TEXT, "
    "UNIQUE (tenant, kind, name))",
    "CREATE INDEX IF NOT EXISTS agentledger_streams_by_time "
    "ON {streams} (tenant, kind, first_ts)",
)

UPSERT_STREAM = (
    "INSERT INTO {streams} ("
    + ", ".join(STREAM_COLUMNS)
    + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (stream_id) DO UPDATE SET last_seq = excluded.last_seq, "
    "head_hash = excluded.head_hash, status = excluded.status, "
    "agent_owner = excluded.agent_owner, first_ts = excluded.first_ts, "
    "last_ts = excluded.last_ts"
)

SELECT_STREAMS = "SELECT " + ", ".join(STREAM_COLUMNS) + " FROM {streams}"

READ_STREAM = (
    "SELECT originator_version, {state} FROM {events} WHERE originator_id = ? "
    "AND originator_version > ? AND originator_version <= ? ORDER BY originator_version"
)
"""A stream's ``(version, state)`` rows, as the driver builds them (``Backend.read_stream``).

``{state}`` is the stored state as bytes whatever was done to it behind the ledger's
back: on SQLite a state edited into TEXT comes as its UTF-8 bytes, and on either
backend a NULL comes as empty bytes; the readers then name the record as unreadable.
"""


SQLITE_SLOTS = {
    "streams": STREAMS_TABLE, "schema_table": SCHEMA_TABLE, "events": EVENTS_TABLE,
    "uuid": "TEXT", "bigint": "INTEGER", "by_code_point": "",
    "state": "COALESCE(CAST(state AS BLOB), X'')",
}


def render_sqlite(template: str) -> str:
    """A template with its slots filled for SQLite."""
    return template.format(**SQLITE_SLOTS)


def list_streams_sql(query: StreamQuery) -> tuple[str, list[Any]]:
    """SELECT statement and parameters for a catalog query."""
    sql = SELECT_STREAMS + " WHERE tenant = ? AND kind = ?"
    params: list[Any] = [query.tenant, query.kind]
    if query.status is not None:
        sql += " AND status = ?"
        params.append(query.status)
    if query.since is not None:
        sql += " AND last_ts >= ?"
        params.append(query.since)
    if query.until is not None:
        sql += " AND first_ts <= ?"
        params.append(query.until)
    sql += " ORDER BY first_ts, name{by_code_point}"
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    return sql, params


def head_params(head: StreamHead, stream_key: Any) -> tuple[Any, ...]:
    """Parameters of UPSERT_STREAM for one head (``stream_key`` as the backend stores ids)."""
    return (
        stream_key, head.kind, head.tenant, head.name, head.last_seq, head.head_hash,
        head.status, head.agent_owner, head.first_ts, head.last_ts,
    )


def head_from_row(row: Sequence[Any], stream_id: UUID) -> StreamHead:
    """A StreamHead from a row in STREAM_COLUMNS order."""
    # Positional (in field order): a third less time than by keyword, once per stream
    # for verify and listings.
    return StreamHead(stream_id, row[1], row[2], row[3], int(row[4]), row[5], row[6],
                      row[7], row[8], row[9])


def slice_bounds(id_range: IdRange, after: int, upto: int,
                 mark: str) -> tuple[list[str], list[UUID | int]]:
    """SQL conditions on the events table keeping the slice ``read_streams`` reads: the
    streams in ``id_range``, entries above ``after`` and up to ``upto``; and their
    parameters (ids as ``UUID``s, to convert)."""
    lo, hi = id_range
    where: list[str] = [f"notification_id > {mark}", f"notification_id <= {mark}",
                        f"originator_id >= {mark}"]
    params: list[UUID | int] = [after, upto, lo]
    if hi is not None:
        where, params = [*where, f"originator_id < {mark}"], [*params, hi]
    return where, params


def id_bounds(column: str, id_range: IdRange | None, mark: str) -> tuple[list[str], list[UUID]]:
    """SQL conditions keeping ``column`` inside ``id_range`` (``mark``: the driver's
    placeholder), and their parameters; each backend converts the ids as it stores them."""
    if id_range is None:
        return [], []
    lo, hi = id_range
    if hi is None:
        return [f"{column} >= {mark}"], [lo]
    return [f"{column} >= {mark}", f"{column} < {mark}"], [lo, hi]

