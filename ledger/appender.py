"""Appending validated events to their streams: the one write path of the ledger.

``Appender.stage`` classifies each event against its stream (a new event at the
next seq, a duplicate of a stored or staged one, a conflict, or a gap), folds
memory, chains the record and queues it; ``flush`` writes everything staged, with
catalog heads and any findings, in one transaction; findings, which every writer
appends to its tenant's findings stream, are chained there under the store's write
lock, on the head the last writer left. A conflict is recorded as a
finding once per attempted content: re-ingesting the file that carried it (to
resume after a crash), or another writer ingesting it at the same time, rejects the
line again but records nothing new (what other writers recorded is read under the
write lock too). Ingest and ``TraceWriter`` both use it, so the rules live in one place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from hashlib import sha256
from typing import Any, Literal, NamedTuple
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger import chain, conflict_attempts, records
from ledger.backends.base import LockedReads, StreamHead
from ledger.conflict_attempts import (
    Attempt,
    AttemptSet,
    RecordedConflicts,
    attempt,
    attempts_in,
)
from ledger.errors import UnreadableRecordError
from ledger.events import TraceEvent
from ledger.memory import EMPTY_MEMORY_HASH, MemoryState, apply_record, apply_write
from ledger.store import Store

Status = Literal["accepted", "duplicate", "rejected"]
_Key = tuple[str, str]  # (tenant, trace_id): how the appender finds a trace's stream
CACHE_SIZE = 4096  # streams whose heads and memory an appender keeps between batches


class Outcome(NamedTuple):
    """What became of one submitted event (a named tuple: one is made per event)."""

    status: Status
    reason: str | None = None
    kind: str | None = None  # for rejections: "gap", "conflict" or "unreadable"
    memory_hash: str | None = None  # for accepted events: the ledger's memory hash
    record_hash: str | None = None
    error: UnreadableRecordError | None = None  # why the trace cannot take an event


@dataclass(slots=True)
class _Stream:
    """What the appender knows of one stream: its head (mutable here) and memory."""

    stream_id: UUID
    tenant: str
    name: str
    last_seq: int
    head_hash: str
    status: str
    agent_owner: str | None
    first_ts: str | None
    last_ts: str | None
    memory: dict[str, MemoryState] | None = None  # None until folded from the store
    pending: dict[int, bytes] = field(default_factory=dict)  # seq -> staged wire JSON
    owned: set[str] = field(default_factory=set)  # scopes copied for this batch

    @classmethod
    def from_head(cls, head: StreamHead, memory: dict[str, MemoryState] | None) -> _Stream:
        return cls(head.stream_id, head.tenant, head.name, head.last_seq, head.head_hash,
                   head.status, head.agent_owner, head.first_ts, head.last_ts, memory)

    def copy(self) -> _Stream:
        """A copy to stage changes in: memory scopes shared until written (``owned``)."""
        assert self.memory is not None
        return _Stream(self.stream_id, self.tenant, self.name, self.last_seq, self.head_hash,
                       self.status, self.agent_owner, self.first_ts, self.last_ts,
                       dict(self.memory))

    def head(self) -> StreamHead:
        return StreamHead(self.stream_id, chain.TRACE_KIND, self.tenant, self.name,
                          self.last_seq, self.head_hash, self.status, self.agent_owner,
                          self.first_ts, self.last_ts)


class Appender:
    """Stages events against stream heads and writes them in batches."""

    def __init__(self, store: Store, *, cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self.backend = store.backend
        self.cache_size = cache_size
        # Streams keyed by (tenant, trace_id): a tuple of two strings hashes in C.
        self._cache: OrderedDict[_Key, _Stream] = OrderedDict()
        self._dirty: dict[_Key, _Stream] = {}
        self._staged: list[StoredEvent] = []
        self._findings: list[dict[str, Any]] = []
        self._conflicts: dict[str, RecordedConflicts] = {}  # per tenant: recorded or queued
        self.findings_written = 0  # by the last flush

    @property
    def staged(self) -> int:
        """How many events are staged and not yet flushed."""
        return len(self._staged)

    @property
    def pending_findings(self) -> int:
        """How many findings are queued for the next flush."""
        return len(self._findings)

    def next_seq(self, tenant: str, trace_id: str) -> int:
        """The seq the trace's next event must have (counting staged events)."""
        key = (tenant, trace_id)
        stream = self._dirty.get(key) or self._cache.get(key)
        if stream is not None:
            return stream.last_seq + 1
        sid = chain.trace_stream_id(tenant, trace_id)
        head = self.backend.load_heads([sid]).get(sid)
        return (head.last_seq if head else 0) + 1

    def stage(
        self, events: Sequence[TraceEvent], *, fill_memory_hash: bool = False
    ) -> list[Outcome]:
        """Classify and queue events; nothing is written until :meth:`flush`."""
        keys = [(e.tenant, e.trace_id) for e in events]
        views = self._load(keys, events)
        dirty = self._dirty
        outcomes: list[Outcome | None] = []
        to_compare: list[tuple[int, UUID]] = []
        unreadable: dict[_Key, Outcome] = {}  # traces whose memory cannot be known
        for i, (key, event) in enumerate(zip(keys, events, strict=True)):
            stream = dirty.get(key) or views[key]
            last = stream.last_seq
            if event.seq > last and key in unreadable:  # not a gap: nothing can follow
                outcomes.append(unreadable[key])
            elif event.seq == last + 1:
                if key not in dirty:
                    try:
                        stream = self._open_for_write(key, stream)
                    except UnreadableRecordError as exc:
                        unreadable[key] = Outcome("rejected", f"cannot append to {exc}",
                                                  "unreadable", error=exc)
                        outcomes.append(unreadable[key])
                        continue
                outcomes.append(self._accept(stream, event, fill_memory_hash))
            elif event.seq > last + 1:
                outcomes.append(Outcome("rejected", _gap_reason(event, last), "gap"))
            elif event.seq in stream.pending:
                outcomes.append(self._compare(event, chain.decode(stream.pending[event.seq])))
            else:
                outcomes.append(None)
                to_compare.append((i, stream.stream_id))
        for i, record in self._stored_records(to_compare, events).items():
            outcomes[i] = self._compare(events[i], chain.wire_part(record))
        return [o for o in outcomes if o is not None]

    def flush(self, *, notify: bool = True) -> int:
        """Write everything staged in one transaction; return how many events were written.

        Then (unless ``notify`` is false: the caller calls ``store.committed()`` itself)
        the store's commit listeners run, e.g. projections catching up.

        On :class:`ConcurrencyError` nothing is written and the staged work is dropped
        (the streams involved are reloaded on next use). ``findings_written`` then says
        how many findings the flush wrote: fewer than were queued when another writer
        recorded the same conflict meanwhile.
        """
        self.findings_written = 0
        if not self._staged and not self._findings:
            return 0
        heads = [s.head() for s in self._dirty.values()]
        findings, self._findings = self._findings, []
        try:  # findings are chained under the write lock: other writers append to them too
            self.backend.append(self._staged, heads,
                                shared=partial(self._chain_findings, findings) if findings
                                else None)
        except BaseException:  # ConcurrencyError included: the caller re-stages
            self.discard()
            raise
        for key, stream in self._dirty.items():
            stream.pending.clear()
            stream.owned.clear()
            self._remember(key, stream)
        written = len(self._staged)
        self._dirty.clear()
        self._staged.clear()
        if notify:
            self.store.committed()
        return written

    def discard(self) -> None:
        """Drop staged work and forget the streams it touched."""
        for key in self._dirty:
            self._cache.pop(key, None)
        self._dirty.clear()
        self._staged.clear()
        self._findings.clear()
        self._conflicts.clear()  # it may hold queued ones: read again from the store

    def record_finding(
        self, tenant: str, kind: str, *, trace_id: str | None, seq: int | None, detail: str,
        evidence: Any = None,
    ) -> None:
        """Queue an integrity finding; it is written with the next flush."""
        self._findings.append({
            "tenant": tenant, "finding": kind, "trace_id": trace_id, "seq": seq,
            "detail": detail, "recorded_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "evidence": evidence,
        })

    # -- internals ---------------------------------------------------------------

    def _load(self, keys: Sequence[_Key], events: Sequence[TraceEvent]) -> dict[_Key, _Stream]:
        """The streams of a batch, from the cache or the catalog (new ones created)."""
        views: dict[_Key, _Stream] = {}
        missing: list[_Key] = []
        cache = self._cache
        for key in dict.fromkeys(keys):
            cached = cache.get(key)
            if cached is None:
                missing.append(key)
            else:
                cache.move_to_end(key)
                views[key] = cached
        if missing:
            ids = [chain.trace_stream_id(*key) for key in missing]
            found = self.backend.load_heads(ids)
            wanted = set(missing)
            firsts: dict[_Key, TraceEvent] = {}  # a new stream's owner is its first event's
            for key, e in zip(keys, events, strict=True):
                if key in wanted:
                    firsts.setdefault(key, e)
            for key, sid in zip(missing, ids, strict=True):
                head = found.get(sid)
                if head is None:
                    e = firsts[key]
                    head = StreamHead(sid, chain.TRACE_KIND, e.tenant, e.trace_id, 0,
                                      chain.GENESIS_HASH, agent_owner=e.agent_owner)
                views[key] = _Stream.from_head(head, {} if head.last_seq == 0 else None)
                self._remember(key, views[key])
        return views

    def _remember(self, key: _Key, stream: _Stream) -> None:
        self._cache[key] = stream
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _open_for_write(self, key: _Key, base: _Stream) -> _Stream:
        """Copy-on-write: staged changes go to a copy until the flush succeeds."""
        if base.memory is None:
            base.memory = self._fold_memory(base.stream_id, key)
        stream = base.copy()
        self._dirty[key] = stream
        return stream

    def _fold_memory(self, sid: UUID, key: _Key) -> dict[str, MemoryState]:
        """The stream's memory from its stored records (UnreadableRecordError names
        one altered so that it cannot be read)."""
        memory: dict[str, MemoryState] = {}
        for version, state in self.backend.read_stream(sid):
            apply_record(memory, records.decode_stored(
                state, tenant=key[0], name=key[1], seq=version))
        return memory

    def _accept(self, stream: _Stream, event: TraceEvent, fill_memory_hash: bool) -> Outcome:
        memory = stream.memory
        assert memory is not None
        scope_name = event.write_scope
        state = memory.get(scope_name)
        if event.event == "CALLBACK_MEMORY_WRITE":
            if scope_name not in stream.owned:
                state = state.copy() if state is not None else MemoryState()
                memory[scope_name] = state
                stream.owned.add(scope_name)
            assert state is not None
            apply_write(state, event.payload)
        ledger_hash = state.hash() if state is not None else EMPTY_MEMORY_HASH
        claim, wire_json = event.memory_hash, event.wire_json
        if claim is None:
            if fill_memory_hash:
                wire_json = chain.encode({**event.record(), "memory_hash": ledger_hash})
        elif claim != ledger_hash:
            self.record_finding(
                event.tenant, "memory_hash_mismatch", trace_id=event.trace_id, seq=event.seq,
                detail=f"runtime claimed {claim} for {scope_name} but its logged "
                       f"writes imply {ledger_hash}",
            )
        state_bytes = chain.event_state(wire_json, ledger_memory_hash=ledger_hash,
                                        prev_hash=stream.head_hash)
        digest = "sha256:" + sha256(state_bytes).hexdigest()  # chain.record_hash, inlined
        ts = event.ts_utc
        stream.last_seq, stream.head_hash = event.seq, digest
        if event.event == "EXEC_TERMINATED":
            stream.status = "terminated"
        if stream.agent_owner is None:
            stream.agent_owner = event.agent_owner
        first, last = stream.first_ts, stream.last_ts
        if first is None or ts < first:
            stream.first_ts = ts
        if last is None or ts > last:
            stream.last_ts = ts
        stream.pending[event.seq] = wire_json
        self._staged.append(StoredEvent(stream.stream_id, event.seq, chain.EVENT_TOPIC,
                                        state_bytes))
        return Outcome("accepted", memory_hash=ledger_hash, record_hash=digest)

    def _compare(self, event: TraceEvent, stored_wire: dict[str, Any]) -> Outcome:
        submitted = event.record()
        if submitted["memory_hash"] is None:  # an omitted claim matches any stored one
            submitted = {**submitted, "memory_hash": stored_wire.get("memory_hash")}
        if _same(stored_wire, submitted):
            return Outcome("duplicate")
        changed = sorted(k for k in set(submitted) | set(stored_wire)
                         if not _same(submitted.get(k), stored_wire.get(k)))
        reason = (f"conflict: seq {event.seq} of trace {event.trace_id!r} (tenant "
                  f"{event.tenant!r}) is already stored with different content "
                  f"(fields differ: {', '.join(changed)})")
        this = attempt(event.trace_id, event.seq, submitted)
        known = self._recorded_conflicts(event.tenant)
        if this not in known:  # the same attempt again (a re-run of its file): once
            known.add(this)
            self.record_finding(event.tenant, "conflict", trace_id=event.trace_id,
                                seq=event.seq, detail=reason, evidence=submitted)
        return Outcome("rejected", reason, "conflict")

    def _recorded_conflicts(self, tenant: str) -> AttemptSet:
        """The tenant's conflict findings, recorded or queued, as attempts (the stream
        read a page at a time, up to the catalog's head)."""
        known = self._conflicts.get(tenant)
        if known is None:
            sid = chain.findings_stream_id(tenant)
            head = self.backend.load_heads([sid]).get(sid)
            attempts, upto = AttemptSet(), 0
            while head is not None and upto < head.last_seq:
                last = min(upto + conflict_attempts.PAGE, head.last_seq)
                attempts.update(attempts_in(
                    state for _, state in self.backend.read_stream(sid, gt=upto, lte=last)))
                upto = last
            known = self._conflicts[tenant] = RecordedConflicts(attempts, upto)
        return known.attempts

    def _chain_findings(
        self, findings: list[dict[str, Any]], reads: LockedReads
    ) -> tuple[list[StoredEvent], list[StreamHead]]:
        """The queued findings as events (a :data:`~ledger.backends.base.SharedAppend`),
        less the conflicts another writer recorded since this one last read them."""
        ids = {t: chain.findings_stream_id(t) for t in dict.fromkeys(f["tenant"] for f in findings)}
        heads = reads.heads(list(ids.values()))
        others: set[tuple[str, Attempt]] = set()
        for tenant, sid in ids.items():
            known, head = self._conflicts.get(tenant), heads.get(sid)
            if known is not None and head is not None and head.last_seq > known.upto:
                new = list(attempts_in(state for _, state in reads.states(sid, known.upto)))
                known.attempts.update(new)
                known.upto = head.last_seq
                others.update((tenant, a) for a in new)
        if others:
            findings = [f for f in findings if f["finding"] != "conflict" or (
                f["tenant"], attempt(f["trace_id"], f["seq"], f["evidence"])) not in others]
        events, left = _finding_events(findings, ids, heads)
        for head in left:  # what this writer appends, it knows
            if (known := self._conflicts.get(head.tenant)) is not None:
                known.upto = head.last_seq
        self.findings_written = len(events)
        return events, left

    def _stored_records(
        self, wanted: list[tuple[int, UUID]], events: Sequence[TraceEvent]
    ) -> dict[int, dict[str, Any]]:
        by_stream: dict[UUID, list[int]] = {}
        for i, sid in wanted:
            by_stream.setdefault(sid, []).append(i)
        found: dict[int, dict[str, Any]] = {}
        for sid, indexes in by_stream.items():
            seqs = [events[i].seq for i in indexes]
            stored = dict(self.backend.read_stream(sid, gt=min(seqs) - 1, lte=max(seqs)))
            for i in indexes:
                state = stored.get(events[i].seq)
                found[i] = chain.decode(state) if state is not None else {}
        return found


def _finding_events(
    findings: list[dict[str, Any]], ids: dict[str, UUID], known: dict[UUID, StreamHead]
) -> tuple[list[StoredEvent], list[StreamHead]]:
    """The findings as events of their tenants' findings streams (``ids``: by tenant),
    chained on the heads ``known`` (read under the write lock), and the heads they leave."""
    events: list[StoredEvent] = []
    heads: list[StreamHead] = []
    for tenant, sid in ids.items():
        mine = [f for f in findings if f["tenant"] == tenant]
        if not mine:  # each of them a conflict another writer recorded
            continue
        head = known.get(sid) or StreamHead(sid, chain.FINDINGS_KIND, tenant,
                                            chain.FINDINGS_STREAM_NAME, 0, chain.GENESIS_HASH)
        for finding in mine:
            state = chain.encode({"v": chain.RECORD_VERSION, **finding,
                                  "prev_hash": head.head_hash})
            ts = finding["recorded_at"]
            head = head.advanced(last_seq=head.last_seq + 1, head_hash=chain.record_hash(state),
                                 first_ts=head.first_ts or ts, last_ts=ts)
            events.append(StoredEvent(sid, head.last_seq, chain.FINDING_TOPIC, state))
        heads.append(head)
    return events, heads


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ``==``, ``1``, ``1.0`` and ``true`` all differ."""
    return chain.encode(a, sort_keys=True) == chain.encode(b, sort_keys=True)


def _gap_reason(event: TraceEvent, last: int) -> str:
    return (f"out of order: seq {event.seq} would leave a gap in trace {event.trace_id!r} "
            f"(tenant {event.tenant!r}), which has {last} event(s); expected seq {last + 1}")
