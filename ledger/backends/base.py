"""The narrow interface every storage backend implements.

A backend owns one eventsourcing application recorder (events table and
notification log) plus the ledger's stream catalog, and writes both in one
transaction. SQLite and PostgreSQL implement it; the conformance suite in
``tests/conformance`` runs against both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    PersistenceError,
    StoredEvent,
)

from ledger.errors import ConcurrencyError, StoreError, UsageError

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class StreamHead:
    """Catalog row of one stream: identity, length, last hash, status, time span."""

    stream_id: UUID
    kind: str
    tenant: str
    name: str
    last_seq: int
    head_hash: str
    status: str = "active"
    agent_owner: str | None = None
    first_ts: str | None = None
    last_ts: str | None = None

    def advanced(self, **changes: Any) -> StreamHead:
        """A copy with the given fields changed."""
        return replace(self, **changes)


HeadReader = Callable[[Sequence[UUID]], dict[UUID, StreamHead]]
StateReader = Callable[[UUID, int], list[tuple[int, bytes]]]
"""A stream's stored ``(version, state)`` pairs after a version, in version order."""


@dataclass(frozen=True, slots=True)
class LockedReads:
    """What a :data:`SharedAppend` may read: inside the append's transaction, under the
    write lock, so no other writer's commit can come between the read and the append."""

    heads: HeadReader
    states: StateReader


SharedAppend = Callable[[LockedReads], tuple[list[StoredEvent], list[StreamHead]]]
"""Events of a stream many writers append to (a tenant's findings): given what may be
read under the write lock, the events chained on the heads read there and the heads
they leave."""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of the events table, as verify reads it."""

    stream_id: UUID
    version: int
    notification_id: int
    topic: str
    state: bytes


RowTuple = tuple[Any, int, int, str, bytes]
"""A stored row as a backend scans it: (stream key, version, notification id, topic, state)."""

StreamScan = Iterator[tuple[UUID, Iterator[RowTuple]]]
"""Streams by id, each with an iterator over its rows in version order, read as the
caller goes: take a stream's rows before asking for the next stream (they are gone
then). No stream is held whole, however long."""

IdRange = tuple[UUID, UUID | None]
"""Stream ids ``lo <= id < hi`` (``hi`` None: no upper bound), in UUID byte order."""


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """Filters for listing streams (all optional but the tenant)."""

    tenant: str
    kind: str = "trace"
    status: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = None


class Backend(ABC):
    """A place to keep streams: events table, notification log and stream catalog."""

    url: str
    recorder: ApplicationRecorder
    read_only: str | None = None
    """Why this process may not write the store, in words (None: it may)."""
    how_to_write = "work on a copy in a folder you may write in"

    def writable(self, what: str) -> None:
        """Raise UsageError when the store is read-only here (``what``: the write refused,
        e.g. "append events to it")."""
        if self.read_only is not None:
            raise UsageError(f"{self.label} is read-only here ({self.read_only}): cannot "
                             f"{what}; {self.how_to_write}")

    @abstractmethod
    def migrate(self) -> list[int]:
        """Apply pending schema migrations in order; return the versions applied."""

    @abstractmethod
    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty store)."""

    @abstractmethod
    def load_heads(self, stream_ids: Sequence[UUID]) -> dict[UUID, StreamHead]:
        """Catalog rows of the given streams that exist."""

    @property
    @abstractmethod
    def label(self) -> str:
        """What errors call the store: its kind and URL (without a password)."""

    def append(
        self, events: Sequence[StoredEvent], heads: Sequence[StreamHead], *,
        shared: SharedAppend | None = None,
    ) -> Sequence[int]:
        """Insert events and upsert catalog rows in one transaction (the recorder's
        ``insert_events``, which takes the heads).

        ``shared`` chains the events of streams that several writers append to (a
        tenant's findings) on heads read in that transaction, once it holds the write
        lock, so they never race: they are inserted after ``events``.

        Raises ``ConcurrencyError`` (nothing written) when any (stream, version)
        already exists. Returns the notification ids given to the events.
        """
        self.writable("append events to it")
        try:
            ids = self.recorder.insert_events(events, heads=heads, shared=shared)
        except IntegrityError as exc:
            raise ConcurrencyError(f"another writer appended first: {exc}") from exc
        except PersistenceError as exc:
            raise StoreError(f"{self.label}: {exc}") from exc
        return ids or []

    def list_streams(self, query: StreamQuery) -> list[StreamHead]:
        """Catalog rows matching the query, ordered by first_ts then name."""
        return list(self.iter_streams(query))

    @abstractmethod
    def iter_streams(self, query: StreamQuery) -> Generator[StreamHead, None, None]:
        """:meth:`list_streams` a row at a time, for output of any size: one read
        transaction is held until the last row is taken, so close it before the store
        (``contextlib.closing``) and call nothing else of the store meanwhile."""

    @abstractmethod
    def scan_streams(self, stream_ids: Sequence[UUID] | None = None, *,
                     id_range: IdRange | None = None) -> StreamScan:
        """Each stored stream (or each of the given ones) with its rows in version order,
        by stream id (a :data:`StreamScan`); ``id_range`` keeps only streams whose id lies
        in it.

        Rows are plain tuples, built by the driver: the scan verify makes of every row.
        """

    @abstractmethod
    def snapshot_scan(
        self, tenant: str | None = None, *, id_range: IdRange | None = None,
        stream_ids: Sequence[UUID] | None = None,
    ) -> AbstractContextManager[tuple[list[StreamHead], StreamScan]]:
        """The catalog rows and the stored rows of the same streams, read in one snapshot:
        what writers commit meanwhile changes neither, so the two agree unless the record
        was altered (what verify relies on).

        The streams are those of ``tenant`` (or of every tenant) in ``id_range``, or those
        of ``stream_ids``; the rows as :meth:`scan_streams` gives them, to be read inside
        the block.
        """

    def iter_rows(self, stream_ids: Sequence[UUID] | None = None, *,
                  id_range: IdRange | None = None) -> Iterator[StoredRow]:
        """Every stored row (or those of the given streams), by stream then version."""
        for sid, rows in self.scan_streams(stream_ids, id_range=id_range):
            for _, version, nid, topic, state in rows:
                yield StoredRow(sid, version, nid, topic, state)

    @abstractmethod
    def iter_catalog(self, tenant: str | None = None, *,
                     id_range: IdRange | None = None) -> Iterator[StreamHead]:
        """Every catalog row (of one tenant, of streams in ``id_range``), by stream id."""

    @abstractmethod
    def read_log(self, after: int, limit: int, max_bytes: int | None = None
                 ) -> list[tuple[int, str, str, int, bytes]]:
        """Up to ``limit`` log entries with notification id above ``after``, in id order;
        with ``max_bytes``, only as many as it takes for their states to hold that many
        bytes (at least one), so large events come fewer to a page.

        Each is ``(notification_id, topic, stream key (32 hex), version, state)``:
        the raw rows read models consume (no per-row object construction).
        """

    @abstractmethod
    def read_streams(self, id_range: IdRange, after: int, upto: int, limit: int,
                     max_bytes: int | None = None) -> list[tuple[int, str, str, int, bytes]]:
        """Up to ``limit`` entries (and ``max_bytes``, as for :meth:`read_log`) of the
        streams whose id lies in ``id_range``, with notification id above ``after`` and
        at most ``upto``, in id order. Rows as :meth:`read_log`'s: one part of a rebuild
        shared out by stream.
        """

    @abstractmethod
    def read_state(self, stream_id: UUID, version: int) -> bytes | None:
        """The stored state of one event (None when there is none): one indexed read."""

    @abstractmethod
    def read_states(self, stream_ids: Sequence[UUID], version: int) -> dict[UUID, bytes]:
        """The stored state at ``version`` of each of the streams that has one (e.g. the
        first records of many replays), a few thousand streams a query."""

    @abstractmethod
    def last_notification_id(self) -> int:
        """The highest notification id stored (0 for an empty log)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    @abstractmethod
    def check_connections(self) -> None:
        """Replace the idle connections that no longer work (after the store could not
        be reached), so the next transaction does not fail on one."""

    def shrink_log(self) -> bool:
        """Give back the disk space a write-ahead log kept after past writes; False when
        others were using the store (try again later). A long-lived process
        calls it when idle: a SQLite log grown during an ingest otherwise keeps its size
        until the last connection to the file closes. PostgreSQL recycles its own."""
        return True

    @abstractmethod
    def read_stream(self, stream_id: UUID, *, gt: int | None = None,
                    lte: int | None = None) -> list[tuple[int, bytes]]:
        """A stream's ``(version, state)`` rows in version order, those with ``gt <
        version <= lte``: one statement, its rows the driver's own tuples
        (``catalog.READ_STREAM``).

        Not the library's ``select_events``, which builds a ``StoredEvent`` and a
        ``UUID`` a row: for the ~1,000 rows of a long trace that took 2.9 ms of a
        replay's ~25 on SQLite and 6.3 ms on PostgreSQL, against 0.5-0.7 and 0.9-1.4 ms.
        """


def version_bounds(gt: int | None, lte: int | None) -> tuple[int, int]:
    """``read_stream``'s ``gt`` and ``lte`` as the integers its statement binds (none
    given: bounds no stored version lies beyond)."""
    return -(2**63) if gt is None else gt, 2**63 - 1 if lte is None else lte
