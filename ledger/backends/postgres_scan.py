"""Scanning PostgreSQL streams: every row, by stream then version, as binary ``COPY``.

What verify and ``audit export`` read. The server sends a stream's rows up to 64 to a
message, as arrays (``GROUPED_SCAN``); a row whose state is large travels alone, so no
message holds more than 64 small states or one large one. The client gives each stream
with an iterator over its rows as they arrive: however long a stream, however large
its events, it is never held whole.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing
from itertools import chain, groupby, repeat
from operator import itemgetter
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from ledger.backends import catalog
from ledger.backends.base import IdRange, RowTuple

Scan = Generator[tuple[UUID, Iterator[RowTuple]], None, None]  # closed when left part-way
Chunks = Generator[list[RowTuple], None, None]
SCAN_IDS = 2000  # stream ids per scan statement
GROUP = 64  # rows to a message
LARGE_STATE = 65_536  # bytes: a state larger travels alone

_GROUP_KEY = (f"originator_id, originator_version / {GROUP}, CASE WHEN octet_length(state) > "
              f"{LARGE_STATE} THEN originator_version ELSE 0 END")
GROUPED_SCAN = (
    "COPY (SELECT originator_id, array_agg(originator_version), array_agg(notification_id), "
    "array_agg(topic), array_agg(state) FROM ({}) AS e "
    f"GROUP BY {_GROUP_KEY} ORDER BY {_GROUP_KEY}) TO STDOUT (FORMAT BINARY)"
)
"""How scans read a stream's rows: up to 64 in one message, as five arrays.

Reading rows one by one, psycopg spends about 2 µs of client CPU a row (a message, a
generator step and a tuple each), as much as verify's hashing and decoding together.
Grouped, the client's share halves and the server's grows by a quarter of that (it
sorts each stream's rows by their group: a stream's rows are already in order, but the
planner cannot know it): verify with one worker checks 1M events with 10-12% less CPU
in all, 16-25% faster. Groups of 64 rows, not whole streams, bound what the server
holds for one group whatever a stream's length; a state over ``LARGE_STATE`` bytes is
a group of its own (after the block's small states: ``in_version_order`` puts them
back in order), so 64 events of 1 MiB are not one message of 64 MiB.
"""

SCAN_PLAN = ("SET LOCAL max_parallel_workers_per_gather = 0; "
             "SET LOCAL random_page_cost = 1.1; SET LOCAL jit = off")
"""How verify's scan of streams is planned: along the primary key, in one process.

Verify already splits the log between processes, one per CPU, each reading a range
of stream ids in stream order. With the default costs (pages as if read from a
spinning disk) PostgreSQL plans a range as a bitmap heap scan, a sort that spills
to disk, and parallel workers that compete with ours for the same CPUs. Read as an
index scan, the ranges of a 1M-event store cost the server 1.75 s of CPU against
2.4-3.2 s; with that (and verify's smaller ranges) verify with 2 workers on a freshly
ingested 1M-event store went from 130-152k to 224-239k events/s on 2 cores. JIT
compiling a whole-log scan does not pay either.
"""


def scan(conn: Any, table: sql.Identifier, stream_ids: Sequence[UUID] | None,
         id_range: IdRange | None) -> Scan:
    """The streams of ``table`` (those given, or in ``id_range``), read in ``conn``'s
    transaction, each with an iterator over its rows as they arrive."""
    where, lo_hi = catalog.id_bounds("originator_id", id_range, "%s")
    batches: list[list[UUID] | None] = [None]
    if stream_ids is not None:  # COPY binds parameters into its text: keep lists short
        where.append("originator_id = ANY(%s)")
        ids = sorted(stream_ids)
        batches = [ids[i : i + SCAN_IDS] for i in range(0, len(ids), SCAN_IDS)]
    with conn.cursor() as cur:
        cur.execute(SCAN_PLAN)
        chunks = _chunks(conn, cur, table, where, list(lo_hi), batches)
        try:
            for key, group in groupby(chunks, _stream_key):
                yield UUID(bytes=key), chain.from_iterable(group)
        finally:  # left part-way: the COPY ends before the transaction
            chunks.close()


def _stream_key(chunk: list[RowTuple]) -> Any:
    return chunk[0][0]


def _chunks(conn: Any, cur: psycopg.Cursor[Any], table: sql.Identifier, where: list[str],
            lo_hi: list[Any], batches: list[list[UUID] | None]) -> Chunks:
    """The scan's rows, by stream then version, in lists of one stream's rows.

    Should a group be too big for a message (a value over 1 GiB), the scan goes on
    after the last row given out, a row to a message.
    """
    for batch in batches:
        params = [*lo_hi, *([batch] if batch is not None else [])]
        last: RowTuple | None = None
        try:
            with (conn.transaction(),  # a savepoint, to go on from if a group fails
                  closing(_copy_chunks(cur, table, where, params, grouped=True)) as chunks):
                for chunk in chunks:
                    last = chunk[-1]
                    yield chunk
        except (psycopg.errors.ProgramLimitExceeded, psycopg.errors.OutOfMemory):
            more = ["(originator_id, originator_version) > (%s, %s)"] if last else []
            after = [UUID(bytes=last[0]), last[1]] if last else []
            with closing(_copy_chunks(cur, table, [*where, *more], [*params, *after],
                                      grouped=False)) as chunks:
                yield from chunks


def _copy_chunks(cur: psycopg.Cursor[Any], table: sql.Identifier, where: list[str],
                 params: list[Any], *, grouped: bool) -> Chunks:
    """The rows ``GROUPED_SCAN`` sends, in runs of one stream's rows in version order
    (:func:`in_version_order`); not ``grouped``, every row alone."""
    query = sql.SQL(
        "SELECT originator_id, originator_version, notification_id, topic, state FROM {}"
    ).format(table)
    if where:
        query += sql.SQL(" WHERE " + " AND ".join(where))
    query += sql.SQL(" ORDER BY originator_id, originator_version")
    copy = sql.SQL(GROUPED_SCAN if grouped else "COPY ({}) TO STDOUT (FORMAT BINARY)")
    with cur.copy(copy.format(query), params) as out:
        # A binary uuid is its 16 bytes: read as such, one UUID per stream instead of
        # one per row (a tenth less CPU, here and in the server).
        if not grouped:
            out.set_types(["bytea", "int8", "int8", "text", "bytea"])
            for row in out.rows():
                yield [row]
            return
        out.set_types(["bytea", "int8[]", "int8[]", "text[]", "bytea[]"])
        yield from in_version_order(out.rows())


def in_version_order(groups: Iterable[tuple[Any, list[int], list[int], list[str],
                                             list[bytes]]]) -> Chunks:
    """``GROUPED_SCAN``'s groups (a stream key and four arrays each) as runs of rows in
    version order.

    A block of 64 versions comes as the group of its small states, then each large
    state alone, in version order. The small states are held and given out around
    the large ones: no more than one group and one large state is held at a time.
    """
    held: list[RowTuple] = []
    key, block = None, -1
    for k, versions, nids, topics, states in groups:
        group: list[RowTuple] = list(zip(repeat(k), versions, nids, topics, states))
        group.sort(key=itemgetter(1))  # the order within an array is not promised
        version = group[0][1]
        if version // GROUP != block or k != key:
            if held:
                yield held
            held, key, block = group, k, version // GROUP
            continue
        cut = bisect(held, version, key=itemgetter(1))  # a large state of the same block
        if cut:
            yield held[:cut]
        held = held[cut:]
        yield group
    if held:
        yield held
