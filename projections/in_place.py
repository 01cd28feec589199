"""Whether a store's views are in place, found by reading the catalog alone.

In place means: every table and index the given statements create exists, each
projection's views were built by its version, and no table has an older column
layout. A projector checks this first (``Projector._prepare``) and then prepares
nothing. Preparing runs every ``CREATE ... IF NOT EXISTS`` in a write transaction, and
on an index that already exists that statement still locks its table against writes:
it waits for every open transaction writing to the table (on SQLite, for the store's
write lock), and on PostgreSQL the writers that come next queue behind it. Read
commands did that once per process: ``agentledger failures`` waited out an ingest's
flush, a follower's batch or a rebuild's merge before it read a row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from projections.sql import PREFIX, Cursor, ViewDB

_CREATED = re.compile(r"IF NOT EXISTS (?:\{(\w+)\}|(\w+))")


def created_names(statements: Iterable[str]) -> set[str]:
    """The names of the tables (``{slot}``: a view table) and indexes these DDL
    templates create."""
    return {PREFIX + slot if slot else name
            for statement in statements for slot, name in _CREATED.findall(statement)}


def relations(db: ViewDB, cursor: Cursor) -> set[str]:
    """The names of the tables and indexes in the views' file or schema."""
    if db.dialect == "sqlite":
        cursor.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
    else:
        cursor.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname = %s "
                       "AND c.relkind IN ('r', 'p', 'i', 'I')", (db.schema,))  # type: ignore[attr-defined]
    return {name for (name,) in cursor.fetchall()}


def views_in_place(db: ViewDB, shared_ddl: Sequence[str], projections: Sequence[Any]) -> bool:
    """Whether preparing the views of ``projections`` (and the tables every projection
    shares, ``shared_ddl``) would change nothing."""
    wanted = created_names([*shared_ddl, *(s for p in projections
                                           for s in (*p.ddl, *p.query_indexes))])
    with db.read() as cur:
        present = relations(db, cur)
        if not wanted | {db.tracking_table} <= present:
            return False
        cur.execute(db.render("SELECT name, version FROM {projection_state}"))
        built = {name: int(version) for name, version in cur.fetchall()}
        if any(built.get(p.name) != p.version for p in projections):
            return False
        return not db.outdated(cur, [t for p in projections for t in p.tables])
