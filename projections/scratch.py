"""Scratch view tables: where each part of a shared rebuild writes, until the merge.

A part of ``projections.parts`` folds its streams into view tables of its own, so
that the parts never wait for each other's writes and the store's views stay as they
were (queryable, and consistent with their tracking positions) until one transaction
replaces them. On SQLite a part's tables are a database file in a folder beside the
store (``.NAME.rebuild-PID/partK.db``), attached to the merging connection. On
PostgreSQL they are a schema beside the store's (``SCHEMA_rebuild_K``); one rebuild
of a schema runs at a time (a session advisory lock), and it drops what a crashed
one left.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from eventsourcing.persistence import PersistenceError

from ledger.backends.catalog import EVENTS_TABLE
from ledger.errors import StoreError
from projections.base import Projection
from projections.sql import (
    PREFIX,
    UPSERT,
    VIEW_SECURE_DELETE,
    Cursor,
    PostgresViewDB,
    SQLiteViewDB,
    ViewDB,
    pg_view_table,
    quote_identifier,
)

MAX_SQLITE_PARTS = 8  # SQLite attaches at most 10 databases to a connection
_PG_LOCK_CLASS = 7_355_608  # advisory lock (class, hashtext(schema)): one rebuild a schema
_FOLDER_MARK = ".rebuild-"


class Scratch:
    """The scratch tables of ``count`` parts, and the merge into the store's views."""

    count: int

    def url(self, part: int) -> str:
        """The store URL a part opens to write its views."""
        raise NotImplementedError

    def table(self, part: int | None, name: str) -> str:
        """SQL naming view table ``name`` of a part (``None``: the store's own)."""
        raise NotImplementedError

    def merge(self) -> AbstractContextManager[Cursor]:
        """A write transaction on the store's views that can read every part's tables."""
        raise NotImplementedError


def part_ddl(p: Projection) -> tuple[str, ...]:
    """``p.ddl`` as a part's scratch tables take it: its tables of counts (``p.sums``)
    without their primary key.

    A part inserts each batch's counts as new rows (``part_insert``) instead of adding
    them to the row of their key, so the key's index would only be upkeep; the merge
    adds the rows up by their key into the store's table, which has it.
    """
    return tuple(_PRIMARY_KEY.sub(")", statement)
                 if (m := _CREATE_TABLE.match(statement)) and m.group(1) in p.sums
                 else statement for statement in p.ddl)


@lru_cache(maxsize=128)
def part_insert(template: str, sums: tuple[str, ...]) -> str:
    """A view write as a part makes it: an upsert adding to a row of a table of counts
    (one of ``sums``) becomes a plain insert of this batch's counts (``part_ddl`` gave
    that table no key; the merge adds the rows up). Other templates are unchanged."""
    m = UPSERT.fullmatch(template)
    if m is None or m.group(1) not in sums:
        return template
    table, _, columns = m.group(1, 2, 3)
    marks = ", ".join("?" * len(columns.split(",")))
    return f"INSERT INTO {{{table}}} ({columns}) VALUES ({marks})"


_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS \{(\w+)\} ")
_PRIMARY_KEY = re.compile(r", PRIMARY KEY \([\w, ]+\)\)$")


def can_share(db: ViewDB) -> bool:
    """Whether a rebuild of these views can be shared out (another process can open
    the store, and the store is an ordinary file or a PostgreSQL schema)."""
    if isinstance(db, SQLiteViewDB):
        path = str(getattr(db.backend, "path", ""))
        return bool(path) and ":memory:" not in path and not path.startswith("file:")
    return isinstance(db, PostgresViewDB)


def scratch(db: ViewDB, count: int) -> AbstractContextManager[Scratch]:
    """Fresh scratch for ``count`` parts, removed when the block ends."""
    if isinstance(db, SQLiteViewDB):
        return _sqlite_scratch(db, count)
    assert isinstance(db, PostgresViewDB)
    return _postgres_scratch(db, count)


# -- SQLite ----------------------------------------------------------------------------

class SQLiteScratch(Scratch):
    def __init__(self, db: SQLiteViewDB, folder: Path, count: int) -> None:
        self.db = db
        self.folder = folder
        self.count = count

    def path(self, part: int) -> Path:
        return self.folder / f"part{part}.db"

    def url(self, part: int) -> str:
        return "sqlite:///" + str(self.path(part))

    def table(self, part: int | None, name: str) -> str:
        return (PREFIX + name) if part is None else f"part{part}.{PREFIX}{name}"

    @contextmanager
    def merge(self) -> Iterator[Cursor]:
        path = str(self.db.backend.path)  # type: ignore[attr-defined]
        with self.db.errors(), closing(sqlite3.connect(path, isolation_level=None,
                                                       timeout=60)) as conn:
            conn.execute(f"PRAGMA secure_delete = {VIEW_SECURE_DELETE}")  # drops old views
            for part in range(self.count):  # ATTACH cannot run inside a transaction
                conn.execute(f"ATTACH DATABASE ? AS part{part}", (str(self.path(part)),))
            cursor: Any = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                conn.rollback()
                raise
            cursor.execute("COMMIT")


@contextmanager
def _sqlite_scratch(db: SQLiteViewDB, count: int) -> Iterator[SQLiteScratch]:
    store = Path(str(db.backend.path)).resolve()  # type: ignore[attr-defined]
    _remove_abandoned(store)
    folder = store.parent / f".{store.name}{_FOLDER_MARK}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield SQLiteScratch(db, folder, count)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_abandoned(store: Path) -> None:
    """Remove the scratch folders of rebuilds whose process no longer runs (killed)."""
    for folder in store.parent.glob(f".{store.name}{_FOLDER_MARK}*"):
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# -- PostgreSQL ------------------------------------------------------------------------

class PostgresScratch(Scratch):
    def __init__(self, db: PostgresViewDB, count: int) -> None:
        self.db = db
        self.count = count
        self.schemas = [scratch_schema(db.schema, k) for k in range(count)]

    def url(self, part: int) -> str:
        parts = urlsplit(self.db.backend.url)
        query = dict(parse_qsl(parts.query)) | {"schema": self.schemas[part]}
        return urlunsplit(parts._replace(query=urlencode(query)))

    def table(self, part: int | None, name: str) -> str:
        schema = self.db.schema if part is None else self.schemas[part]
        return pg_view_table(schema, name)

    def merge(self) -> AbstractContextManager[Cursor]:
        return self.db.transaction()


def scratch_schema(schema: str, part: int) -> str:
    """The schema part ``part`` of a rebuild of ``schema`` writes in (<= 63 bytes)."""
    suffix = f"_rebuild_{part}"
    return schema.encode()[:63 - len(suffix)].decode(errors="ignore") + suffix


@contextmanager
def _postgres_scratch(db: PostgresViewDB, count: int) -> Iterator[PostgresScratch]:
    import psycopg

    found = PostgresScratch(db, count)
    pattern = scratch_schema(db.schema, 0).removesuffix("0")
    inside: BaseException | None = None  # an error of the block: passed on as it is
    try:
        with db.datastore.get_connection() as conn:  # autocommit; held for the rebuild
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                         (_PG_LOCK_CLASS, db.schema))
            try:
                _drop_scratch(conn, pattern)  # also what a killed rebuild left
                for schema in found.schemas:
                    conn.execute("CREATE SCHEMA " + quote_identifier(schema))
                try:
                    yield found
                except BaseException as exc:
                    inside = exc
                    raise
            finally:
                try:
                    _drop_scratch(conn, pattern)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))",
                                 (_PG_LOCK_CLASS, db.schema))
    except (PersistenceError, psycopg.Error) as exc:
        if exc is inside:
            raise
        raise StoreError(f"PostgreSQL views: {exc}") from exc


def _drop_scratch(conn: Any, pattern: str) -> None:
    from psycopg.rows import tuple_row

    cursor = conn.cursor(row_factory=tuple_row)
    cursor.execute(  # never a schema holding a ledger (named like scratch by accident)
        "SELECT n.nspname FROM pg_namespace n WHERE starts_with(n.nspname, %s) AND NOT EXISTS "
        "(SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = %s)",
        (pattern, EVENTS_TABLE))
    for (schema,) in cursor.fetchall():
        if schema[len(pattern):].isdigit():
            conn.execute("DROP SCHEMA " + quote_identifier(schema) + " CASCADE")
