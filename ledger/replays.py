"""Stored replays: their record format, writing, reading and verification.

A replay is its own stream (kind ``replay``, topic ``agentledger.replay.v1``),
named ``<source trace id>~replay-<n>``. Version 1 is the *link* record (source,
fork, the source's record hash before the fork, policy, outcome sources, who and
why); versions 2.. are the replay's events, ``seq`` numbered on from the fork.
Everything is hash-chained like any stream. The source stream is never written.
Replays are computed by the ``replay`` package; this module only stores and
checks them, so that ``verify`` covers them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import StoredEvent

from ledger import chain
from ledger.backends.base import StreamHead, StreamQuery
from ledger.errors import ConcurrencyError, NotFoundError, UnreadableRecordError
from ledger.events import parse_event
from ledger.memory import MemoryState, apply_record, scope_hash
from ledger.records import LINK_KIND, decode, decode_stored, record_problem
from ledger.store import Store
from ledger.timestamps import normalize_ts

_ATTEMPTS = 20


@dataclass(frozen=True)
class StoredReplay:
    """A replay as stored: its link record and its events (wire form)."""

    name: str
    link: dict[str, Any]
    events: list[dict[str, Any]]


def source_hash_before(store: Store, tenant: str, trace_id: str, fork_seq: int) -> str:
    """The record hash of the source's event at ``fork_seq - 1`` (genesis for a fork at 1)."""
    if fork_seq <= 1:
        return chain.GENESIS_HASH
    sid = chain.trace_stream_id(tenant, trace_id)
    rows = store.backend.read_stream(sid, gt=fork_seq - 2, lte=fork_seq - 1)
    if not rows:
        raise NotFoundError(f"trace {trace_id!r} of tenant {tenant!r} has no seq {fork_seq - 1}")
    return chain.record_hash(rows[0][1])


def write_replay(store: Store, link: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """Store a replay (link fields + events in wire form); return its trace id.

    ``link`` needs ``tenant``, ``source_trace_id`` and ``fork_seq``; the events are
    validated against the contract, their ``trace_id`` set to the replay's name.
    """
    return write_replays(store, [(link, events)])[0]


def write_replays(store: Store,
                  replays: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[str]:
    """Store several replays (each as :func:`write_replay` takes it) in one transaction;
    return their trace ids, in order. Two replays of the same source take its next two
    free numbers. A saved backtest stores a chunk of traces this way: one commit, one
    name lookup and one catch-up of the views for the chunk, not for each replay.
    """
    if not replays:
        return []
    sources = [(link["tenant"], link["source_trace_id"]) for link, _ in replays]
    for _ in range(_ATTEMPTS):
        names = _free_names(store, sources)
        stored: list[StoredEvent] = []
        heads: list[StreamHead] = []
        for name, (link, events) in zip(names, replays, strict=True):
            records, head = _records(name, link, events)
            stored += records
            heads.append(head)
        try:
            store.backend.append(stored, heads)
        except ConcurrencyError:  # another writer took a name meanwhile: look again
            continue
        store.committed()
        return names
    raise ConcurrencyError(f"could not find free replay names for {sources[0][1]!r}")


NAMES_AT_ONCE = 16


def _free_names(store: Store, sources: Sequence[tuple[str, str]]) -> list[str]:
    """For each (tenant, source), in order, ``<source>~replay-<n>`` for the first n no
    stream of the tenant has and no earlier entry of ``sources`` is given.

    The names are looked up by their stream ids, every source's in one query: about
    ``NAMES_AT_ONCE`` in all (at least as many a source as it needs), twice as many a
    source each round for the sources that need more. Listing the tenant's replays to
    find them made each write cost ~9 µs per replay stored (28 ms a replay at 3,000 on
    SQLite), a saved backtest the square of its traces.
    """
    wanted = Counter(sources)
    found: dict[tuple[str, str], list[str]] = {key: [] for key in wanted}
    first = dict.fromkeys(wanted, 1)
    step = {key: max(n, -(-NAMES_AT_ONCE // len(wanted))) for key, n in wanted.items()}
    while pending := [key for key in wanted if len(found[key]) < wanted[key]]:
        candidates = [(key, f"{key[1]}~replay-{n}") for key in pending
                      for n in range(first[key], first[key] + step[key])]
        ids = [chain.replay_stream_id(key[0], name) for key, name in candidates]
        stored = store.backend.load_heads(ids)
        for (key, name), sid in zip(candidates, ids, strict=True):
            if sid not in stored and len(found[key]) < wanted[key]:
                found[key].append(name)
        for key in pending:
            first[key] += step[key]
            step[key] *= 2
    given = {key: iter(names) for key, names in found.items()}
    return [next(given[key]) for key in sources]


def _records(name: str, link: dict[str, Any],
             events: list[dict[str, Any]]) -> tuple[list[StoredEvent], StreamHead]:
    tenant = link["tenant"]
    sid = chain.replay_stream_id(tenant, name)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    prev, out = chain.GENESIS_HASH, []
    first_ts = last_ts = now
    records = [{"v": chain.RECORD_VERSION, "kind": LINK_KIND, **link, "replay_trace_id": name,
                "recorded_at": now}]
    for e in events:
        wire = parse_event({**e, "trace_id": name}).record()
        records.append(chain.event_record(wire, ledger_memory_hash=e["memory_hash"],
                                          prev_hash=""))
        first_ts, last_ts = min(first_ts, normalize_ts(wire["ts"])), max(
            last_ts, normalize_ts(wire["ts"]))
    for version, record in enumerate(records, 1):
        record["prev_hash"] = prev
        state = chain.encode(record)
        prev = chain.record_hash(state)
        out.append(StoredEvent(sid, version, chain.REPLAY_TOPIC, state))
    status = link.get("replay_status", "completed")
    head = StreamHead(sid, chain.REPLAY_KIND, tenant, name, len(records), prev, status,
                      link.get("agent_owner"), first_ts, last_ts)
    return out, head


def list_replays(store: Store, tenant: str, *, source: str | None = None) -> list[dict[str, Any]]:
    """The link records of a tenant's replays (of one source trace), oldest first (by
    the time each was recorded; the catalog orders them by their events' times)."""
    heads = store.backend.list_streams(StreamQuery(tenant, kind=chain.REPLAY_KIND))
    firsts = store.backend.read_states([head.stream_id for head in heads], 1)  # one query
    links = []
    for head in heads:
        if (state := firsts.get(head.stream_id)) is not None:
            link = _link(state, tenant, head.name)
            if source is None or link.get("source_trace_id") == source:
                links.append(link)
    links.sort(key=lambda link: str(link.get("recorded_at", "")))
    return links


def read_replay(store: Store, tenant: str, name: str) -> StoredReplay:
    """One stored replay, or NotFoundError."""
    sid = chain.replay_stream_id(tenant, name)
    rows = store.backend.read_stream(sid)
    if not rows:
        raise NotFoundError(f"no replay {name!r} in tenant {tenant!r}")
    link = _link(rows[0][1], tenant, name)
    events = [decode_stored(state, tenant=tenant, name=name, seq=version,
                            topic=chain.REPLAY_TOPIC) for version, state in rows[1:]]
    return StoredReplay(name, link, [chain.wire_part(r) for r in events])


def _link(state: bytes | None, tenant: str, name: str) -> dict[str, Any]:
    """A replay's first record, its link; UnreadableRecordError if it cannot be read."""
    link = decode_stored(state, tenant=tenant, name=name, seq=1, topic=chain.REPLAY_TOPIC)
    if link.get("kind") != LINK_KIND:
        raise UnreadableRecordError(tenant, name, 1, "not the link record a replay begins with")
    return link


class ReplayCheck:
    """Verify's checks of one replay stream beyond the chain: link, binding, memory."""

    def __init__(self, store: Store, problem: Any) -> None:
        self.store, self.problem = store, problem
        self.link: dict[str, Any] | None = None
        self.memory: dict[str, MemoryState] = {}

    def row(self, version: int, record: dict[str, Any]) -> None:
        if version == 1:
            self._link(record)
            return
        if self.link is None:
            return
        expected = int(self.link.get("fork_seq", 0)) + version - 2
        if record.get("seq") != expected:
            self.problem(version, "seq_mismatch",
                         f"replay event says seq {record.get('seq')}, expected {expected}")
        try:
            apply_record(self.memory, record)
        except Exception as exc:  # an altered payload may not even be a write
            self.problem(version, "unreadable_record", f"memory write: {exc}")
        computed = scope_hash(self.memory, str(record.get("write_scope")))
        if record.get("ledger_memory_hash") != computed:
            self.problem(version, "ledger_memory_hash_mismatch",
                         f"replay record says {record.get('ledger_memory_hash')}, the source "
                         f"prefix and the replay's writes give {computed}")

    def _link(self, link: dict[str, Any]) -> None:
        if link.get("kind") != LINK_KIND:
            self.problem(1, "unreadable_record", "a replay stream must start with its link")
            return
        problem = record_problem(link, chain.REPLAY_TOPIC)
        if problem is not None:
            self.problem(1, "unreadable_record", f"replay link: {problem}")
            return
        self.link = link
        tenant, source, fork = link["tenant"], link["source_trace_id"], link["fork_seq"]
        sid = chain.trace_stream_id(tenant, source)
        rows = self.store.backend.read_stream(sid, lte=fork - 1) if fork > 1 else []
        actual = chain.record_hash(rows[-1][1]) if rows else chain.GENESIS_HASH
        if len(rows) != max(fork - 1, 0) or actual != link.get("source_prev_hash"):
            self.problem(1, "replay_source_mismatch",
                         f"the replay forked from {source!r} after seq {fork - 1} with record "
                         f"hash {link.get('source_prev_hash')}; the source now gives {actual}")
        for version, state in rows:
            try:
                apply_record(self.memory, decode(state))
            except ValueError as exc:  # its own stream's check names it too
                self.problem(1, "replay_source_mismatch", f"the source's record at seq "
                             f"{version} cannot be read ({exc})")
                self.link = None  # the memory the replay forked from is not known
                return
