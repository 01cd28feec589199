"""One way to run view SQL on either backend.

Statements are templates with ``?`` placeholders and ``{table}`` slots naming view
tables (``{memory_writes}``, ``{tracking}``, ...). SQLite fills a slot with the
table's name; PostgreSQL with the schema-qualified identifier, and turns ``?`` into
``%s``. Column types use ``{bigint}``. No user input ever reaches a template.

Text compares by code point on both backends: SQLite compares bytes, and PostgreSQL
creates every ``TEXT`` column of a view table ``COLLATE "C"``. With the database's
collation (on most servers case-insensitive first, punctuation ignored) the same query
would list rows that tie on time in another order than on SQLite, and its indexes
would sort and compare more slowly.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, cast

from eventsourcing.persistence import PersistenceError

from ledger.backends.base import Backend
from ledger.errors import StoreError

PREFIX = "agentledger_"
VIEW_TABLES = (
    "memory_writes", "failures", "failure_hourly", "write_attribution", "grants",
    "tool_calls", "tool_hourly", "recoveries", "unknown_callbacks", "findings",
    "projection_context", "projection_state", "unreadable_entries",
)
PG_TRACKING_TABLE = PREFIX + "tracking"
_PREPARE_LOCK_CLASS = 7_355_609  # advisory lock (class, hashtext(schema)): views prepared


class Cursor(Protocol):
    """What view code needs of a cursor (sqlite3 and psycopg both have it)."""

    rowcount: int

    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: Any, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class ViewDB:
    """The view tables of one store, and transactions over them."""

    dialect: str
    backend: Backend
    tracking: Any  # the library's SQLite or PostgreSQL TrackingRecorder
    tracking_table: str  # its table's name

    def render(self, template: str) -> Any:
        raise NotImplementedError

    def create_tracking_table(self) -> None:
        """Create the library's tracking table if it is missing.

        The library records the table's creation as a migration, and two processes
        creating it at once make one of them fail: that one tries again (by then the
        other's migration is recorded, and it is a no-op)."""
        with self.errors():
            for attempt in range(3):
                try:
                    self.tracking.create_table()
                    return
                except PersistenceError:
                    if attempt == 2:
                        raise
                    time.sleep(0.1)

    def errors(self) -> AbstractContextManager[None]:
        """The driver's and the library's errors in the block, as a StoreError."""
        raise NotImplementedError

    def preparing(self) -> AbstractContextManager[None]:
        """Held while a projector creates or resets the views (SQLite's transactions
        already take turns: nothing to hold there)."""
        return nullcontext()

    def transaction(self) -> AbstractContextManager[Cursor]:
        """A write transaction: committed when the block ends without an error.

        View transactions may trade durability (never atomicity) for speed: views are
        derived, and their tracking position rolls back with them.
        """
        raise NotImplementedError

    def execute(self, cursor: Cursor, template: str, params: Sequence[Any] = ()) -> Cursor:
        cursor.execute(self.render(template), params)
        return cursor

    def executemany(self, cursor: Cursor, template: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cursor.executemany(self.render(template), rows)

    def query(self, template: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read and return its rows as tuples."""
        with self.read() as cursor:
            cursor.execute(self.render(template), params)
            return [tuple(r) for r in cursor.fetchall()]

    def read(self) -> AbstractContextManager[Cursor]:
        """A read-only transaction (rolled back)."""
        raise NotImplementedError

    def refresh_statistics(self, tables: Sequence[str]) -> None:
        """Give the query planner current statistics of these view tables, cheaply.

        Nothing to do on PostgreSQL, whose autovacuum analyzes tables as they grow.
        """

    def outdated(self, cursor: Cursor, tables: Sequence[str]) -> set[str]:
        """Those of these view tables made with an older column layout: their projection
        is rebuilt. SQLite's never are (its text always compares byte by byte)."""
        return set()


def check_readable(db: ViewDB, projections: Sequence[Any], *, any_version: bool = False
                   ) -> None:
    """On a store this process may not write, where views can be neither made nor
    rebuilt: raise UsageError unless each projection's views were built by its version
    (``any_version``: by any version)."""
    try:
        built = dict(db.query("SELECT name, version FROM {projection_state}"))
    except StoreError:  # no views at all
        built = {}
    missing = [p.name for p in projections
               if p.name not in built or (not any_version and built[p.name] != p.version)]
    if missing:
        db.backend.writable(f"build the views of {', '.join(missing)}")


class SQLiteViewDB(ViewDB):
    dialect = "sqlite"
    tracking_table = "tracking"

    def __init__(self, backend: Backend, *, scratch: bool = False) -> None:
        from eventsourcing.sqlite import SQLiteTrackingRecorder

        self.backend = backend
        self.synchronous = "OFF" if scratch else "NORMAL"
        self.datastore = backend.datastore  # type: ignore[attr-defined]
        self.tracking = SQLiteTrackingRecorder(self.datastore)

    def render(self, template: str) -> str:
        return _render_sqlite(template)

    def transaction(self) -> AbstractContextManager[Cursor]:
        self.backend.writable("write its views")
        return self._txn(commit=True)

    def read(self) -> AbstractContextManager[Cursor]:
        return self._txn(commit=False)

    def refresh_statistics(self, tables: Sequence[str]) -> None:
        """An approximate ``ANALYZE`` (``analysis_limit``): 6 ms for every view of a
        1M-event store, against 0.2 s, and the same query plans."""
        with self.transaction() as cur:
            cur.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
            try:
                for table in tables:
                    cur.execute(self.render("ANALYZE {" + table + "}"))
            finally:
                cur.execute("PRAGMA analysis_limit = 0")

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except (PersistenceError, sqlite3.Error) as exc:
            raise StoreError(f"SQLite views {self.backend.url}: {exc}") from exc

    @contextmanager
    def _txn(self, *, commit: bool) -> Iterator[Cursor]:
        from ledger.backends.sqlite import immediate

        with self.errors(), self.datastore.get_connection(commit=commit) as conn:
            if not commit:
                with conn.transaction(commit=False) as c:
                    yield c.sqlite_cursor
                return
            # synchronous=NORMAL for this commit only: in WAL mode a power loss can
            # then undo the latest view commits, never half of one (their tracking
            # position goes with them) and never a ledger commit, which keeps the
            # connection's own setting and syncs the log up to and including itself.
            pragma = conn.cursor()
            previous = _pragmas(pragma)
            pragma.execute(f"PRAGMA synchronous = {self.synchronous}")
            pragma.execute(f"PRAGMA secure_delete = {VIEW_SECURE_DELETE}")
            try:
                with immediate(conn.cursor().sqlite_cursor) as cursor:
                    yield cast(Cursor, cursor)
            finally:
                for name, value in previous.items():
                    pragma.execute(f"PRAGMA {name} = {value}")


ANALYSIS_LIMIT = 1000  # rows of each index an approximate ANALYZE looks at
VIEW_SECURE_DELETE = "FAST"
"""``secure_delete`` for transactions on the views (and a shared rebuild's merge).

Python's SQLite here is built with it on: every page a DROP or DELETE frees is
overwritten with zeros. Dropping the views of a 1M-event store took 1.26 s that way
and 0.06 s with FAST, and a rebuild drops them all. Views are derived from the
ledger, which keeps every byte they were built from, so erasing them hides nothing;
FAST still zeroes deleted rows inside pages that are written anyway. The ledger's
own transactions keep the connection's setting.
"""


def _pragmas(cursor: Any) -> dict[str, str]:
    """The connection's settings a view transaction changes, to put back after it."""
    values = {}
    for name in ("synchronous", "secure_delete"):
        cursor.execute(f"PRAGMA {name}")
        values[name] = str(cursor.fetchone()[0])
    if values["secure_delete"] == "2":  # reads as 2, but "2" would set it on
        values["secure_delete"] = "FAST"
    return values


class PostgresViewDB(ViewDB):
    dialect = "postgres"
    tracking_table = PG_TRACKING_TABLE

    def __init__(self, backend: Backend, *, scratch: bool = False) -> None:
        from eventsourcing.postgres import PostgresTrackingRecorder

        self.backend = backend
        self.unlogged = scratch
        self.datastore = backend.datastore  # type: ignore[attr-defined]
        self.schema: str = self.datastore.schema
        self.tracking = PostgresTrackingRecorder(
            self.datastore, tracking_table_name=PG_TRACKING_TABLE)

    def render(self, template: str) -> Any:
        return _render_postgres(template, self.schema, self.unlogged)

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """One projector at a time prepares a schema's views: PostgreSQL's ``CREATE TABLE
        IF NOT EXISTS`` fails when another transaction is creating the same table."""
        with self.errors(), self.datastore.get_connection() as conn:  # autocommit
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                         (_PREPARE_LOCK_CLASS, self.schema))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))",
                             (_PREPARE_LOCK_CLASS, self.schema))

    def transaction(self) -> AbstractContextManager[Cursor]:
        self.backend.writable("write its views")
        return self._txn(commit=True)

    def read(self) -> AbstractContextManager[Cursor]:
        return self._txn(commit=False)

    def outdated(self, cursor: Cursor, tables: Sequence[str]) -> set[str]:
        """The tables with a text column that compares by the database's collation: views
        made before their text columns were created ``COLLATE "C"``."""
        cursor.execute(
            "SELECT DISTINCT c.relname FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attnum > 0 "
            "AND NOT a.attisdropped AND a.atttypid = 'text'::regtype "
            """AND a.attcollation <> 'pg_catalog."C"'::regcollation""",
            (self.schema, [PREFIX + t for t in tables]))
        return {name.removeprefix(PREFIX) for (name,) in cursor.fetchall()}

    def executemany(self, cursor: Cursor, template: str, rows: Sequence[Sequence[Any]]) -> None:
        """Plain INSERTs go by COPY (one stream, no statement per row); so do upserts of
        ``STAGED_UPSERT_ROWS`` rows or more, into a temporary table that one
        ``INSERT ... SELECT ... ON CONFLICT`` then applies, when no two rows share a
        conflict key (one statement cannot update a row twice). Others as given."""
        if not rows:
            return
        staged = None
        copy = _copy_statement(template, self.schema)
        if copy is None:
            staged = _staged_upsert(template, self.schema)
            if (staged is None or len(rows) < STAGED_UPSERT_ROWS
                    or len({tuple(r[i] for i in staged.key) for r in rows}) < len(rows)):
                cursor.executemany(self.render(template), rows)
                return
            cursor.execute(staged.create)
            cursor.execute(staged.clear)  # what an upsert that failed may have left there
            copy = staged.copy
        with cursor.copy(copy) as out:  # type: ignore[attr-defined]
            for row in rows:
                out.write_row(row)
        if staged is not None:
            cursor.execute(staged.apply)

    def query(self, template: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement on an autocommit connection: one round trip, no BEGIN/ROLLBACK."""
        from psycopg.rows import tuple_row

        with self.errors(), self.datastore.get_connection() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            cursor.execute(self.render(template), params)
            return [tuple(r) for r in cursor.fetchall()]

    @contextmanager
    def errors(self) -> Iterator[None]:
        import psycopg

        try:
            yield
        except (PersistenceError, psycopg.Error) as exc:
            raise StoreError(f"PostgreSQL views: {exc}") from exc

    @contextmanager
    def _txn(self, *, commit: bool) -> Iterator[Cursor]:
        from psycopg.rows import tuple_row

        with self.errors(), self.datastore.get_connection() as conn, conn.transaction(
                force_rollback=not commit):
            yield conn.cursor(row_factory=tuple_row)


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier as quoted SQL text."""
    return '"' + name.replace('"', '""') + '"'


def pg_view_table(schema: str, table: str) -> str:
    """SQL text naming view table ``table`` (its slot name) in PostgreSQL ``schema``."""
    return quote_identifier(schema) + "." + quote_identifier(PREFIX + table)


def view_db(backend: Backend, *, scratch: bool = False) -> ViewDB:
    """The ViewDB for a ledger backend (same database, same connections).

    ``scratch``: views a rebuild's part writes and the merge reads once
    (``projections.parts``); their commits skip the fsync (SQLite) and their tables
    the write-ahead log (PostgreSQL's ``UNLOGGED``): a crash loses them, and the
    rebuild that wrote them with them.
    """
    from ledger.backends.sqlite import SQLiteBackend

    if isinstance(backend, SQLiteBackend):
        return SQLiteViewDB(backend, scratch=scratch)
    return PostgresViewDB(backend, scratch=scratch)


_SQLITE_SLOTS = {name: PREFIX + name for name in VIEW_TABLES} | {
    "tracking": SQLiteViewDB.tracking_table, "events": PREFIX + "events", "bigint": "INTEGER",
}


@lru_cache(maxsize=512)
def _render_sqlite(template: str) -> str:
    return template.format(**_SQLITE_SLOTS)


_PLAIN_INSERT = re.compile(r"INSERT INTO \{(\w+)\} \(([\w, ]+)\) VALUES \(\?(?:, \?)*\)")
UPSERT = re.compile(r"INSERT INTO \{(\w+)\}( AS \w+)? \(([\w, ]+)\) VALUES \(\?(?:, \?)*\) "
                    r"(ON CONFLICT \(([\w, ]+)\) .*)", re.DOTALL)
"""An upsert template; groups: table slot, alias, columns, conflict clause, key columns."""
STAGED_UPSERT_ROWS = 500
"""From this many rows, an upsert on PostgreSQL goes through a temporary table.

A shared rebuild's part upserts ~62k per-stream contexts at 1M events. One statement a
row (pipelined) cost 0.54-0.72 s of Python CPU and 0.68-0.97 s of server CPU; COPY into
a temporary table and one INSERT ... SELECT ... ON CONFLICT, 0.04 s and 0.41-0.44 s.
"""


class StagedUpsert(NamedTuple):
    """The statements of an upsert that goes through a temporary table."""

    create: Any  # the session's temporary table, if missing
    clear: Any  # empty it
    copy: Any  # COPY into it
    apply: Any  # INSERT ... SELECT ... ON CONFLICT from it
    key: tuple[int, ...]  # the positions of the conflict key's columns in a row


@lru_cache(maxsize=512)
def _staged_upsert(template: str, schema: str) -> StagedUpsert | None:
    from psycopg import sql

    match = UPSERT.fullmatch(template)
    if match is None or match.group(1) not in VIEW_TABLES:
        return None
    table, alias, columns, conflict, key = match.groups()
    names = [c.strip() for c in columns.split(",")]
    stage = sql.Identifier("pg_temp", f"{PREFIX}stage_{table}")
    listed = sql.SQL(", ").join(sql.Identifier(c) for c in names)
    return StagedUpsert(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {})").format(
            sql.Identifier(f"{PREFIX}stage_{table}"), sql.Identifier(schema, PREFIX + table)),
        sql.SQL("TRUNCATE {}").format(stage),
        sql.SQL("COPY {} ({}) FROM STDIN").format(stage, listed),
        _render_postgres(f"INSERT INTO {{{table}}}{alias or ''} ({columns}) SELECT {columns} "
                         f"FROM pg_temp.{PREFIX}stage_{table} {conflict}", schema),
        tuple(names.index(c.strip()) for c in key.split(",")))


@lru_cache(maxsize=512)
def _copy_statement(template: str, schema: str) -> Any:
    """``COPY table (columns) FROM STDIN`` for a plain INSERT template (no conflict
    clause, only placeholders), else None."""
    from psycopg import sql

    match = _PLAIN_INSERT.fullmatch(template)
    if match is None or match.group(1) not in VIEW_TABLES:
        return None
    columns = [sql.Identifier(c.strip()) for c in match.group(2).split(",")]
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema, PREFIX + match.group(1)), sql.SQL(", ").join(columns))


_TEXT_COLUMN = re.compile(r"\bTEXT\b")


@lru_cache(maxsize=512)
def _render_postgres(template: str, schema: str, unlogged: bool = False) -> Any:
    from psycopg import sql

    if template.startswith("CREATE TABLE "):
        template = _TEXT_COLUMN.sub('TEXT COLLATE "C"', template)
        if unlogged:
            template = template.replace("CREATE TABLE ", "CREATE UNLOGGED TABLE ", 1)
    slots: dict[str, Any] = {
        name: sql.Identifier(schema, PREFIX + name) for name in VIEW_TABLES}
    slots["tracking"] = sql.Identifier(schema, PG_TRACKING_TABLE)
    slots["events"] = sql.Identifier(schema, PREFIX + "events")
    slots["bigint"] = sql.SQL("BIGINT")
    return sql.SQL(template.replace("?", "%s")).format(**slots)
