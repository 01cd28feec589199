"""Checking the views against the log: a fresh fold, compared row by row.

The views are read models in the same database as the ledger: whoever may edit the
one may edit the other, and ``verify``, which checks the streams, would not notice
an attribution row marked authorized or a failure deleted from the index. What the
auditors' queries answer comes from these rows.

``check_views`` folds the log afresh, up to the position each projection's views
have reached, into views of its own: a SQLite file in a temporary folder, whatever
the store, so a read-only copy of the evidence, a login that may only read and a
standby server can all be checked. It compares each of the projection's tables with
the store's as multisets of rows, its per-trace contexts and left-out entries
included, both read in one order and walked side by side. Folding is exact (the same
rows whatever the batches or the backend; tests check it), so any difference is an
edit. Nothing in the store is written: the views are checked as they are, not caught
up first, which could build on an edited row. When a writer moves the views on while
they are checked, the fresh fold follows them to their new position and they are
compared again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from ledger.errors import StoreError, UsageError
from ledger.store import Store
from projections.base import Projection
from projections.runner import Progress, Projector
from projections.sql import PREFIX, ViewDB, view_db

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
                progress: Progress | None = None, *, workers: int = 1) -> CheckReport:
    """Compare the named projections' views (default: all) with a fresh fold of the log
    (shared out between ``workers`` processes as a rebuild is: ``projections.parts``)."""
    live = Projector(store, names)
    chosen = live.projections
    _check_built(live.db, chosen)
    read = 0
    with tempfile.TemporaryDirectory(prefix="agentledger-check-") as folder, \
            Store.open(f"sqlite:///{Path(folder) / 'fresh.db'}", migrate=False) as fresh:
        fresh_db = view_db(fresh.backend, scratch=True)
        folds: dict[str, Projector] = {}  # projection -> its fresh projector
        for _ in range(ATTEMPTS):
            positions = _positions(live.db, chosen)
            read += _fold(store, fresh_db, folds, positions, progress, workers)
            with _snapshot(live.db) as cursor:
                if _positions(live.db, chosen, cursor) != positions:
                    continue  # a writer moved the views on: fold on to where they are
                return CheckReport([
                    ProjectionCheck(p.name, positions[p.name], [
                        _compare(live.db, cursor, fresh_db, t,
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


def _positions(db: ViewDB, chosen: list[Projection], cursor: Any = None) -> dict[str, int]:
    """Each projection's tracking position (0 before its first entry), read with
    ``cursor`` when given."""
    query = "SELECT application_name, notification_id FROM {tracking}"
    rows = db.query(query) if cursor is None else db.execute(cursor, query).fetchall()
    found = {name: int(nid) for name, nid in rows if nid is not None}
    return {p.name: found.get(p.name, 0) for p in chosen}


def _fold(store: Store, fresh_db: ViewDB, folds: dict[str, Projector],
          positions: dict[str, int], progress: Progress | None, workers: int) -> int:
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
            read += projector.rebuild(progress=progress, query_indexes=False,
                                      workers=workers)
        else:
            projector.upto = position
            read += projector.catch_up(progress)
        folds.update(dict.fromkeys(names, projector))
    return read


def _compare(live_db: ViewDB, cursor: Any, fresh_db: ViewDB, table: str,
             projection: str | None) -> TableCheck:
    """Compare the store's ``table`` (read with ``cursor``) with the fresh one as
    multisets of rows (of ``projection`` only, in the tables that hold every
    projection's rows): both are read in one order and walked side by side, so memory
    does not grow with the table."""
    declared = fresh_db.query(f"SELECT name, type FROM pragma_table_info('{PREFIX}{table}')")
    columns = [name for name, _ in declared]
    where = " WHERE projection = ?" if projection is not None else ""
    params = (projection,) if projection is not None else ()
    select = f"SELECT {', '.join(columns)} FROM {{{table}}}{where} ORDER BY "
    in_order = ", ".join(  # the order of _key: nulls first, text by code point
        f'{name} COLLATE "C" NULLS FIRST' if kind.upper() == "TEXT" else f"{name} NULLS FIRST"
        for name, kind in declared) if live_db.dialect == "postgres" else ", ".join(columns)
    report = _Differences(columns)
    with fresh_db.read() as fresh_cursor:
        report.walk(_rows(live_db, cursor, select + in_order, params),
                    _rows(fresh_db, fresh_cursor, select + ", ".join(columns), params))
    return TableCheck(table, report.sizes[0], report.sizes[1], report.only[0],
                      report.only[1], report.examples)


def _rows(db: ViewDB, cursor: Any, template: str, params: tuple[Any, ...]) -> Iterator[Any]:
    """The rows of a query on the store, a batch at a time (PostgreSQL: a server-side
    cursor in ``cursor``'s transaction)."""
    if db.dialect != "postgres":
        rows: Any = db.execute(cursor, template, params)  # a sqlite3 cursor: iterable
        yield from rows
        return
    from psycopg.rows import tuple_row

    with cursor.connection.cursor(name="agentledger_check", row_factory=tuple_row) as named:
        named.itersize = 10_000
        named.execute(db.render(template), params)
        yield from named


def _key(row: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
    """How both databases order rows, as Python compares them: nulls first, numbers,
    then text by code point (then bytes, as SQLite orders its storage classes)."""
    return tuple((0,) if v is None else (2, v) if isinstance(v, str) else
                 (3, v) if isinstance(v, bytes) else (1, v) for v in row)


class _Differences:
    """The rows (with how many times each occurs) only one side has, counted while
    walking both sides' rows in ``_key`` order."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.sizes = [0, 0]
        self.only = [0, 0]
        self.examples: list[dict[str, Any]] = []

    def walk(self, live: Iterable[Any], fresh: Iterable[Any]) -> None:
        sides = [self._runs(live, 0), self._runs(fresh, 1)]
        heads = [next(sides[0], None), next(sides[1], None)]
        while heads[0] is not None or heads[1] is not None:
            if heads[1] is None or (heads[0] is not None and heads[0][0] < heads[1][0]):
                ahead = [0]
            elif heads[0] is None or heads[1][0] < heads[0][0]:
                ahead = [1]
            else:  # the same row: a difference only if it occurs more often on one side
                ahead = [0, 1]
                if heads[0][2] == heads[1][2]:
                    heads = [next(sides[0], None), next(sides[1], None)]
                    continue
            for side in ahead:
                head = heads[side]
                assert head is not None
                self._differs(side, head)
                heads[side] = next(sides[side], None)

    def _runs(self, rows: Iterable[Any], side: int) -> Iterator[tuple[Any, tuple[Any, ...], int]]:
        """(key, row, occurrences) of each run of equal rows."""
        for row, run in groupby(tuple(r) for r in rows):
            count = sum(1 for _ in run)
            self.sizes[side] += count
            yield _key(row), row, count

    def _differs(self, side: int, head: tuple[Any, tuple[Any, ...], int]) -> None:
        self.only[side] += 1
        if sum(1 for x in self.examples if x["in"] == _SIDES[side]) < EXAMPLES:
            self.examples.append({"in": _SIDES[side], "occurs": head[2],
                                  "row": dict(zip(self.columns, head[1], strict=True))})


_SIDES = ("live", "fresh")


@contextmanager
def _snapshot(db: ViewDB) -> Iterator[Any]:
    """A read transaction on the store's views: one snapshot of all of them."""
    with db.read() as cursor:
        if db.dialect == "postgres":
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield cursor
