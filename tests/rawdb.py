"""Direct database access for tests: read and alter a store behind the ledger's back.

Given a store URL, statements run against the SQLite file (``sqlite3``) or the
PostgreSQL schema named by ``?schema=`` (``psycopg``). Statements are templates
with ``?`` placeholders and ``{events}`` / ``{streams}`` slots for the two ledger
tables; on PostgreSQL the slots are schema-qualified ``psycopg.sql.Identifier``s.
Stream ids are passed as :class:`uuid.UUID` and converted to what each backend
stores (hex text on SQLite, ``uuid`` on PostgreSQL).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import psycopg
from psycopg import sql

EVENTS = "agentledger_events"
STREAMS = "agentledger_streams"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the events table."""

    notification_id: int
    stream_id: UUID
    version: int
    topic: str
    state: bytes


def _sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite://")
    return path[1:] if path.startswith("/") else path


def _pg_target(url: str) -> tuple[str, str]:
    """The connection URL without ``?schema=`` and the schema name (default ``public``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    return urlunsplit(parts._replace(query=urlencode(query))), schema


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def key(url: str, stream_id: UUID) -> Any:
    """A stream id as the backend stores it."""
    return stream_id if is_postgres(url) else stream_id.hex


def execute(
    url: str, template: str, params: Sequence[Any] = (), **columns: str
) -> list[tuple[Any, ...]]:
    """Run one statement in its own committed transaction; return any rows it yields.

    ``columns`` fill further ``{slot}``s with quoted column names.
    """
    if is_postgres(url):
        conninfo, schema = _pg_target(url)
        query = sql.SQL(template.replace("?", "%s")).format(
            events=sql.Identifier(schema, EVENTS), streams=sql.Identifier(schema, STREAMS),
            **{slot: sql.Identifier(name) for slot, name in columns.items()},
        )
        with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
    lite = sqlite3.connect(_sqlite_path(url), timeout=30)
    try:
        with lite:
            quoted = {slot: '"' + name.replace('"', '""') + '"' for slot, name in columns.items()}
            statement = template.format(events=EVENTS, streams=STREAMS, **quoted)
            return lite.execute(statement, params).fetchall()
    finally:
        lite.close()


def execute_views(url: str, template: str, params: Sequence[Any] = ()) -> int:
    """Run one statement over view tables (each ``{name}`` slot: the view table
    ``agentledger_<name>``) in its own committed transaction; return its row count."""
    names = {slot: "agentledger_" + slot for slot in re.findall(r"(?<!\{)\{(\w+)\}(?!\})",
                                                                 template)}
    if is_postgres(url):
        conninfo, schema = _pg_target(url)
        query = sql.SQL(template.replace("?", "%s")).format(
            **{slot: sql.Identifier(schema, name) for slot, name in names.items()})
        with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.rowcount
    lite = sqlite3.connect(_sqlite_path(url), timeout=30)
    try:
        with lite:
            return lite.execute(template.format(**names), params).rowcount
    finally:
        lite.close()


def _row(r: tuple[Any, ...]) -> Row:
    sid = r[1] if isinstance(r[1], UUID) else UUID(r[1])
    state = r[4] if isinstance(r[4], bytes) else bytes(r[4])
    return Row(int(r[0]), sid, int(r[2]), r[3], state)


def rows(url: str, stream_id: UUID | None = None) -> list[Row]:
    """Every events-table row (or one stream's), by notification id."""
    base = "SELECT notification_id, originator_id, originator_version, topic, state FROM {events}"
    if stream_id is None:
        found = execute(url, base + " ORDER BY notification_id")
    else:
        found = execute(url, base + " WHERE originator_id = ? ORDER BY notification_id",
                        (key(url, stream_id),))
    return [_row(r) for r in found]


def catalog(url: str) -> list[tuple[Any, ...]]:
    """Every stream-catalog row, by stream id (ids as strings)."""
    found = execute(url, "SELECT stream_id, kind, tenant, name, last_seq, head_hash, status, "
                         "agent_owner, first_ts, last_ts FROM {streams}")
    return sorted((str(r[0]).replace("-", ""), *r[1:]) for r in found)


def dump(url: str) -> tuple[list[Row], list[tuple[Any, ...]]]:
    """Everything the ledger stores: event rows and catalog rows."""
    return rows(url), catalog(url)


def count(url: str) -> int:
    """How many rows the events table holds."""
    [(n,)] = execute(url, "SELECT COUNT(*) FROM {events}")
    return int(n)


def get_state(url: str, stream_id: UUID, version: int) -> bytes:
    [(state,)] = execute(
        url, "SELECT state FROM {events} WHERE originator_id = ? AND originator_version = ?",
        (key(url, stream_id), version))
    return state if isinstance(state, bytes) else bytes(state)


def set_state(url: str, stream_id: UUID, version: int, state: bytes) -> None:
    execute(url, "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?",
            (state, key(url, stream_id), version))


def delete_event(url: str, stream_id: UUID, version: int) -> None:
    execute(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?",
            (key(url, stream_id), version))


def swap_states(url: str, stream_id: UUID, a: int, b: int) -> None:
    """Exchange the stored bytes of two rows of a stream."""
    state_a, state_b = get_state(url, stream_id, a), get_state(url, stream_id, b)
    set_state(url, stream_id, a, state_b)
    set_state(url, stream_id, b, state_a)


def swap_notification_ids(url: str, stream_id: UUID, a: int, b: int) -> None:
    """Exchange the notification ids (log positions) of two rows of a stream."""
    by_version = {r.version: r.notification_id for r in rows(url, stream_id)}
    update = ("UPDATE {events} SET notification_id = ? "
              "WHERE originator_id = ? AND originator_version = ?")
    sid = key(url, stream_id)
    execute(url, update, (-1, sid, a))
    execute(url, update, (by_version[a], sid, b))
    execute(url, update, (by_version[b], sid, a))


def set_catalog(url: str, stream_id: UUID, column: str, value: Any) -> None:
    """Overwrite one column of a stream's catalog row."""
    execute(url, "UPDATE {streams} SET {column} = ? WHERE stream_id = ?",
            (value, key(url, stream_id)), column=column)
