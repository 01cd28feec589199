"""A view query's rows as the database sends them, for output of any size.

``ViewDB.query`` returns every row at once, which suits the library's callers and
the benchmarks' filtered questions (its one round trip keeps them fast). Output that
may be a tenant's whole history (``failures``, ``audit writes``, ``audit findings``,
in every form the CLI prints) took about 1.6 KB of memory a row that way. Here the
rows come a few at a time: SQLite's cursor fetches them in steps, PostgreSQL sends
them one by one (psycopg's ``Cursor.stream``), inside one read transaction, so they
are one consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

from projections.sql import ViewDB

T = TypeVar("T")
FETCH_ROWS = 1000  # rows SQLite hands over at a time


def stream_query(db: ViewDB, template: str, params: Sequence[Any],
                 convert: Callable[[tuple[Any, ...]], T]) -> Generator[T, None, None]:
    """``convert`` of each row of a read, in the query's order. The read transaction
    is held until the last row is taken or the generator is closed: close it
    (``contextlib.closing``) before the store if it may be left part-way."""
    with db.read() as cursor:
        rows: Iterator[Any]
        if db.dialect == "postgres":
            rows = cursor.stream(db.render(template), params)  # type: ignore[attr-defined]
        else:
            cursor.execute(db.render(template), params)
            rows = _fetched(cursor)
        try:
            for row in rows:
                yield convert(tuple(row))
        finally:  # a stream left part-way is cancelled before the transaction ends
            rows.close()  # type: ignore[attr-defined]


def _fetched(cursor: Any) -> Generator[Any, None, None]:
    while batch := cursor.fetchmany(FETCH_ROWS):
        yield from batch
