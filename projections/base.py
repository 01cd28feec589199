"""What a projection is: a named, versioned fold of log entries into view tables.

A projection sees entries (decoded log rows) in notification order, batch by
batch. It never writes directly: it queues inserts and statements on the
:class:`Batch`, and reads/updates its per-stream context there; the projector
commits all of that with the tracking position in one transaction.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, NamedTuple
from uuid import UUID

import orjson

from ledger import chain, records
from ledger.backends.base import Backend
from ledger.timestamps import normalize_ts


class Entry(NamedTuple):
    """One log entry as projections see it."""

    notification_id: int
    topic: str
    stream: str  # the stream's 32-hex key
    version: int
    record: dict[str, Any]


def utc_ts(record: dict[str, Any]) -> str:
    """The record's ``ts`` in UTC (``...Z``), the form every view stores and compares."""
    return normalize_ts(record["ts"])


def json_text(value: Any) -> str:
    """A JSON value as the text a view stores (exact for big integers too)."""
    return chain.encode(value).decode()


INDEXED_CHARS = 200
"""How much of a name an index holds. The contract bounds tenants (100 characters) and
trace ids (200) but not tools, agents, scopes, memory keys, reasons or event names,
and PostgreSQL refuses an index entry over 2,704 bytes: one event with a 9,000-byte
memory key stopped every projection at it, for good. 200 characters are at most 800
bytes of UTF-8, so an index of a tenant, a trace id and two prefixes stays within it."""


def indexed(column: str) -> str:
    """The SQL of what an index holds of a name column: its first ``INDEXED_CHARS``
    characters (``indexed("?")`` for a parameter). A query filtering the column by
    equality says so with :func:`name_equals`, so that both backends' planners use the
    index."""
    return f"substr({column}, 1, {INDEXED_CHARS})"


def name_equals(column: str, name: str) -> tuple[str, tuple[str, ...]]:
    """SQL and parameters matching name ``column`` to ``name`` through its index.

    A name shorter than ``INDEXED_CHARS`` equals the column exactly when it equals the
    column's prefix, so the prefix alone decides, as a plain index lookup whose rows
    the planners estimate well. A longer name matches the prefix, then the whole name;
    ``|| ''`` keeps SQLite from putting the name in place of the column inside the
    prefix (its constant propagation), which would hide the prefix from its planner.
    """
    if len(name) < INDEXED_CHARS:
        return f"{indexed(column)} = ?", (name,)
    return f"{indexed(column)} = {indexed('?')} AND {column} || '' = ?", (name, name)


def group_key(*names: str) -> str:
    """A fixed-size key for a group of name texts (a roll-up table's unique key, which
    cannot hold the names themselves: see ``INDEXED_CHARS``); 128 bits of BLAKE2b."""
    return hashlib.blake2b(orjson.dumps(names), digest_size=16).hexdigest()


@dataclass
class Batch:
    """The pending changes of one projection for one batch of entries.

    ``rows[template]`` are parameter tuples for an INSERT template; ``statements``
    run after the inserts, in order. ``contexts`` are the per-stream JSON contexts
    the projection read or changed (changed ones are written back).
    """

    load_context: Callable[[str], dict[str, Any]]
    query: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]  # reads committed views
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    late_statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    # What a projection keeps from one ``apply`` call to the next within this batch
    # (counts to add up, rows still open), for its ``finish`` to queue.
    carry: dict[str, Any] = field(default_factory=dict)

    def insert(self, template: str, row: tuple[Any, ...]) -> None:
        """Queue one INSERT (templates are batched with executemany)."""
        bucket = self.rows.get(template)
        if bucket is None:
            bucket = self.rows[template] = []
        bucket.append(row)

    def run(self, template: str, params: tuple[Any, ...] = (), *, late: bool = False) -> None:
        """Queue a statement to run after the inserts (``late``: after the others too)."""
        (self.late_statements if late else self.statements).append((template, params))

    def context(self, stream: str) -> dict[str, Any]:
        """The stream's context (mutable; call :meth:`touch` after changing it)."""
        ctx = self.contexts.get(stream)
        if ctx is None:
            ctx = self.contexts[stream] = self.load_context(stream)
        return ctx

    def touch(self, stream: str) -> None:
        """Mark a stream's context as changed: it is written back with the batch."""
        self.changed.add(stream)


class Projection(ABC):
    """A read model: ``name``, ``version``, its tables and how entries change them."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    topics: ClassVar[frozenset[str]]
    tables: ClassVar[tuple[str, ...]]  # slot names, see projections.sql.VIEW_TABLES
    ddl: ClassVar[tuple[str, ...]]  # tables, and the indexes ``apply``'s own statements use
    # Indexes the projection's own statements never use: the read queries' and the
    # unique keys of tables it only inserts into. A full rebuild creates them after
    # loading the rows, which sorts once instead of updating them row by row (and a
    # duplicate key still fails the rebuild).
    query_indexes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    # For a rebuild shared out by stream (projections.parts): tables of counts, whose
    # rows the parts' copies add up, as {table: (key columns, counted columns)} ...
    sums: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    # ... and statements run once the parts' rows are in, for what crosses streams.
    settle: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def apply(self, entries: Sequence[Entry], batch: Batch) -> None:
        """Fold entries (all of this projection's topics, in log order) into the batch.

        One batch's entries may come in several calls, consecutive chunks in log order
        (the projector decodes a chunk at a time): what must see the whole batch waits
        in ``batch.carry`` for :meth:`finish`.
        """

    def finish(self, batch: Batch) -> None:  # noqa: B027 - most projections carry nothing
        """Queue what the batch's entries add up to, once, after its last ``apply``."""


class Unreadable(NamedTuple):
    """A log entry whose stored state is not a record (altered behind the ledger's back)."""

    notification_id: int
    topic: str
    stream: str
    version: int
    reason: str


LogRow = tuple[int, str, str, int, bytes | None]
"""A log row as the backends read it: notification id, topic, stream key, version, state."""


def decode_entries(rows: Sequence[LogRow], *, strict: bool = False
                   ) -> tuple[list[Entry], list[Unreadable]]:
    """Decode log rows of the projected topics (the hot loop of a rebuild), and set
    aside those that are not records of the stream they are stored in: bytes that are
    not a JSON object, or a record naming another tenant, trace or seq (which would
    put its rows in that tenant's views).

    ``strict`` also sets aside records their readers cannot take
    (:func:`ledger.records.decode`): valid JSON altered into another shape. That
    check costs a third of a rebuild, so the projector asks for it only for a batch
    that failed without it (``Projector._fold_and_write``).
    """
    topics, risky, loads = chain.TOPICS, chain.may_hold_big_int, orjson.loads
    if not strict:
        try:
            entries = [Entry(nid, topic, key, version,
                             chain.decode(state) if risky(state) else loads(state))  # type: ignore[arg-type]
                       for nid, topic, key, version, state in rows if topic in topics]
            if all(type(e.record) is dict and _in_place(e) for e in entries):
                return entries, []
        except (ValueError, TypeError, AttributeError):  # not JSON, or NULL: sort them out
            pass
    decode = records.decode if strict else lambda state, topic: chain.decode(state)
    out, bad = [], []
    for nid, topic, key, version, state in rows:
        if topic in topics:
            try:
                entry = Entry(nid, topic, key, version, decode(state, topic))
            except ValueError as exc:
                bad.append(Unreadable(nid, topic, key, version, str(exc)))
                continue
            if _in_place(entry):
                out.append(entry)
            else:
                bad.append(Unreadable(nid, topic, key, version,
                                      records.misplaced(entry.record, topic)))
    return out, bad


def _in_place(entry: Entry) -> bool:
    """Whether a record names the stream (and for a trace event, the seq) it is in."""
    r = entry.record
    if entry.topic == chain.EVENT_TOPIC:
        return r.get("seq") == entry.version and _stream_key(
            chain.TRACE_KIND, r.get("tenant"), r.get("trace_id")) == entry.stream
    kind, name = _TENANT_STREAMS[entry.topic]
    return _stream_key(kind, r.get("tenant"), name) == entry.stream


@functools.lru_cache(maxsize=1 << 16)
def _stream_key(kind: str, tenant: Any, name: Any) -> str | None:
    """The 32-hex key of a stream, None for names that are not strings (~1.5 us a stream;
    65,536 keys took 23 MB)."""
    if type(tenant) is not str or type(name) is not str:
        return None
    try:
        return chain.stream_id(kind, tenant, name).hex
    except UnicodeEncodeError:  # a lone surrogate, read by the stdlib decoder
        return None


_TENANT_STREAMS = {chain.FINDING_TOPIC: (chain.FINDINGS_KIND, chain.FINDINGS_STREAM_NAME),
                   chain.GRANT_TOPIC: (chain.GRANTS_KIND, chain.GRANTS_STREAM_NAME)}


def skipped_rows(backend: Backend, behind: Sequence[Projection],
                 unreadable: Sequence[Unreadable],
                 positions: dict[str, int]) -> list[tuple[Any, ...]]:
    """Rows of ``unreadable_entries`` recording the unreadable entries each projection
    behind them now passes over.

    They are left out of the views, never guessed at; ``projections status``,
    ``audit findings`` and the read commands say so (where: from the catalog).
    """
    if not unreadable:
        return []
    heads = backend.load_heads(list({UUID(hex=u.stream) for u in unreadable}))
    rows = []
    for u in unreadable:
        head = heads.get(UUID(hex=u.stream))
        tenant, name = (head.tenant, head.name) if head else (None, None)
        rows += [(p.name, u.notification_id, tenant, name, u.version, u.reason)
                 for p in behind
                 if u.topic in p.topics and u.notification_id > positions[p.name]]
    return rows


@dataclass(frozen=True)
class ProjectionStatus:
    """Where one projection stands (the ``--json`` of ``projections status``)."""

    name: str
    description: str
    version: int
    built_version: int | None
    position: int
    log_head: int
    lag: int
    rebuild_needed: bool
    unreadable: int  # log entries left out because their stored record cannot be read

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def context_loader(cache: OrderedDict[str, dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """A :class:`Batch`'s ``load_context`` from a projector's cache of contexts: each a
    deep copy, so a batch that fails leaves the cache as it was."""
    def load(stream: str) -> dict[str, Any]:
        context = cache.get(stream)
        return orjson.loads(orjson.dumps(context)) if context else {}
    return load
