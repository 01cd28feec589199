"""PostgreSQL backend (psycopg 3): the ledger's store in one schema of a database.

It writes through ``LedgerPostgresRecorder`` (``postgres_recorder.py``: the library's
recorder, inserting with binary ``COPY``) and reads with its own queries, bulk reads
as binary ``COPY ... TO STDOUT``.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError
from eventsourcing.postgres import PostgresDatastore
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

from ledger.backends import catalog, postgres_scan
from ledger.backends.base import (
    SCHEMA_VERSION,
    Backend,
    IdRange,
    StreamHead,
    StreamQuery,
    StreamScan,
    version_bounds,
)
from ledger.backends.postgres_recorder import LedgerPostgresRecorder, pg_sql
from ledger.errors import SchemaVersionError, StoreError, UsageError
from ledger.redact import redact_url

_ADVISORY_LOCK = 7_355_608_001  # serialises concurrent migrations of one schema
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


_NAMED = ("dbname", "host", "port", "user", "password")  # what eventsourcing is given by name


def parse_url(url: str) -> dict[str, Any]:
    """Connection settings from ``postgresql://user:pw@host:port/db?schema=s&...``.

    Every other parameter libpq takes (``sslmode``, ``sslrootcert``,
    ``target_session_attrs``, ``application_name``, ...) is kept in ``extra`` and
    applies to every connection: dropping ``sslmode=verify-full`` would connect
    without checking the server's certificate."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a "[" with no "]"
        raise UsageError(f"invalid PostgreSQL URL {redact_url(url)!r}: {exc}") from None
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    if not _PLAIN_NAME.fullmatch(schema):  # eventsourcing names its types unquoted
        raise UsageError(f"invalid PostgreSQL URL {redact_url(url)!r}: schema {schema!r} must be "
                         "1-63 letters, digits and underscores, not starting with a digit")
    rest = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))  # libpq: no "+"
    try:
        info = conninfo_to_dict(rest)
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"invalid PostgreSQL URL {redact_url(url)!r}: {exc}") from None
    return {
        "dbname": info.get("dbname") or info.get("user") or "postgres",
        "host": info.get("host") or "localhost",
        "port": info.get("port") or 5432,
        "user": info.get("user") or "postgres",
        "password": info.get("password") or "",
        "schema": schema,
        "extra": {k: v for k, v in info.items() if k not in _NAMED},
    }


CONNECT_TIMEOUT = 5  # seconds to wait for a connection, as the library's default


class PostgresBackend(Backend):
    """Ledger store in a PostgreSQL schema."""

    recorder: LedgerPostgresRecorder
    how_to_write = "connect to the primary server as a login that may write"

    def __init__(self, url: str) -> None:
        self.url = url
        settings = parse_url(url)
        self.read_only = _check_reachable(url, settings)
        try:
            self.datastore = PostgresDatastore(
                settings["dbname"], settings["host"], settings["port"], settings["user"],
                settings["password"], schema=settings["schema"], originator_id_type="uuid",
                connect_timeout=CONNECT_TIMEOUT, pool_size=2, max_overflow=4, lock_timeout=30,
                idle_in_transaction_session_timeout=300,
            )
            if settings["extra"]:  # the pool's conninfo, under the named settings
                self.datastore.pool.conninfo = make_conninfo("", **settings["extra"])
            self.recorder = LedgerPostgresRecorder(self.datastore)
        except PersistenceError as exc:
            raise StoreError(f"cannot open PostgreSQL store {redact_url(url)}: {exc}") from exc
        self.schema = self.datastore.schema
        self._read_stream = self._sql(catalog.READ_STREAM)

    def _sql(self, template: str) -> sql.Composed:
        return pg_sql(template, self.schema)

    @contextmanager
    def _txn(self, *, commit: bool) -> Iterator[psycopg.Cursor[Any]]:
        try:
            with self.datastore.get_connection() as conn, conn.transaction(
                force_rollback=not commit
            ):
                yield conn.cursor(row_factory=tuple_row)
        except PersistenceError as exc:
            raise StoreError(f"PostgreSQL store {redact_url(self.url)}: {exc}") from exc

    def schema_version(self) -> int:
        with self._txn(commit=False) as c:
            c.execute("SELECT to_regclass(%s)", (f'"{self.schema}".{catalog.SCHEMA_TABLE}',))
            row = c.fetchone()
            if row is None or row[0] is None:
                return 0
            c.execute(self._sql(catalog.SELECT_SCHEMA_VERSION))
            found = c.fetchone()
            return int(found[0] or 0) if found else 0

    def migrate(self) -> list[int]:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store has schema version {current}; this AgentLedger understands up to "
                f"{SCHEMA_VERSION}: upgrade agentledger"
            )
        if current == SCHEMA_VERSION:
            return []
        self.writable(f"bring its schema from version {current} to {SCHEMA_VERSION}")
        try:  # one migration at a time, from its first statement: concurrent CREATE ...
            with self.datastore.get_connection() as conn:  # IF NOT EXISTS of one name fail
                conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK,))
                try:
                    return self._migrate_locked()
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK,))
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"creating tables failed: {exc}") from exc

    def _migrate_locked(self) -> list[int]:
        with self._txn(commit=True) as c:
            c.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)))
        self.recorder.create_table()
        with self._txn(commit=True) as c:
            c.execute(self._sql(catalog.CREATE_SCHEMA_TABLE))
            c.execute(self._sql(catalog.SELECT_SCHEMA_VERSION))
            row = c.fetchone()
            if row is not None and row[0] is not None and int(row[0]) >= 1:
                return []
            for statement in catalog.CATALOG_DDL_V1:
                c.execute(self._sql(statement))
            c.execute(
                self._sql(catalog.INSERT_SCHEMA_VERSION),
                (1, "events, stream catalog", datetime.now(UTC).isoformat()),
            )
        return [1]

    def load_heads(self, stream_ids: Sequence[UUID]) -> dict[UUID, StreamHead]:
        with self._txn(commit=False) as c:
            return self.recorder.read_heads(c, stream_ids)

    @property
    def label(self) -> str:
        return f"PostgreSQL store {redact_url(self.url)}"

    def iter_streams(self, query: StreamQuery) -> Generator[StreamHead, None, None]:
        template, params = catalog.list_streams_sql(query)
        with self._txn(commit=False) as c:
            rows = c.stream(self._sql(template), params)  # the server sends rows as asked
            try:
                for r in rows:
                    yield catalog.head_from_row(r, r[0])
            finally:  # a stream left part-way is cancelled before the transaction ends
                rows.close()  # type: ignore[attr-defined]

    def scan_streams(self, stream_ids: Sequence[UUID] | None = None, *,
                     id_range: IdRange | None = None) -> StreamScan:
        try:
            with self.datastore.get_connection() as conn, conn.transaction():
                yield from self._scan(conn, stream_ids, id_range)
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"{self.label}: {exc}") from exc

    @contextmanager
    def snapshot_scan(
        self, tenant: str | None = None, *, id_range: IdRange | None = None,
        stream_ids: Sequence[UUID] | None = None,
    ) -> Iterator[tuple[list[StreamHead], StreamScan]]:
        try:
            with self.datastore.get_connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                query, params = self._catalog_query(tenant, id_range, stream_ids)
                heads = [catalog.head_from_row(r, r[0]) for r in
                         conn.cursor(row_factory=tuple_row).execute(query, params).fetchall()]
                if stream_ids is None and tenant is not None:
                    stream_ids = [h.stream_id for h in heads]
                scan = self._scan(conn, stream_ids, id_range)
                try:
                    yield heads, scan
                finally:  # a COPY left sending holds the connection the transaction ends
                    scan.close()
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"{self.label}: {exc}") from exc

    def _scan(self, conn: Any, stream_ids: Sequence[UUID] | None,
              id_range: IdRange | None) -> postgres_scan.Scan:
        table = sql.Identifier(self.schema, catalog.EVENTS_TABLE)
        return postgres_scan.scan(conn, table, stream_ids, id_range)

    def _catalog_query(self, tenant: str | None, id_range: IdRange | None,
                       stream_ids: Sequence[UUID] | None = None) -> tuple[sql.Composed, list[Any]]:
        query = self._sql(catalog.SELECT_STREAMS)
        where, lo_hi = catalog.id_bounds("stream_id", id_range, "%s")
        params: list[Any] = list(lo_hi)
        if tenant is not None:
            where, params = [*where, "tenant = %s"], [*params, tenant]
        if stream_ids is not None:
            where, params = [*where, "stream_id = ANY(%s)"], [*params, list(stream_ids)]
        if where:
            query += sql.SQL(" WHERE " + " AND ".join(where))
        return query + sql.SQL(" ORDER BY stream_id"), params

    def iter_catalog(self, tenant: str | None = None, *,
                     id_range: IdRange | None = None) -> Iterator[StreamHead]:
        query, params = self._catalog_query(tenant, id_range)
        with self._txn(commit=False) as c:
            c.execute(query, params)
            rows = c.fetchall()
        for r in rows:
            yield catalog.head_from_row(r, r[0])

    def read_log(self, after: int, limit: int, max_bytes: int | None = None
                 ) -> list[tuple[int, str, str, int, bytes]]:
        query, params = self._log_query(["notification_id > %s"], [after], limit, max_bytes)
        return self._log_rows(query, params)

    def read_streams(self, id_range: IdRange, after: int, upto: int, limit: int,
                     max_bytes: int | None = None) -> list[tuple[int, str, str, int, bytes]]:
        where, bounds = catalog.slice_bounds(id_range, after, upto, "%s")
        query, params = self._log_query(where, bounds, limit, max_bytes)
        return self._log_rows(query, params, plan=_SLICE_PLAN)

    def _log_query(self, where: Sequence[str], params: Sequence[Any], limit: int,
                   max_bytes: int | None) -> tuple[sql.Composed, list[Any]]:
        """Log entries ``where`` holds, in id order: ``limit`` of them, and with
        ``max_bytes`` those up to the one whose state brings their total to it (a running
        sum in the server: a page of large events is cut there, not in the client)."""
        table = sql.Identifier(self.schema, catalog.EVENTS_TABLE)
        columns = ("notification_id, topic, replace(originator_id::text, '-', ''), "
                   "originator_version, state")  # the key as 32 hex digits: no UUID per row
        page = " FROM {} WHERE " + " AND ".join(where) + " ORDER BY notification_id LIMIT %s"
        if max_bytes is None:
            return sql.SQL("SELECT " + columns + page).format(table), [*params, limit]
        size = "coalesce(octet_length(state), 0)"
        query = sql.SQL(
            "SELECT " + columns + " FROM (SELECT *, sum(" + size + ") OVER (ORDER BY "
            "notification_id ROWS UNBOUNDED PRECEDING) - " + size + " AS held" + page
            + ") AS page WHERE held < %s ORDER BY notification_id").format(table)
        return query, [*params, limit, max_bytes]

    def _log_rows(self, query: sql.Composed, params: Sequence[Any], *,
                  plan: str | None = None) -> list[tuple[int, str, str, int, bytes]]:
        """Rows ``(notification_id, topic, key, version, state)`` of a query, fetched
        in binary (``plan``: settings for it, in a transaction). Half the client CPU
        of a binary ``COPY ... TO STDOUT``, which psycopg reads row by row."""
        try:
            with (self.datastore.get_connection() as conn,
                  conn.transaction() if plan else nullcontext(),
                  conn.cursor(binary=True, row_factory=tuple_row) as cur):
                if plan:
                    cur.execute(plan)
                cur.execute(query, params)
                return cur.fetchall()
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"PostgreSQL store {redact_url(self.url)}: {exc}") from exc

    def read_stream(self, stream_id: UUID, *, gt: int | None = None,
                    lte: int | None = None) -> list[tuple[int, bytes]]:
        try:  # one statement on an autocommit connection: one round trip
            with self.datastore.get_connection() as conn, conn.cursor(
                    row_factory=tuple_row, binary=True) as cur:
                cur.execute(self._read_stream, (stream_id, *version_bounds(gt, lte)))
                return cur.fetchall()
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"PostgreSQL store {redact_url(self.url)}: {exc}") from exc

    def read_state(self, stream_id: UUID, version: int) -> bytes | None:
        query = sql.SQL(
            "SELECT COALESCE(state, ''::bytea) FROM {} "  # NULL: see select_events_statement
            "WHERE originator_id = %s AND originator_version = %s"
        ).format(sql.Identifier(self.schema, catalog.EVENTS_TABLE))
        try:  # one statement on an autocommit connection: one round trip
            with self.datastore.get_connection() as conn:
                row = conn.cursor(row_factory=tuple_row).execute(
                    query, (stream_id, version)).fetchone()
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"PostgreSQL store {redact_url(self.url)}: {exc}") from exc
        return None if row is None else bytes(row[0])

    def read_states(self, stream_ids: Sequence[UUID], version: int) -> dict[UUID, bytes]:
        query = sql.SQL(
            "SELECT originator_id, COALESCE(state, ''::bytea) FROM {} "
            "WHERE originator_id = ANY(%s) AND originator_version = %s"
        ).format(sql.Identifier(self.schema, catalog.EVENTS_TABLE))
        ids, found = list(stream_ids), dict[UUID, bytes]()
        try:
            with self.datastore.get_connection() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                for i in range(0, len(ids), STATES_AT_ONCE):
                    cur.execute(query, (ids[i:i + STATES_AT_ONCE], version))
                    found.update((sid, bytes(state)) for sid, state in cur.fetchall())
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"PostgreSQL store {redact_url(self.url)}: {exc}") from exc
        return found

    def last_notification_id(self) -> int:
        query = sql.SQL("SELECT COALESCE(MAX(notification_id), 0) FROM {}").format(
            sql.Identifier(self.schema, catalog.EVENTS_TABLE))
        with self._txn(commit=False) as c:
            c.execute(query)
            row = c.fetchone()
            return int(row[0]) if row else 0

    def close(self) -> None:
        self.datastore.close()

    def check_connections(self) -> None:
        self.datastore.pool.check()  # tests each idle connection, replacing the broken ones


STATES_AT_ONCE = 5000  # stream ids a query of ``read_states``

_SLICE_PLAN = "SET LOCAL enable_sort = off"
"""How a part of a shared rebuild reads its streams' entries: along the log's index.

The entries of a range of stream ids, in log order, a page at a time. With fresh
statistics PostgreSQL reads the log's index and filters by stream id (50-85 ms a page
of 50,000 at 1M events); without them (right after a large ingest, before autovacuum
has analyzed the table) it read the id range by the primary key and sorted it for
every page: 0.6-2.0 s a page.
"""


def _check_reachable(url: str, settings: dict[str, Any]) -> str | None:
    """Connect once, so an unreachable server, a missing database or a refused login
    fails at once in the server's own words (the pool would retry for its whole
    timeout, then say only that it got no connection). Return why the store is
    read-only to this login (``Backend.read_only``), or None."""
    events = sql.Identifier(settings["schema"], catalog.EVENTS_TABLE).as_string()
    params = {"connect_timeout": CONNECT_TIMEOUT, **settings["extra"],
              **{k: settings[k] for k in _NAMED}}
    try:
        with psycopg.connect(**params) as conn:
            row = conn.execute(_READ_ONLY, (events, events)).fetchone()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())  # libpq's message spans lines and tabs
        raise StoreError(f"cannot open PostgreSQL store {redact_url(url)}: {reason}") from None
    standby, reads_only, may_insert = row or (False, False, None)
    if standby:
        return "a standby server, which only reads"
    if reads_only:
        return "default_transaction_read_only is on for this login"
    if may_insert is False:
        return f"role {settings['user']} may not insert into {events}"
    return None


_READ_ONLY = (  # a standby; read-only sessions; the events table there and not writable
    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on', "
    "CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE has_table_privilege(%s, 'INSERT') END"
)
