"""Reading traces back: one trace's events in order, and lists of traces."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger import chain, records
from ledger.backends.base import StreamHead, StreamQuery
from ledger.errors import NotFoundError, UsageError
from ledger.payloads import is_failure_point
from ledger.store import Store
from ledger.timestamps import normalize_ts


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One row of ``agentledger trace list``."""

    tenant: str
    trace_id: str
    status: str
    events: int
    agent_owner: str | None
    first_ts: str | None
    last_ts: str | None

    @classmethod
    def from_head(cls, head: StreamHead) -> TraceSummary:
        return cls(head.tenant, head.name, head.status, head.last_seq, head.agent_owner,
                   head.first_ts, head.last_ts)

    def as_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "trace_id": self.trace_id, "status": self.status,
                "events": self.events, "agent_owner": self.agent_owner,
                "first_ts": self.first_ts, "last_ts": self.last_ts}


@dataclass(frozen=True, slots=True)
class TraceView:
    """A whole trace: its summary and its stored records in seq order."""

    summary: TraceSummary
    records: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {**self.summary.as_json(), "events": [event_json(r) for r in self.records]}


def event_json(record: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` shape of one stored event."""
    return {
        "seq": record["seq"], "event": record["event"], "ts": record["ts"],
        "agent_owner": record["agent_owner"], "executed_by": record["executed_by"],
        "write_scope": record["write_scope"], "memory_hash": record["memory_hash"],
        "ledger_memory_hash": record["ledger_memory_hash"],
        "failure": is_failure_point(record["event"], record["payload"]),
        "payload": record["payload"],
    }


def get_trace(store: Store, tenant: str, trace_id: str) -> TraceView:
    """A trace of a tenant, or NotFoundError."""
    summary = trace_summary(store, tenant, trace_id)
    return TraceView(summary, list(iter_records(store, tenant, trace_id)))


def trace_summary(store: Store, tenant: str, trace_id: str) -> TraceSummary:
    """The catalog's summary of a trace of a tenant, or NotFoundError."""
    sid = chain.trace_stream_id(tenant, trace_id)
    head = store.backend.load_heads([sid]).get(sid)
    if head is None:
        raise NotFoundError(f"no trace {trace_id!r} in tenant {tenant!r}")
    return TraceSummary.from_head(head)


def iter_records(store: Store, tenant: str, trace_id: str, *,
                 seqs: tuple[int, int] | None = None) -> Generator[dict[str, Any], None, None]:
    """A trace's stored records in seq order, decoded one at a time as they are read
    (a trace of large events is never held whole); UnreadableRecordError names one
    that is not a record. ``seqs`` (first, last; inclusive) keeps to those records,
    read ``WINDOW_PAGE`` at a time: the others are neither read nor decoded.

    Close it (``contextlib.closing``) before the store if it may be left part-way: the
    scan it reads holds a transaction of the store's."""
    sid = chain.trace_stream_id(tenant, trace_id)
    rows: Generator[tuple[int, bytes], None, None] = (
        ((row.version, row.state) for row in store.backend.iter_rows([sid])) if seqs is None
        else _window(store, sid, *seqs))
    try:
        for version, state in rows:
            yield records.decode_stored(state, tenant=tenant, name=trace_id, seq=version)
    finally:  # now, not once an error's traceback lets go of it, the store maybe closed
        rows.close()


WINDOW_PAGE = 32  # records of a window read at a time (events may take up to 256 MiB)


def _window(store: Store, sid: UUID, first: int, last: int
            ) -> Generator[tuple[int, bytes], None, None]:
    for after in range(first - 1, last, WINDOW_PAGE):
        yield from store.backend.read_stream(sid, gt=after, lte=min(after + WINDOW_PAGE, last))


def list_traces(
    store: Store, tenant: str, *, status: str | None = None, since: str | None = None,
    until: str | None = None, limit: int | None = None,
) -> list[TraceSummary]:
    """Traces of a tenant, oldest first; ``since``/``until`` bound their activity."""
    return list(iter_traces(store, tenant, status=status, since=since, until=until,
                            limit=limit))


def iter_traces(
    store: Store, tenant: str, *, status: str | None = None, since: str | None = None,
    until: str | None = None, limit: int | None = None,
) -> Generator[TraceSummary, None, None]:
    """:func:`list_traces` a trace at a time, for output of any size (close it before
    the store: see ``Backend.iter_streams``)."""
    query = StreamQuery(tenant=tenant, status=status, since=parse_bound(since, "since"),
                        until=parse_bound(until, "until"), limit=limit)
    heads = store.backend.iter_streams(query)
    try:
        yield from map(TraceSummary.from_head, heads)
    finally:
        heads.close()


def parse_window(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """``--since``/``--until`` of an event window (``since <= ts <= until``), normalised;
    UsageError when since is after until (the window would hold nothing: the two were
    most likely swapped)."""
    lo, hi = parse_bound(since, "since"), parse_bound(until, "until")
    if lo is not None and hi is not None and lo > hi:
        raise UsageError(f"--since {since!r} is after --until {until!r}: the window holds "
                         "nothing")
    return lo, hi


def parse_bound(value: str | None, name: str) -> str | None:
    """A ``--since``/``--until`` value (RFC 3339 or YYYY-MM-DD) as a normalised UTC string."""
    if value is None:
        return None
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00Z" if name == "since" else "T23:59:59.999999Z"
    try:
        return normalize_ts(text)
    except ValueError:
        raise UsageError(
            f"--{name} {value!r} is not a date (YYYY-MM-DD) or RFC 3339 timestamp"
        ) from None


def list_findings(store: Store, tenant: str) -> list[dict[str, Any]]:
    """The integrity findings the ledger recorded for a tenant, oldest first."""
    stored = store.backend.read_stream(chain.findings_stream_id(tenant))
    keys = ("tenant", "trace_id", "seq", "finding", "detail", "recorded_at")
    found = (records.decode_stored(state, tenant=tenant, name=chain.FINDINGS_STREAM_NAME,
                                   seq=version, topic=chain.FINDING_TOPIC)
             for version, state in stored)
    return [{k: r.get(k) for k in keys} for r in found]
