"""A full rebuild shared out between processes by ranges of stream ids.

Almost everything a projection writes depends on one stream's entries, in their
order: a trace's failures, memory writes, tool calls and their recoveries, a tenant's
grants or findings. So the log can be cut by stream. The head of the log is fixed
first; part k of K then folds the entries up to that head of the streams whose id
lies in the k-th of K equal ranges (the database filters them) into scratch view
tables of its own (``projections.scratch``), K-1 parts in spawned processes and one
in this one.

When every part has finished, a transaction in the store replaces the views (on
SQLite one for all projections; on PostgreSQL one per projection, K side by side,
the largest first). For each projection it
drops and recreates its tables; copies every part's rows into them, adding up the
tables of counts (``Projection.sums``, e.g. hourly tool calls, which every part
counts for its own streams); copies the parts' per-stream contexts and unreadable
entries; runs the projection's ``settle`` statements, for what crosses streams
(whether a cross-agent write is covered by a grant of its tenant's ``$grants``
stream, which another part read); and sets its tracking position to the head. On
PostgreSQL it then builds the projection's query indexes and statistics, so that no
connection waits for the slowest merge before the index builds begin. The result is
the views a one-process rebuild gives (tests check this row for row).

Until a projection's transaction commits, its views and position are as they
were: a crash or an error in any part, or in the merge, leaves every projection
consistent with its position, and the scratch is removed (by the next rebuild, after
a kill).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import TYPE_CHECKING, Any, NamedTuple

from ledger.backends.base import IdRange
from ledger.store import Store
from ledger.verify import id_ranges
from ledger.workers import GUARD_HINT, WorkerError, refuse_while_spawning, spawn_pool
from projections.base import Projection
from projections.indexes import build_beside_others, relation_sizes, side_by_side
from projections.scratch import MAX_SQLITE_PARTS, Scratch, can_share, scratch
from projections.sql import SQLiteViewDB, ViewDB, view_db

if TYPE_CHECKING:
    from projections.runner import Progress, Projector

ENTRIES_PER_PART = 50_000
"""Below this many log entries per part, processes cost more than they save."""
_PER_PROJECTION = {  # the runner's tables with rows of every projection: columns, key's end
    "projection_context": ("projection, stream, context", "stream"),
    "unreadable_entries": ("projection, notification_id, tenant, trace_id, seq, reason",
                           "notification_id"),
}


def part_count(projector: Projector, workers: int) -> int:
    """How many parts a rebuild with ``workers`` processes is cut into (1: not shared)."""
    if workers <= 1 or projector.log_slice is not None or not can_share(projector.db):
        return 1
    if isinstance(projector.db, SQLiteViewDB):
        workers = min(workers, MAX_SQLITE_PARTS)
    return max(1, min(workers, projector.store.backend.last_notification_id() // ENTRIES_PER_PART))


def rebuild_in_parts(projector: Projector, chosen: Sequence[Projection], count: int,
                     progress: Progress | None, *, query_indexes: bool) -> tuple[int, bool]:
    """Rebuild ``chosen`` in ``count`` parts and merge them; return the entries read and
    whether the query indexes are built (on PostgreSQL, with ``query_indexes``, each
    projection's in its merge transaction, after its rows)."""
    refuse_while_spawning("rebuild")  # before the scratch lock, which the parent holds
    store = projector.store
    head = store.backend.last_notification_id()
    if projector.upto is not None:  # a fold to a position (``projections check``)
        head = min(head, projector.upto)
    names = [p.name for p in chosen]
    ranges = id_ranges(count)
    with scratch(projector.db, count) as place:
        plans = [PartPlan(k, store.url, names, place.url(k), ranges[k], head,
                          projector.rebuild_batch_size, projector.context_cache)
                 for k in range(count)]
        read = _run_parts(plans, head, progress)
        if projector.db.dialect == "postgres":  # one transaction a projection, side by side
            side_by_side([functools.partial(_replace, projector, place, [p], head,
                                            indexes=query_indexes)
                          for p in _largest_first(projector.db, place, chosen)], count)
            return read, query_indexes
        # SQLite writes from one connection at a time: one transaction
        _replace(projector, place, chosen, head)
    return read, False


def _replace(projector: Projector, place: Scratch, chosen: Sequence[Projection],
             head: int, *, indexes: bool = False) -> None:
    """Replace the views of ``chosen`` by the parts' in one transaction (with
    ``indexes``, then build their query indexes and statistics in it too)."""
    db = projector.db
    with place.merge() as cur:
        for p in chosen:
            projector._reset(cur, p, query_indexes=False)
            _merge(projector, cur, place, p, head)
            if indexes:  # the other projections' merges run side by side
                build_beside_others(db, cur, [*p.query_indexes,
                                              *("ANALYZE {" + t + "}" for t in p.tables)])


def _largest_first(db: ViewDB, place: Scratch, chosen: Sequence[Projection]
                   ) -> list[Projection]:
    """``chosen``, the projection whose parts' tables take the most room first."""
    def size(p: Projection) -> int:
        return sum(relation_sizes(db, [place.table(k, t) for k in range(place.count)
                                       for t in p.tables]))

    return sorted(chosen, key=size, reverse=True)


class PartPlan(NamedTuple):
    """What one part folds: the streams in ``id_range``, up to ``head``, into ``scratch_url``."""

    number: int
    url: str
    names: list[str]
    scratch_url: str
    id_range: IdRange
    head: int
    batch_size: int  # the rebuilding projector's
    context_cache: int


def _run_parts(plans: list[PartPlan], head: int, progress: Progress | None) -> int:
    """Run part 0 here and the others in spawned processes; return the entries read."""
    import multiprocessing

    counts = multiprocessing.get_context("spawn").Array("q", len(plans), lock=False)

    def report() -> None:  # after each batch of the part run here, and while waiting
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                future.result()  # a part's error stops the one here too, not after it
        if progress is not None:
            done = sum(counts)
            progress(done, max(head, done))

    futures: list[Future[int]] = []
    with spawn_pool(len(plans) - 1, _start, (counts,)) as pool:
        futures += [pool.submit(_run_part, plan) for plan in plans[1:]]
        try:
            _counts["shared"] = counts
            here = _run_part(plans[0], on_progress=report)
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                report()
            return here + sum(f.result() for f in futures)
        except Exception as exc:
            from concurrent.futures.process import BrokenProcessPool

            if isinstance(exc, BrokenProcessPool):
                raise WorkerError(f"rebuild: a worker process ended abruptly ({exc}); "
                                  f"{GUARD_HINT}") from None
            raise
        finally:
            _counts.pop("shared", None)
            for future in futures:
                future.cancel()


_counts: dict[str, Any] = {}  # the progress counters shared with (or by) this process


def _start(counts: Any) -> None:
    _counts["shared"] = counts


def _run_part(plan: PartPlan, on_progress: Callable[[], None] | None = None) -> int:
    """Fold one part of the log into its scratch views; return the entries it read."""
    from projections.runner import LogSlice, Projector

    counts = _counts.get("shared")

    def progress(read: int, _total: int) -> None:
        if counts is not None:
            counts[plan.number] = read
        if on_progress is not None:
            on_progress()

    with Store.open(plan.url, migrate=False) as store, \
            Store.open(plan.scratch_url, migrate=False) as views:
        projector = Projector(store, plan.names, batch_size=plan.batch_size,
                              context_cache=plan.context_cache,
                              views=view_db(views.backend, scratch=True),
                              log_slice=LogSlice(plan.id_range, plan.head))
        return projector.rebuild(progress=progress, query_indexes=False)


def _merge(projector: Projector, cur: Any, place: Scratch, p: Projection, head: int) -> None:
    """Replace ``p``'s (just reset) views by the union of the parts'; set its position."""
    db = projector.db

    def run(statement: str, params: Sequence[Any] = ()) -> None:
        cur.execute(statement if db.dialect == "sqlite" else statement.replace("?", "%s"),
                    params)

    for table in p.tables:
        target = place.table(None, table)
        sums = p.sums.get(table)
        if sums is None:
            for k in range(place.count):
                run(f"INSERT INTO {target} SELECT * FROM {place.table(k, table)}")
            continue
        keys, summed = ", ".join(sums[0]), sums[1]
        union = " UNION ALL ".join(f"SELECT {keys}, {', '.join(summed)} "
                                   f"FROM {place.table(k, table)}" for k in range(place.count))
        run(f"INSERT INTO {target} ({keys}, {', '.join(summed)}) SELECT {keys}, "
            + ", ".join(f"sum({c})" for c in summed) + f" FROM ({union}) AS u GROUP BY {keys}")
    for table, (columns, order) in _PER_PROJECTION.items():
        for k in range(place.count):  # in key order: part k's streams follow part k-1's
            run(f"INSERT INTO {place.table(None, table)} ({columns}) SELECT {columns} "
                f"FROM {place.table(k, table)} WHERE projection = ? ORDER BY {order}",
                (p.name,))
    for statement in p.settle:
        db.execute(cur, statement)
    db.execute(cur, "INSERT INTO {tracking} (application_name, notification_id) VALUES (?, ?)",
               (p.name, head))
