"""Checking the views against the log: a fresh fold, compared row by row.

The views are read models in the same database as the ledger: whoever may edit the
one may edit the other, and ``verify``, which checks the streams, would not notice
an attribution row marked authorized or a failure deleted from the index. What the
auditors' queries answer comes from these rows.

``check_views`` folds the log afresh, up to the position each projection's views
have reached, into views of its own (a SQLite file in a temporary folder, or a
scratch schema beside a PostgreSQL store's, as a shared rebuild makes), and compares
each of the projection's tables with the store's as multisets of rows, its per-trace
contexts and left-out entries included. Folding is exact (the same rows whatever the
batches; tests check it), so any difference is an edit. Nothing in the store is
written: the views are checked as they are, not caught up first, which could build
on an edited row. When a writer moves the views on while they are checked, the fresh
fold follows them to their new position and they are compared again.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ledger.errors import StoreError, UsageError
from ledger.store import Store
from projections.base import Projection
from projections.runner import Progress, Projector
from projections.scratch import scratch
from projections.sql import PREFIX, SQLiteViewDB, ViewDB, pg_view_table, view_db

EXAMPLES = 5  # differing rows shown per table
ATTEMPTS = 5  # folds to the views' position before giving up on views that keep moving
_PER_PROJECTION = ("projection_context", "unreadable_entries")  # rows of every projection


@dataclass(frozen=True)
class TableCheck:
    """One table compared: its rows in the store and in a fresh fold, and the rows (with
    how many times each occurs) that only one of them has."""

    table: str
    live_rows: int
    fresh_rows: int
    only_live: int
    only_fresh: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.only_live == self.only_fresh == 0


@dataclass(frozen=True)
class ProjectionCheck:
    """One projection's views compared at ``position`` (a notification id)."""

    name: str
    position: int
    tables: list[TableCheck]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)


@dataclass(frozen=True)
class CheckReport:
    """The result of ``agentledger projections check`` (its ``--json`` output)."""

    projections: list[ProjectionCheck]
    entries_read: int

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.projections)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries_read": self.entries_read, "projections": [
            {"name": p.name, "position": p.position, "ok": p.ok,
             "tables": [{**asdict(t), "ok": t.ok} for t in p.tables]}
            for p in self.projections]}


def check_views(store: Store, names: list[str] | None = None,
                progress: Progress | None = None) -> CheckReport:
    """Compare the named projections' views (default: all) with a fresh fold of the log."""
    live = Projector(store, names)
    chosen = live.projections
    _check_built(live.db, chosen)
    read = 0
    with _fresh_place(live.db) as (url, compare), Store.open(url, migrate=False) as fresh:
        fresh_db = view_db(fresh.backend, scratch=True)
        folds: dict[str, Projector] = {}  # projection -> its fresh projector
        for _ in range(ATTEMPTS):
            positions = _positions(live.db, chosen)
            read += _fold(store, fresh_db, folds, positions, progress)
            with compare() as (cursor, fresh_table, live_table):
                if _positions(live.db, chosen, cursor, live_table) != positions:
                    continue  # a writer moved the views on: fold on to where they are
                return CheckReport([
                    ProjectionCheck(p.name, positions[p.name], [
                        _compare(cursor, live_table(t), fresh_table(t), t,
                                 p.name if t in _PER_PROJECTION else None)
                        for t in (*p.tables, *_PER_PROJECTION)])
                    for p in chosen], read)
    raise StoreError(f"the views kept moving while they were checked ({ATTEMPTS} tries): "
                     "check again when no writer or follower is applying entries")


def _check_built(db: ViewDB, chosen: list[Projection]) -> None:
    """Refuse views this code would not have built: missing, or of another version."""
    try:
        built = dict(db.query("SELECT name, version FROM {projection_state}"))
    except StoreError:  # no views at all
        built = {}
    for p in chosen:
        if p.name not in built:
            raise UsageError(f"projection {p.name!r} has no views yet: nothing to check")
        if built[p.name] != p.version:
            raise UsageError(
                f"the views of {p.name!r} were built by version {built[p.name]} of it, this "
                f"agentledger folds version {p.version}: they differ by design; `agentledger "
                f"projections rebuild {p.name}` replaces them")


def _positions(db: ViewDB, chosen: list[Projection], cursor: Any = None,
               live_table: Callable[[str], str] | None = None) -> dict[str, int]:
    """Each projection's tracking position (0 before its first entry)."""
    if cursor is None or live_table is None:
        rows = db.query("SELECT application_name, notification_id FROM {tracking}")
    else:
        cursor.execute(f"SELECT application_name, notification_id FROM {live_table('tracking')}")
        rows = cursor.fetchall()
    found = {name: int(nid) for name, nid in rows if nid is not None}
    return {p.name: found.get(p.name, 0) for p in chosen}


def _fold(store: Store, fresh_db: ViewDB, folds: dict[str, Projector],
          positions: dict[str, int], progress: Progress | None) -> int:
    """Bring each projection's fresh views to ``positions``: a projector per position
    (they usually share one), rebuilt from 0 unless its views are behind that position
    already, then caught up to it. Return the log entries read."""
    read = 0
    groups: dict[int, list[str]] = {}
    for name, position in positions.items():
        groups.setdefault(position, []).append(name)
    for position, names in groups.items():
        projector = folds.get(names[0])
        same = projector is not None and [p.name for p in projector.projections] == names
        if projector is None or not same or (projector.upto or 0) > position:
            projector = Projector(store, names, views=fresh_db, upto=position)
            read += projector.rebuild(progress=progress, query_indexes=False)
        else:
            projector.upto = position
            read += projector.catch_up(progress)
        folds.update(dict.fromkeys(names, projector))
    return read


def _compare(cursor: Any, live: str, fresh: str, table: str,
             projection: str | None) -> TableCheck:
    """Compare ``live`` with ``fresh`` as multisets of rows (of ``projection`` only, in
    the tables that hold every projection's rows)."""
    cursor.execute(f"SELECT * FROM {fresh} WHERE 1 = 0")
    columns = ", ".join(d[0] for d in cursor.description)
    mark = "?" if isinstance(cursor, sqlite3.Cursor) else "%s"
    where = f" WHERE projection = {mark}" if projection is not None else ""
    params = (projection,) if projection is not None else ()

    def grouped(source: str) -> str:
        return f"SELECT {columns}, count(*) AS occurs FROM {source}{where} GROUP BY {columns}"

    counts, examples = [], []
    for side, a, b in (("live", live, fresh), ("fresh", fresh, live)):
        only = f"({grouped(a)} EXCEPT {grouped(b)}) AS differing"
        cursor.execute(f"SELECT count(*) FROM {only}", params * 2)
        counts.append(int(cursor.fetchone()[0]))
        cursor.execute(f"SELECT * FROM {only} ORDER BY {columns} LIMIT {EXAMPLES}", params * 2)
        names = [d[0] for d in cursor.description]
        examples += [{"in": side, "occurs": r[-1], "row": dict(zip(names[:-1], r[:-1],
                                                                     strict=True))}
                     for r in cursor.fetchall()]
    sizes = []
    for source in (live, fresh):
        cursor.execute(f"SELECT count(*) FROM {source}{where}", params)
        sizes.append(int(cursor.fetchone()[0]))
    return TableCheck(table, sizes[0], sizes[1], counts[0], counts[1], examples)


Compare = Callable[[], Any]  # a context manager: (cursor, fresh table name, live table name)


@contextmanager
def _fresh_place(db: ViewDB) -> Iterator[tuple[str, Compare]]:
    """Where the fresh views go (a store URL), and how to open a read transaction that
    sees them and the store's views at once."""
    if isinstance(db, SQLiteViewDB):
        with tempfile.TemporaryDirectory(prefix="agentledger-check-") as folder:
            path = Path(folder) / "fresh.db"
            yield "sqlite:///" + str(path), lambda: _sqlite_compare(db, path)
        return
    db.backend.writable("build fresh views beside its own to compare them with")
    with scratch(db, 1) as place:
        fresh_schema = place.schemas[0]  # type: ignore[attr-defined]
        schema = db.schema  # type: ignore[attr-defined]

        @contextmanager
        def compare() -> Iterator[tuple[Any, Callable[[str], str], Callable[[str], str]]]:
            with db.read() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield (cursor, lambda t: pg_view_table(fresh_schema, t),
                       lambda t: pg_view_table(schema, t))

        yield place.url(0), compare


@contextmanager
def _sqlite_compare(db: SQLiteViewDB, fresh: Path
                    ) -> Iterator[tuple[Any, Callable[[str], str], Callable[[str], str]]]:
    name = db.datastore.pool.db_name  # the store's file, or a read-only ``file:`` URI of it
    with db.errors(), closing(sqlite3.connect("file:" + quote(str(fresh)), uri=True,
                                              isolation_level=None, timeout=60)) as conn:
        conn.execute("ATTACH DATABASE ? AS live", (name,))  # not inside a transaction
        cursor = conn.cursor()
        cursor.execute("BEGIN")  # one snapshot of both
        try:
            yield (cursor, lambda t: PREFIX + t,
                   lambda t: "live." + (t if t == "tracking" else PREFIX + t))
        finally:
            conn.rollback()

