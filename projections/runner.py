"""The projector: follows the ledger's notification log into the view tables.

For each batch of log entries it applies every projection that is behind, and
commits the view rows, the projections' per-stream context and their tracking
positions in one transaction (exactly once; see docs/PROJECTIONS.md). Tracking
rows live in eventsourcing's tracking table and are advanced by compare-and-set,
so two projectors on one database never apply an entry twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from ledger.backends.base import IdRange
from ledger.errors import UsageError
from ledger.gcpause import paused_gc
from ledger.store import Store
from projections.analytics import AnalyticsProjection
from projections.attribution import AttributionProjection
from projections.base import (
    Batch,
    Entry,
    LogRow,
    Projection,
    ProjectionStatus,
    Unreadable,
    context_loader,
    decode_entries,
    skipped_rows,
)
from projections.failures import FailureProjection
from projections.findings import FindingsProjection
from projections.in_place import views_in_place
from projections.indexes import build_query_indexes
from projections.memory import MemoryProjection
from projections.row_types import RowTypes
from projections.scratch import part_ddl, part_insert
from projections.sql import Cursor, ViewDB, check_readable, view_db

PROJECTIONS: tuple[type[Projection], ...] = (MemoryProjection, FailureProjection,
                                              AttributionProjection, AnalyticsProjection,
                                              FindingsProjection)
NAMES = tuple(p.name for p in PROJECTIONS)
_ROW_TYPES = RowTypes(statement for p in PROJECTIONS for statement in p.ddl)
Progress = Callable[[int, int], None]  # (entries read so far, entries to read)

_DDL = (
    "CREATE TABLE IF NOT EXISTS {projection_context} (projection TEXT NOT NULL, "
    "stream TEXT NOT NULL, context TEXT NOT NULL, PRIMARY KEY (projection, stream))",
    "CREATE TABLE IF NOT EXISTS {projection_state} (name TEXT PRIMARY KEY, "
    "version INTEGER NOT NULL, rebuilt_at TEXT)",
    # Log entries a projection passed over because their stored bytes cannot be read.
    "CREATE TABLE IF NOT EXISTS {unreadable_entries} (projection TEXT NOT NULL, "
    "notification_id {bigint} NOT NULL, tenant TEXT, trace_id TEXT, seq {bigint} NOT NULL, "
    "reason TEXT NOT NULL, PRIMARY KEY (projection, notification_id))",
    "CREATE INDEX IF NOT EXISTS agentledger_unreadable_tenant "
    "ON {unreadable_entries} (tenant, trace_id, seq)",
)
_SKIP = ("INSERT INTO {unreadable_entries} (projection, notification_id, tenant, trace_id, "
         "seq, reason) VALUES (?, ?, ?, ?, ?, ?)")
_UPSERT_CONTEXT = (
    "INSERT INTO {projection_context} (projection, stream, context) VALUES (?, ?, ?) "
    "ON CONFLICT (projection, stream) DO UPDATE SET context = excluded.context"
)
_ADVANCE = "UPDATE {tracking} SET notification_id = ? WHERE application_name = ? " \
           "AND notification_id = ?"
_START = "INSERT INTO {tracking} (application_name, notification_id) VALUES (?, ?) " \
         "ON CONFLICT (application_name) DO NOTHING"
_POSITIONS = "SELECT application_name, notification_id FROM {tracking}"
_CHUNK = 400
CATCH_UP_BATCH = 10_000  # log entries per transaction
REBUILD_BATCH = 50_000
ENTRY_BYTES = 640  # a batch also ends once its states hold this much a entry on average
DECODE_CHUNK = 100  # log entries decoded and folded at a time (see Projector._fold)
CONTEXT_CACHE = 20_000
"""Per-trace contexts a projection keeps in memory (others are read back when needed). At
1M events, 50,000 held 73k contexts; ingest peaked at 249-251 MB over its processes, 232 MB
with 20,000 and 224-226 MB with 10,000, at 30.4-31.4k, 29.8-30.1k, 29.4-29.9k events/s."""
STATISTICS_AFTER = 10_000  # entries applied before the views' statistics are first taken
_STALE_RETRIES = 20


class LogSlice(NamedTuple):
    """The entries a projector reads: of streams whose id lies in ``id_range``, up to
    notification id ``upto`` (one part of a shared rebuild)."""

    id_range: IdRange
    upto: int


class StaleError(Exception):
    """Another projector advanced a tracking position first (this batch is rolled back)."""


def select(names: Iterable[str] | None) -> list[Projection]:
    """Projection instances by name (all when ``names`` is None); unknown names are an error."""
    if names is None:
        return [p() for p in PROJECTIONS]
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        raise UsageError(f"unknown projection {unknown[0]!r}: choose from {', '.join(NAMES)}")
    return [p() for p in PROJECTIONS if p.name in wanted]


class Projector:
    """Keeps some (default: all) projections of one store up to date.

    ``batch_size``: log entries applied per transaction (default 10,000 when catching
    up, ``REBUILD_BATCH`` in a rebuild, where fewer and larger commits pay off), fewer
    where their events' states hold more than ``ENTRY_BYTES`` each on average (6.4 MB
    a catch-up, 32 MB a rebuild: ordinary events take ~530 bytes).
    ``views`` (default: the store's own) is where the view tables are; ``log_slice``
    keeps the projector to part of the log (both for a part of a shared rebuild,
    ``projections.parts``); ``upto`` to the entries up to that notification id (a fresh
    fold to compare the views with, ``projections.check``).
    """

    def __init__(self, store: Store, names: Iterable[str] | None = None, *,
                 batch_size: int | None = None, context_cache: int = CONTEXT_CACHE,
                 views: ViewDB | None = None, log_slice: LogSlice | None = None,
                 upto: int | None = None) -> None:
        self.store = store
        self.upto = upto
        self.db: ViewDB = views if views is not None else view_db(store.backend)
        self.log_slice = log_slice
        self.projections = select(names)
        self.batch_size = batch_size or CATCH_UP_BATCH
        self.rebuild_batch_size = batch_size or REBUILD_BATCH
        self.context_cache = context_cache
        self._caches: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self._complete: set[str] = set()  # caches known to hold every context there is
        self._known: dict[str, int] = {}  # positions this projector last committed or saw
        self._applied = self._counted = 0  # entries applied; when statistics were taken
        self._ready = False

    # -- public API ----------------------------------------------------------------

    def attach(self) -> Projector:
        """Catch up after every commit made through the store (and now)."""
        self.store.add_commit_listener(self._committed)
        self.catch_up()
        return self

    def _committed(self) -> None:
        self.catch_up()

    def catch_up(self, progress: Progress | None = None, *, batch_size: int | None = None) -> int:
        """Apply every log entry the projections have not seen; return how many were read."""
        self._prepare()
        with paused_gc():
            for _ in range(_STALE_RETRIES):
                try:
                    read = self._run(progress, batch_size or self.batch_size)
                except StaleError:
                    self._forget()
                    continue
                self._keep_statistics(read)
                return read
        raise StaleError("tracking positions kept moving under this projector")

    def _keep_statistics(self, read: int) -> None:
        """Refresh the views' planner statistics each time this projector has doubled
        the entries it applied (from ``STATISTICS_AFTER``): without them SQLite picks
        poor indexes for some queries (docs/PROJECTIONS.md)."""
        self._applied += read
        if self.log_slice is not None or self._applied < max(STATISTICS_AFTER, 2 * self._counted):
            return
        self._counted = self._applied
        self.db.refresh_statistics([t for p in self.projections for t in p.tables])

    def rebuild(self, names: Iterable[str] | None = None,
                progress: Progress | None = None, *, workers: int = 1,
                query_indexes: bool = True) -> int:
        """Drop the named projections (default: all of this projector's) and replay from 0.

        The query indexes (``projections.indexes``) are built after the rows are loaded
        (also when the rebuild is interrupted; after a crash, the next projector builds them).
        With ``workers`` > 1 (and a log long enough to pay for them) the log is shared
        out by stream between that many processes, and the views are replaced in one
        transaction at the end (``projections.parts``). ``query_indexes=False`` leaves
        those indexes out (a part's scratch views, which no query reads).
        """
        from projections import parts

        self._prepare()
        wanted = None if names is None else {p.name for p in select(names)}  # checks names
        chosen = [p for p in self.projections if wanted is None or p.name in wanted]
        count = parts.part_count(self, workers)
        indexed = False
        if count > 1:
            read, indexed = parts.rebuild_in_parts(self, chosen, count, progress,
                                                   query_indexes=query_indexes)
            for p in chosen:
                self._caches.pop(p.name, None)
                self._complete.discard(p.name)
            self._known.clear()  # positions are read again by the catch-up below
        else:
            read = self._replay(chosen, progress, query_indexes)
        if query_indexes and not indexed:
            build_query_indexes(self.db, chosen, workers=count)
        if count > 1:  # whatever was logged while the parts ran
            read += self.catch_up(progress)
        return read

    def _replay(self, chosen: Sequence[Projection], progress: Progress | None,
                query_indexes: bool) -> int:
        with self.db.transaction() as cur:
            for p in chosen:
                self._reset(cur, p, query_indexes=False)
        for p in chosen:
            self._caches.pop(p.name, None)
            self._complete.add(p.name)
            self._known[p.name] = 0
        try:
            return self.catch_up(progress, batch_size=self.rebuild_batch_size)
        except BaseException:
            if query_indexes:  # queries of the views read so far still need them
                build_query_indexes(self.db, chosen, analyze=False)
            raise

    def status(self, *, outdated: bool = False) -> list[ProjectionStatus]:
        """Position, lag and version of each projection (``outdated``: on a store this
        process may not write, report views another version built, not refuse them)."""
        self._prepare(any_version=outdated)
        positions = self._positions()
        built = self._built_versions()
        head = self.store.backend.last_notification_id()
        unreadable = dict(self.db.query(
            "SELECT projection, count(*) FROM {unreadable_entries} GROUP BY projection"))
        return [ProjectionStatus(
            p.name, p.description, p.version, built.get(p.name), positions.get(p.name, 0), head,
            max(0, head - positions.get(p.name, 0)), built.get(p.name) != p.version,
            int(unreadable.get(p.name, 0))) for p in self.projections]

    # -- internals -------------------------------------------------------------------

    def _prepare(self, *, any_version: bool = False) -> None:
        """Create what is missing; drop and recreate projections built by another version
        or with an older column layout (``any_version``: see ``status``)."""
        if self._ready:
            return
        if self.db.backend.read_only is not None:  # views as they are, or none at all
            check_readable(self.db, self.projections, any_version=any_version)
            self._ready = not any_version  # queries still need the check
            return
        if views_in_place(self.db, _DDL, self.projections):  # takes no lock (in_place.py)
            self._ready = True
            return
        with self.db.preparing():
            self.db.create_tracking_table()
            with self.db.transaction() as cur:
                for statement in _DDL:
                    self.db.execute(cur, statement)
            with self.db.transaction() as cur:  # read again under the write lock: another
                built = self._built_versions(cur)  # projector may have just prepared them
                outdated = self.db.outdated(cur, [t for p in self.projections for t in p.tables])
                stale = [p for p in self.projections
                         if built.get(p.name) != p.version or outdated.intersection(p.tables)]
                for p in self.projections:
                    if p in stale:  # its tables may have an older layout: never touch them
                        self._reset(cur, p)
                    else:  # also builds indexes a crashed rebuild left out
                        for statement in p.ddl + p.query_indexes:
                            self.db.execute(cur, statement)
        for p in stale:
            self._complete.add(p.name)
            self._known[p.name] = 0
        self._ready = True

    def _reset(self, cur: Cursor, p: Projection, *, query_indexes: bool = True) -> None:
        for table in p.tables:
            self.db.execute(cur, "DROP TABLE IF EXISTS {" + table + "}")
        ddl = p.ddl if self.log_slice is None else part_ddl(p)
        for statement in ddl + (p.query_indexes if query_indexes else ()):
            self.db.execute(cur, statement)
        self.db.execute(cur, "DELETE FROM {projection_context} WHERE projection = ?", (p.name,))
        self.db.execute(cur, "DELETE FROM {unreadable_entries} WHERE projection = ?", (p.name,))
        self.db.execute(cur, "DELETE FROM {tracking} WHERE application_name = ?", (p.name,))
        self.db.execute(cur, "DELETE FROM {projection_state} WHERE name = ?", (p.name,))
        self.db.execute(cur, "INSERT INTO {projection_state} (name, version, rebuilt_at) "
                        "VALUES (?, ?, ?)", (p.name, p.version, datetime.now(UTC).isoformat()))

    def _positions(self) -> dict[str, int]:
        return {name: int(nid) for name, nid in self.db.query(_POSITIONS) if nid is not None}

    def _built_versions(self, cur: Cursor | None = None) -> dict[str, int]:
        query = "SELECT name, version FROM {projection_state}"
        rows = self.db.query(query) if cur is None else self.db.execute(cur, query).fetchall()
        return {name: int(v) for name, v in rows}

    def _forget(self) -> None:
        self._caches.clear()
        self._complete.clear()
        self._known.clear()

    def _run(self, progress: Progress | None, batch_size: int) -> int:
        positions = {p.name: 0 for p in self.projections} | {
            k: v for k, v in self._positions().items() if k in NAMES}
        for name, position in positions.items():
            if self._known.get(name) != position:  # another projector moved it: our
                self._caches.pop(name, None)      # cached contexts may be stale
                self._complete.discard(name)
                self._known[name] = position
        if self.log_slice is not None:
            return self._run_slice(self.log_slice, progress, batch_size)
        backend = self.store.backend
        start = min(positions[p.name] for p in self.projections)
        total = 0  # entries to read, for a progress bar
        if progress is not None:
            head = backend.last_notification_id() if self.upto is None else self.upto
            total = max(0, head - start)
        read = 0
        while True:
            rows = backend.read_log(start, batch_size, batch_size * ENTRY_BYTES)
            if self.upto is not None:
                rows = [r for r in rows if r[0] <= self.upto]
            if not rows:
                return read
            last = rows[-1][0]
            behind = [p for p in self.projections if positions[p.name] < last]
            batches = self._fold_and_write(behind, rows, positions, advance_to=last)
            for p in behind:
                positions[p.name] = self._known[p.name] = last
                self._keep(p.name, batches[p.name])
            read += len(rows)
            start = last
            if progress is not None:
                progress(read, max(total, read))

    def _run_slice(self, part: LogSlice, progress: Progress | None, batch_size: int) -> int:
        """Fold a slice of the log, in log order (a part of a shared rebuild).

        Each batch commits its rows alone: the views are scratch, and their tracking
        position is set by the merge, not here.
        """
        backend = self.store.backend
        positions = {p.name: 0 for p in self.projections}  # every entry of it is new
        after, read = 0, 0
        while rows := backend.read_streams(part.id_range, after, part.upto, batch_size,
                                           batch_size * ENTRY_BYTES):
            batches = self._fold_and_write(self.projections, rows, positions)
            for p in self.projections:
                self._keep(p.name, batches[p.name])
            read += len(rows)
            after = rows[-1][0]
            if progress is not None:
                progress(read, max(part.upto, read))
        return read

    def _fold_and_write(self, behind: Sequence[Projection], rows: Sequence[LogRow],
                        positions: dict[str, int], *, advance_to: int | None = None
                        ) -> dict[str, Batch]:
        """Fold log rows and commit them, tracking positions moved on to ``advance_to``
        (if given). A batch that fails (a record altered into JSON of another shape) is
        folded again with ``decode_entries(strict=True)``, too slow for every batch."""
        strict = False  # the cached contexts are copied, never changed: fold again
        while True:
            try:
                batches, skipped = self._fold(behind, rows, positions, strict=strict)
                with self.db.transaction() as cur:
                    if advance_to is not None:
                        for p in behind:
                            self._advance(cur, p.name, positions[p.name], advance_to)
                    for p in behind:
                        self._write(cur, p, batches[p.name])
                    self.db.executemany(cur, _SKIP, skipped)
                return batches
            except Exception as exc:
                if strict or isinstance(exc, StaleError):  # strict: the store failed
                    raise
                strict = True

    def _fold(self, behind: Sequence[Projection], rows: Sequence[LogRow],
              positions: dict[str, int], *, strict: bool = False,
              ) -> tuple[dict[str, Batch], list[tuple[Any, ...]]]:
        """Fold log rows into one batch per projection, ``DECODE_CHUNK`` rows at a time,
        each chunk by every projection while its records are in the CPU's caches (see
        PROJECTIONS.md); also return the rows recording entries passed over."""
        batches = {}
        for p in behind:
            if p.name not in self._complete:  # streams first seen at version 1 have none
                earliest: dict[str, int] = {}
                for nid, topic, stream, version, _ in rows:
                    if topic in p.topics and nid > positions[p.name]:
                        earliest.setdefault(stream, version)
                self._load_contexts(p.name, {s for s, v in earliest.items() if v > 1})
            cache = self._caches.setdefault(p.name, OrderedDict())
            batches[p.name] = Batch(load_context=context_loader(cache), query=self.db.query)
        unreadable: list[Unreadable] = []
        for start in range(0, len(rows), DECODE_CHUNK):
            entries, bad = decode_entries(rows[start:start + DECODE_CHUNK], strict=strict)
            unreadable += bad
            by_topics: dict[frozenset[str], list[Entry]] = {}
            for p in behind:
                mine = by_topics.get(p.topics)
                if mine is None:
                    mine = by_topics[p.topics] = [e for e in entries if e.topic in p.topics]
                if entries and positions[p.name] >= entries[0].notification_id:
                    mine = [e for e in mine if e.notification_id > positions[p.name]]
                p.apply(mine, batches[p.name])
        for p in behind:
            p.finish(batches[p.name])
        return batches, skipped_rows(self.store.backend, behind, unreadable, positions)

    def _load_contexts(self, name: str, streams: set[str]) -> None:
        cache = self._caches.setdefault(name, OrderedDict())
        missing = [s for s in streams if s not in cache]
        for i in range(0, len(missing), _CHUNK):
            chunk = missing[i:i + _CHUNK]
            rows = self.db.query(
                "SELECT stream, context FROM {projection_context} WHERE projection = ? "
                "AND stream IN (" + ",".join("?" * len(chunk)) + ")", (name, *chunk))
            for stream, text in rows:
                cache[stream] = orjson.loads(text)

    def _advance(self, cur: Cursor, name: str, expected: int, last: int) -> None:
        if expected == 0:
            self.db.execute(cur, _START, (name, last))
        else:
            self.db.execute(cur, _ADVANCE, (last, name, expected))
        if cur.rowcount != 1:
            raise StaleError(f"projection {name!r} moved past {expected} elsewhere")

    def _write(self, cur: Cursor, p: Projection, batch: Batch) -> None:
        _ROW_TYPES.check(batch)  # the same views on every backend (see row_types.py)
        for template, rows in batch.rows.items():
            if self.log_slice is not None:  # a part's scratch tables: see part_ddl
                template = part_insert(template, tuple(p.sums))
            self.db.executemany(cur, template, rows)
        for template, params in batch.statements + batch.late_statements:
            self.db.execute(cur, template, params)
        if batch.changed:
            self.db.executemany(cur, _UPSERT_CONTEXT, [
                (p.name, s, orjson.dumps(batch.contexts[s]).decode()) for s in batch.changed])

    def _keep(self, name: str, batch: Batch) -> None:
        cache = self._caches.setdefault(name, OrderedDict())
        for stream in batch.changed:
            cache[stream] = batch.contexts[stream]
            cache.move_to_end(stream)
        while len(cache) > self.context_cache:
            cache.popitem(last=False)
            self._complete.discard(name)

