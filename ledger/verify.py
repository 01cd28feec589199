"""Verification: re-derive every chain and memory hash from the stored bytes.

For each stream, rows are read in version order and checked: versions run 1..n
with no hole, each record's ``seq`` is its version, its ``prev_hash`` is the hash of
the previous row's bytes, it names the stream it is stored in, notification ids
rise with versions, the ledger's memory hash matches a fresh fold of the logged
writes, and the last hash and length match the catalog's head. Anything else is a
*problem* (the record was altered behind the ledger's back). A runtime's claimed
``memory_hash`` that differs from the fold is a *finding*: the record is intact,
the runtime's own claim was wrong. See ``docs/VERIFY.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from ledger import chain
from ledger.backends.base import StoredRow, StreamHead
from ledger.errors import NotFoundError
from ledger.events import DEFAULT_TENANT
from ledger.memory import MemoryState, apply_record, scope_hash
from ledger.replays import ReplayCheck
from ledger.store import Store


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the stored record."""

    tenant: str | None
    trace_id: str | None
    seq: int | None
    kind: str
    detail: str


@dataclass
class VerifyReport:
    """The result of ``agentledger verify`` (its ``--json`` output)."""

    streams: int = 0
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    findings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "streams": self.streams, "events": self.events,
                "problems": [asdict(p) for p in self.problems],
                "findings": [asdict(p) for p in self.findings]}


def verify(
    store: Store, *, tenant: str | None = None, trace_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check the chains and memory hashes of all streams (or one tenant's, or one trace)."""
    backend = store.backend
    catalog = {h.stream_id: h for h in backend.iter_catalog(tenant)}
    ids: list[UUID] | None = None
    if trace_id is not None:
        sid = chain.trace_stream_id(tenant or DEFAULT_TENANT, trace_id)
        if sid not in catalog:
            raise NotFoundError(f"no trace {trace_id!r} in tenant {tenant or DEFAULT_TENANT!r}")
        catalog = {sid: catalog[sid]}
        ids = [sid]
    elif tenant is not None:
        ids = list(catalog)
    report = VerifyReport()
    seen: set[UUID] = set()
    for sid, rows in _by_stream(backend.iter_rows(ids)):
        seen.add(sid)
        count = _StreamCheck(sid, catalog.get(sid), report, store).run(rows)
        report.streams += 1
        report.events += count
        if progress is not None:
            progress(count)
    for sid, head in catalog.items():
        if sid not in seen:
            report.problems.append(Problem(head.tenant, head.name, None, "missing_stream",
                                           f"catalog lists {head.last_seq} event(s), none stored"))
    return report


_TENANT_STREAMS: dict[str, tuple[Callable[[str], UUID], str, str]] = {
    chain.FINDING_TOPIC: (chain.findings_stream_id, chain.FINDINGS_STREAM_NAME, "finding"),
    chain.GRANT_TOPIC: (chain.grants_stream_id, chain.GRANTS_STREAM_NAME, "grant"),
}
"""Topics of the per-tenant streams: (stream id of a tenant, stream name, what a row is)."""


def _by_stream(rows: Iterator[StoredRow]) -> Iterator[tuple[UUID, list[StoredRow]]]:
    current: UUID | None = None
    group: list[StoredRow] = []
    for row in rows:
        if row.stream_id != current:
            if current is not None:
                yield current, group
            current, group = row.stream_id, []
        group.append(row)
    if current is not None:
        yield current, group


class _StreamCheck:
    """Walks one stream's rows in version order, collecting problems."""

    def __init__(self, sid: UUID, head: StreamHead | None, report: VerifyReport,
                 store: Store) -> None:
        self.sid = sid
        self.replay = ReplayCheck(store, self.problem)
        self.head = head
        self.report = report
        self.tenant: str | None = head.tenant if head else None
        self.name: str | None = head.name if head else None
        self.memory: dict[str, MemoryState] = {}
        self.terminated = False

    def problem(self, seq: int | None, kind: str, detail: str) -> None:
        self.report.problems.append(Problem(self.tenant, self.name, seq, kind, detail))

    def run(self, rows: list[StoredRow]) -> int:
        prev, expected, last_nid = chain.GENESIS_HASH, 1, 0
        for row in rows:
            if row.version != expected:
                self.problem(expected, "missing_event",
                             f"versions {expected}..{row.version - 1} are not stored")
            if row.notification_id <= last_nid:
                self.problem(row.version, "order_mismatch",
                             f"notification id {row.notification_id} is not after {last_nid}")
            self.check_row(row, prev)
            prev, expected, last_nid = chain.record_hash(row.state), row.version + 1, max(
                last_nid, row.notification_id)
        self.check_head(expected - 1, prev)
        return len(rows)

    def check_row(self, row: StoredRow, prev: str) -> None:
        try:
            record = chain.decode(row.state)
        except ValueError as exc:
            self.problem(row.version, "unreadable_record", f"stored bytes are not a record: {exc}")
            return
        tenant_stream = _TENANT_STREAMS.get(row.topic)
        if self.tenant is None:
            self.tenant = record.get("tenant")
            self.name = tenant_stream[1] if tenant_stream else record.get(
                "replay_trace_id", record.get("trace_id"))
        if record.get("prev_hash") != prev:
            self.problem(row.version, "chain_broken",
                         f"prev_hash is {record.get('prev_hash')}, the previous record hashes "
                         f"to {prev}")
        if row.topic == chain.EVENT_TOPIC:
            self.check_event(row, record)
        elif row.topic == chain.REPLAY_TOPIC:
            name = record.get("replay_trace_id" if row.version == 1 else "trace_id")
            if chain.replay_stream_id(str(record.get("tenant")), str(name)) != self.sid:
                self.problem(row.version, "identity_mismatch",
                             f"replay record names tenant {record.get('tenant')!r} replay "
                             f"{name!r}, not this stream")
            self.replay.row(row.version, record)
        elif tenant_stream is not None:
            stream_of, name, what = tenant_stream
            if stream_of(str(record.get("tenant"))) != self.sid:
                self.problem(row.version, "identity_mismatch",
                             f"{what} is not stored in its tenant's {name} stream")
        else:
            self.problem(row.version, "unknown_topic", f"topic {row.topic!r}")

    def check_event(self, row: StoredRow, record: dict[str, Any]) -> None:
        if record.get("seq") != row.version:
            self.problem(row.version, "seq_mismatch",
                         f"record says seq {record.get('seq')}, stored at position {row.version}")
        self.terminated = self.terminated or record.get("event") == "EXEC_TERMINATED"
        tenant, trace = record.get("tenant"), record.get("trace_id")
        if not isinstance(tenant, str) or not isinstance(trace, str) or (
            chain.trace_stream_id(tenant, trace) != self.sid
        ):
            self.problem(row.version, "identity_mismatch",
                         f"record names tenant {tenant!r} trace {trace!r}, not this stream")
            return
        scope_name = str(record.get("write_scope"))
        try:
            apply_record(self.memory, record)
        except Exception as exc:  # an altered payload may not even be a write
            self.problem(row.version, "unreadable_record", f"memory write: {exc}")
        computed = scope_hash(self.memory, scope_name)
        if record.get("ledger_memory_hash") != computed:
            self.problem(row.version, "ledger_memory_hash_mismatch",
                         f"record says {record.get('ledger_memory_hash')}, the logged writes "
                         f"of {scope_name} give {computed}")
        claimed = record.get("memory_hash")
        if claimed is not None and claimed != computed:
            self.report.findings.append(Problem(
                tenant, trace, row.version, "memory_hash_mismatch",
                f"runtime claimed {claimed} for {scope_name}; its logged writes give {computed}"))

    def check_head(self, last: int, last_hash: str) -> None:
        if self.head is None:
            self.problem(None, "orphan_stream", "stored events have no catalog entry")
            return
        head = self.head
        if chain.stream_id(head.kind, head.tenant, head.name) != self.sid:
            self.problem(None, "catalog_mismatch",
                         f"catalog names {head.kind} {head.name!r} of tenant {head.tenant!r}, "
                         "which is not this stream")
        if head.kind == chain.TRACE_KIND and (head.status == "terminated") != self.terminated:
            self.problem(None, "catalog_mismatch",
                         f"catalog status is {head.status!r} but the trace "
                         f"{'has' if self.terminated else 'has no'} EXEC_TERMINATED")
        if self.head.last_seq != last:
            self.problem(last, "length_mismatch",
                         f"catalog says {self.head.last_seq} event(s), {last} stored")
        elif self.head.head_hash != last_hash:
            self.problem(last, "head_mismatch",
                         f"catalog head is {self.head.head_hash}, the last record hashes to "
                         f"{last_hash}")
