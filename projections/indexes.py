"""The indexes a rebuild builds once the rows are in, and the views' statistics.

A rebuild loads the views without the indexes its own statements never use (each
projection's ``query_indexes``: the queries' indexes and the unique keys of the
tables it only inserts into), then builds each with one sort, then has the planner
take statistics of the new tables: without them SQLite picks poor indexes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from projections.base import Projection
from projections.sql import ViewDB

_TABLE_SLOT = re.compile(r"\{(\w+)\}")


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
        rows = {t: int(db.query("SELECT count(*) FROM {" + t + "}")[0][0])
                for p in chosen for t in p.tables}
        statements = sorted((s for p in chosen for s in p.query_indexes),
                            key=lambda s: -rows[_TABLE_SLOT.findall(s)[0]])
        if analyze:
            statements += ["ANALYZE {" + t + "}" for t in sorted(rows, key=lambda t: -rows[t])]
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
        for table in tables:
            db.execute(cur, "ANALYZE {" + table + "}")


def _run_apart(db: ViewDB, statements: Sequence[str], workers: int) -> None:
    """Run each statement in a transaction of its own, ``workers`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def run(statement: str) -> None:
        with db.transaction() as cur:  # builds already run side by side: no server
            db.execute(cur, "SET LOCAL max_parallel_maintenance_workers = 0")  # helpers
            db.execute(cur, statement)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(run, s) for s in statements]:
            future.result()
    finally:  # after an error (Ctrl-C too): what has not started does not start
        pool.shutdown(wait=True, cancel_futures=True)
