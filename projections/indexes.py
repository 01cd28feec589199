"""The indexes a rebuild builds once the rows are in, and the views' statistics.

A rebuild loads the views without the indexes its own statements never use (each
projection's ``query_indexes``: the queries' indexes and the unique keys of the
tables it only inserts into), then builds each with one sort, then has the planner
take statistics of the new tables: without them SQLite picks poor indexes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from projections.base import Projection
from projections.sql import Cursor, ViewDB, pg_view_table

_TABLE_SLOT = re.compile(r"\{(\w+)\}")
APPROXIMATE_STATISTICS = "SET LOCAL default_statistics_target = 10"
"""How a rebuild's ``ANALYZE`` samples on PostgreSQL: 3,000 rows a table, not 30,000.

Like SQLite's ``analysis_limit``: the four largest views of a 1M-event store took
0.06 s instead of 0.63 s. Autovacuum's later analyses use the database's own target.
"""


def relation_sizes(db: ViewDB, names: Sequence[str]) -> list[int]:
    """Bytes each PostgreSQL table (a quoted, qualified name) takes, indexes included."""
    rows = db.query("SELECT pg_total_relation_size(CAST(t AS regclass)) "
                    "FROM unnest(CAST(? AS text[])) WITH ORDINALITY AS u(t, i) ORDER BY i",
                    (list(names),))
    return [int(r[0]) for r in rows]


def build_query_indexes(db: ViewDB, chosen: Sequence[Projection], *, analyze: bool = True,
                        workers: int = 1) -> None:
    """Build the query indexes of ``chosen`` (after the rows: one sort each), then
    statistics (``analyze``).

    On PostgreSQL with ``workers`` > 1, that many connections share the statements
    out, the largest tables' first, each index and each table's statistics in a
    transaction of its own (a build that fails leaves the others; the next projector
    builds what is missing). SQLite writes from one connection at a time.
    """
    if workers > 1 and db.dialect == "postgres":
        tables = [t for p in chosen for t in p.tables]
        schema: str = db.schema  # type: ignore[attr-defined]
        names = [pg_view_table(schema, t) for t in tables]
        size = dict(zip(tables, relation_sizes(db, names), strict=True))
        statements = sorted((s for p in chosen for s in p.query_indexes),
                            key=lambda s: -size[_TABLE_SLOT.findall(s)[0]])
        if analyze:
            statements += ["ANALYZE {" + t + "}" for t in sorted(size, key=lambda t: -size[t])]
        _run_apart(db, statements, workers)
        return
    with db.transaction() as cur:
        for p in chosen:
            for statement in p.query_indexes:
                db.execute(cur, statement)
    if not analyze:
        return
    tables = [t for p in chosen for t in p.tables]
    if db.dialect == "sqlite":  # approximate: the same plans, in 6-8 ms instead of ~0.2 s
        db.refresh_statistics(tables)
        return
    with db.transaction() as cur:  # statistics for the new tables and indexes
        db.execute(cur, APPROXIMATE_STATISTICS)
        for table in tables:
            db.execute(cur, "ANALYZE {" + table + "}")


def _run_apart(db: ViewDB, statements: Sequence[str], workers: int) -> None:
    """Run each statement in a transaction of its own, ``workers`` at a time."""

    def run(statement: str) -> None:
        with db.transaction() as cur:
            build_beside_others(db, cur, [statement])

    side_by_side([functools.partial(run, s) for s in statements], workers)


def build_beside_others(db: ViewDB, cur: Cursor, statements: Sequence[str]) -> None:
    """Run index builds and ``ANALYZE`` statements in a PostgreSQL transaction that runs
    side by side with others like it: without the server's parallel helpers, which would
    only compete for the same cores, and with statistics from a sample."""
    db.execute(cur, "SET LOCAL max_parallel_maintenance_workers = 0")
    db.execute(cur, APPROXIMATE_STATISTICS)
    for statement in statements:
        db.execute(cur, statement)


def side_by_side(jobs: Sequence[Callable[[], None]], workers: int) -> None:
    """Run ``jobs`` in order on ``workers`` threads (each job on its own connection).

    The first error is raised once the jobs already started have ended; after an
    error (Ctrl-C too), the jobs not yet started do not start.
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
