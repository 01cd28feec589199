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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson

from ledger import chain
from ledger.backends.base import IdRange, RowTuple, StreamHead, StreamScan
from ledger.errors import NotFoundError
from ledger.gcpause import paused_gc
from ledger.memory import EMPTY_MEMORY_HASH, MemoryState, apply_record
from ledger.problem_log import Problem, ProblemLog
from ledger.store import Store
from ledger.timestamps import stored_ts_utc
from ledger.workers import share, shareable, spawn_pool

if TYPE_CHECKING:
    from ledger.replays import ReplayCheck


@dataclass
class VerifyReport:
    """The result of ``agentledger verify`` (its ``--json`` output)."""

    streams: int = 0
    events: int = 0
    problems: ProblemLog = field(default_factory=ProblemLog)
    findings: ProblemLog = field(default_factory=ProblemLog)
    """Both in the order found, by stream id; beyond a thousand, on disk (see
    ``ledger.problem_log``): a ledger altered throughout is reported whole."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, other: VerifyReport) -> None:
        """Append the report of the next range of streams."""
        self.streams += other.streams
        self.events += other.events
        self.problems.extend(other.problems)
        self.findings.extend(other.findings)

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document, whole (the CLI prints it a problem at a time)."""
        head, lists = self.json_parts()
        return {**head, **{key: list(items) for key, items in lists.items()}}

    def json_parts(self) -> tuple[dict[str, Any], dict[str, Iterator[dict[str, Any]]]]:
        """:meth:`as_json`'s scalars, and its lists as iterators, in the document's order."""
        return ({"ok": self.ok, "streams": self.streams, "events": self.events},
                {"problems": map(asdict, self.problems), "findings": map(asdict, self.findings)})


EVENTS_PER_WORKER = 50_000
"""Below this many logged events per process, extra processes cost more than they save."""
PARTS_PER_WORKER = 16  # ranges of stream ids per process, so that fast processes take more
EVENTS_PER_PART = 25_000
"""A bigger log is cut into more ranges (of about this many events). The pool hands a
worker its next part before it asks for it, so at the end a process may wait for up
to two parts of another: small parts keep that wait short whatever the log's size.
One process also verifies a range at a time (``sequential_ranges``), so that the
catalog rows it holds are those of about this many events' streams, not the store's."""


def verify(
    store: Store, *, tenant: str | None = None, trace_id: str | None = None,
    progress: Callable[[int], None] | None = None, workers: int = 1,
) -> VerifyReport:
    """Check the chains and memory hashes of all streams (or one tenant's, or one trace).

    With ``workers`` > 1 the streams are split into ranges of ids (``PARTS_PER_WORKER``
    per process, or one per ``EVENTS_PER_PART`` logged events if that is more), shared
    with up to ``workers - 1`` spawned processes (one per ``EVENTS_PER_WORKER`` logged
    events at most). The report is the same whatever the number: problems come by
    stream id.
    """
    backend = store.backend
    if trace_id is not None:
        sid = chain.trace_stream_id(tenant or chain.DEFAULT_TENANT, trace_id)
        with backend.snapshot_scan(stream_ids=[sid]) as (heads, streams):
            if not heads:
                raise NotFoundError(
                    f"no trace {trace_id!r} in tenant {tenant or chain.DEFAULT_TENANT!r}")
            return _verify_streams(store, heads, streams, progress)
    logged = backend.last_notification_id()
    workers = min(workers, logged // EVENTS_PER_WORKER)
    if workers <= 1 or not shareable(backend.url):
        report = VerifyReport()
        for id_range in sequential_ranges(logged):
            report.add(verify_range(store, tenant, id_range, progress))
        return report
    ranges = id_ranges(max(workers * PARTS_PER_WORKER, logged // EVENTS_PER_PART))
    reports: list[VerifyReport | None] = [None] * len(ranges)
    with spawn_pool(workers - 1, _worker_start, (backend.url,)) as pool:
        for index, part, here in share(pool, ranges, partial(_worker_range, tenant),
                                       lambda r: verify_range(store, tenant, r, progress),
                                       what="verify"):
            reports[index] = part
            if not here and progress is not None:
                progress(part.events)
    report = VerifyReport()
    for done in reports:
        assert done is not None
        report.add(done)
    return report


def id_ranges(n: int) -> list[IdRange]:
    """``n`` contiguous ranges of stream ids, of equal width, covering every id."""
    bounds = [UUID(int=(k << 128) // n) for k in range(n)]
    return [(lo, hi) for lo, hi in zip(bounds, [*bounds[1:], None], strict=True)]


def sequential_ranges(logged: int) -> list[IdRange]:
    """The ranges of stream ids one process verifies one after the other, each read in
    a snapshot of its own, for a log of ``logged`` events: one per ``EVENTS_PER_PART``.

    Verifying in one snapshot held every catalog row of the store (or tenant) at once,
    about 1 KB a stream: 260 MB for 200,000 traces of two events, a gigabyte or more
    for a busy tenant. A range's streams are checked exactly as in one snapshot; what
    writers append between two ranges is seen by the later one only.
    """
    return id_ranges(max(1, logged // EVENTS_PER_PART))


def rows_to_check(store: Store, *, tenant: str | None = None,
                  trace_id: str | None = None) -> int:
    """How many stored rows :func:`verify` with these arguments reads, as the catalog
    says (a progress bar's length), read a range at a time like verify itself."""
    if trace_id is not None:
        sid = chain.trace_stream_id(tenant or chain.DEFAULT_TENANT, trace_id)
        head = store.backend.load_heads([sid]).get(sid)
        return head.last_seq if head is not None else 0
    ranges = sequential_ranges(store.backend.last_notification_id())
    return sum(h.last_seq for r in ranges for h in store.backend.iter_catalog(
        tenant, id_range=r))


def verify_range(store: Store, tenant: str | None, id_range: IdRange | None,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Verify the streams (of one tenant, or all) whose ids lie in ``id_range``.

    The catalog and the rows are read in one snapshot (``Backend.snapshot_scan``): a
    writer appending meanwhile is not mistaken for an alteration.
    """
    with store.backend.snapshot_scan(tenant, id_range=id_range) as (heads, streams):
        return verify_scanned(store, heads, streams, progress)


def verify_scanned(store: Store, heads: list[StreamHead],
                   streams: StreamScan,
                   progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check ``streams`` against the catalog ``heads``, both read in one snapshot
    (``Backend.snapshot_scan``): for a caller that must know which rows were checked."""
    with paused_gc():
        return _verify_streams(store, heads, streams, progress)


def _verify_streams(store: Store, heads: list[StreamHead],
                    streams: StreamScan,
                    progress: Callable[[int], None] | None) -> VerifyReport:
    """Check ``streams`` (by stream id) against catalog ``heads`` (by stream id)."""
    report = VerifyReport()
    catalog = iter(heads)
    head = next(catalog, None)
    for sid, group in streams:
        while head is not None and head.stream_id < sid:
            _missing(report, head)
            head = next(catalog, None)
        mine = head if head is not None and head.stream_id == sid else None
        if mine is not None:
            head = next(catalog, None)
        count = _StreamCheck(sid, mine, report, store).run(group)
        report.streams += 1
        report.events += count
        if progress is not None:
            progress(count)
    while head is not None:
        _missing(report, head)
        head = next(catalog, None)
    return report


def _missing(report: VerifyReport, head: StreamHead) -> None:
    report.problems.append(Problem(head.tenant, head.name, None, "missing_stream",
                                   f"catalog lists {head.last_seq} event(s), none stored"))


_worker: dict[str, Store] = {}  # in a worker process: its own connection to the store


def _worker_start(url: str) -> None:
    from multiprocessing.util import Finalize

    store = _worker["store"] = Store.open(url, migrate=False)
    Finalize(store, store.close, exitpriority=10)  # runs as the worker exits


def _worker_range(tenant: str | None, id_range: IdRange) -> VerifyReport:
    return verify_range(_worker["store"], tenant, id_range)


_TENANT_STREAMS: dict[str, tuple[Callable[[str], UUID], str, str]] = {
    chain.FINDING_TOPIC: (chain.findings_stream_id, chain.FINDINGS_STREAM_NAME, "finding"),
    chain.GRANT_TOPIC: (chain.grants_stream_id, chain.GRANTS_STREAM_NAME, "grant"),
}
"""Topics of the per-tenant streams: (stream id of a tenant, stream name, what a row is)."""


def _decode(topic: str, state: bytes) -> dict[str, Any]:
    """A stored record, decoded exactly where exact integers matter.

    orjson reads an integer beyond 64 bits as a float, which changes nothing verify
    compares in a trace event but a memory write's values (hashed) and the other
    topics' records: only those take ``chain.decode``'s exact path when their bytes
    may hold such an integer. Any altered byte still breaks the chain.
    """
    try:
        record = orjson.loads(state)
    except orjson.JSONDecodeError:
        return chain.decode(state)  # the stdlib may still read it; else ValueError
    if not isinstance(record, dict):
        raise ValueError("stored state is not a JSON object")
    if (topic != chain.EVENT_TOPIC or record.get("event") == "CALLBACK_MEMORY_WRITE") and (
        chain.may_hold_big_int(state)
    ):
        return chain.decode(state)
    return record


class _StreamCheck:
    """Walks one stream's rows in version order, collecting problems."""

    def __init__(self, sid: UUID, head: StreamHead | None, report: VerifyReport,
                 store: Store) -> None:
        self.sid = sid
        self.store = store
        self.head = head
        self.report = report
        self.tenant: str | None = head.tenant if head else None
        self.name: str | None = head.name if head else None
        self.memory: dict[str, MemoryState] = {}
        self.terminated = False
        self.identity: tuple[Any, Any] | None = None  # (tenant, trace_id) checked against sid
        self._replay: ReplayCheck | None = None
        # What the catalog row must say beyond length and head, as the records give it:
        self.owner: Any = None  # agent_owner: the first event's (a replay's: its link's)
        self.first_ts: str | None = None  # the span of the records' times (UTC)
        self.last_ts: str | None = None
        self.replay_status: Any = None
        self.problems_before = len(report.problems)

    def problem(self, seq: int | None, kind: str, detail: str) -> None:
        self.report.problems.append(Problem(self.tenant, self.name, seq, kind, detail))

    @property
    def replay(self) -> ReplayCheck:
        if self._replay is None:  # imported here: it needs the models, as traces do not
            from ledger.replays import ReplayCheck

            self._replay = ReplayCheck(self.store, self.problem)
        return self._replay

    def run(self, rows: Iterable[RowTuple]) -> int:
        """Check the stream's rows (read once, as they come); the number of rows."""
        prev, expected, last_nid, count = chain.GENESIS_HASH, 1, 0, 0
        for count, (_, version, nid, topic, state) in enumerate(rows, 1):  # noqa: B007
            if version != expected:
                self.problem(expected, "missing_event",
                             f"versions {expected}..{version - 1} are not stored")
            if nid <= last_nid:
                self.problem(version, "order_mismatch",
                             f"notification id {nid} is not after {last_nid}")
            else:
                last_nid = nid
            if state is None:  # only where the column allows NULL (PostgreSQL)
                self.problem(version, "unreadable_record", "stored state is NULL")
                state = b""
            self.check_row(version, topic, state, prev)
            prev, expected = chain.record_hash(state), version + 1
        self.check_head(expected - 1, prev)
        return count

    def check_row(self, version: int, topic: str, state: bytes, prev: str) -> None:
        try:
            record = _decode(topic, state)
        except ValueError as exc:
            self.problem(version, "unreadable_record", f"stored bytes are not a record: {exc}")
            return
        if self.tenant is None:
            tenant_stream = _TENANT_STREAMS.get(topic)
            self.tenant = record.get("tenant")
            self.name = tenant_stream[1] if tenant_stream else record.get(
                "replay_trace_id", record.get("trace_id"))
        if record.get("prev_hash") != prev:
            self.problem(version, "chain_broken",
                         f"prev_hash is {record.get('prev_hash')}, the previous record hashes "
                         f"to {prev}")
        if topic == chain.EVENT_TOPIC:
            self.check_event(version, record)
        else:
            self.check_other(version, topic, record)

    def check_other(self, version: int, topic: str, record: dict[str, Any]) -> None:
        if topic == chain.REPLAY_TOPIC:
            name = record.get("replay_trace_id" if version == 1 else "trace_id")
            if chain.replay_stream_id(str(record.get("tenant")), str(name)) != self.sid:
                self.problem(version, "identity_mismatch",
                             f"replay record names tenant {record.get('tenant')!r} replay "
                             f"{name!r}, not this stream")
            self.replay.row(version, record)
            if version == 1:
                self.owner = record.get("agent_owner")
                self.replay_status = record.get("replay_status", "completed")
                self.span(record.get("recorded_at"))
            else:
                self.span(stored_ts_utc(record.get("ts")))
        elif (tenant_stream := _TENANT_STREAMS.get(topic)) is not None:
            stream_of, name, what = tenant_stream
            if stream_of(str(record.get("tenant"))) != self.sid:
                self.problem(version, "identity_mismatch",
                             f"{what} is not stored in its tenant's {name} stream")
            at = record.get("recorded_at")
            if topic == chain.FINDING_TOPIC and isinstance(at, str):  # from the first to
                self.first_ts, self.last_ts = self.first_ts or at, at  # the last appended
            else:
                self.span(at)
        else:
            self.problem(version, "unknown_topic", f"topic {topic!r}")

    def span(self, ts: Any) -> None:
        """Widen the span of the records' times to take ``ts`` (a UTC timestamp)."""
        if not isinstance(ts, str):
            return
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def check_event(self, version: int, record: dict[str, Any]) -> None:
        get = record.get
        if get("seq") != version:
            self.problem(version, "seq_mismatch",
                         f"record says seq {get('seq')}, stored at position {version}")
        event = get("event")
        if event == "EXEC_TERMINATED":
            self.terminated = True
        if version == 1:
            self.owner = get("agent_owner")
        ts = stored_ts_utc(get("ts"))  # self.span(ts), inlined: one call per event
        if ts is not None:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        tenant, trace = get("tenant"), get("trace_id")
        if (tenant, trace) != self.identity:  # checked once per stream, unless it changes
            if not isinstance(tenant, str) or not isinstance(trace, str) or (
                chain.trace_stream_id(tenant, trace) != self.sid
            ):
                self.problem(version, "identity_mismatch",
                             f"record names tenant {tenant!r} trace {trace!r}, not this stream")
                return
            self.identity = (tenant, trace)
        scope_name = str(get("write_scope"))
        if event == "CALLBACK_MEMORY_WRITE":
            try:
                apply_record(self.memory, record)
            except Exception as exc:  # an altered payload may not even be a write
                self.problem(version, "unreadable_record", f"memory write: {exc}")
        state = self.memory.get(scope_name)
        computed = state.hash() if state is not None else EMPTY_MEMORY_HASH
        if get("ledger_memory_hash") != computed:
            self.problem(version, "ledger_memory_hash_mismatch",
                         f"record says {get('ledger_memory_hash')}, the logged writes "
                         f"of {scope_name} give {computed}")
        claimed = get("memory_hash")
        if claimed is not None and claimed != computed:
            self.report.findings.append(Problem(
                tenant, trace, version, "memory_hash_mismatch",
                f"runtime claimed {claimed} for {scope_name}; its logged writes give {computed}"))

    def check_head(self, last: int, last_hash: str) -> None:
        if self.head is None:
            self.problem(None, "orphan_stream", "stored events have no catalog entry")
            return
        head = self.head
        intact = len(self.report.problems) == self.problems_before  # no row, so far
        named = (chain.trace_stream_id(head.tenant, head.name) if head.kind == chain.TRACE_KIND
                 else chain.stream_id(head.kind, head.tenant, head.name))  # the former cached
        if named != self.sid:
            self.problem(None, "catalog_mismatch",
                         f"catalog names {head.kind} {head.name!r} of tenant {head.tenant!r}, "
                         "which is not this stream")
        if head.kind == chain.TRACE_KIND and (head.status == "terminated") != self.terminated:
            self.problem(None, "catalog_mismatch",
                         f"catalog status is {head.status!r} but the trace "
                         f"{'has' if self.terminated else 'has no'} EXEC_TERMINATED")
        if head.kind == chain.REPLAY_KIND and head.status != self.replay_status:
            self.problem(None, "catalog_mismatch",
                         f"catalog says status {head.status!r} (the replay's link gives "
                         f"{self.replay_status!r})")
        elif head.kind not in (chain.TRACE_KIND, chain.REPLAY_KIND) and head.status != "active":
            self.problem(None, "catalog_mismatch",
                         f"catalog says status {head.status!r} (a {head.kind} stream is "
                         "'active')")
        if self.head.last_seq != last:
            self.problem(last, "length_mismatch",
                         f"catalog says {self.head.last_seq} event(s), {last} stored")
        elif self.head.head_hash != last_hash:
            self.problem(last, "head_mismatch",
                         f"catalog head is {self.head.head_hash}, the last record hashes to "
                         f"{last_hash}")
        if intact and (head.last_seq, head.head_hash) == (last, last_hash):
            self.check_catalog_span(head)  # altered records: the catalog holds what they said

    def check_catalog_span(self, head: StreamHead) -> None:
        """The catalog's owner and span of time, which listings choose streams by, are
        those of the records."""
        derived = {"agent_owner": self.owner, "first_ts": self.first_ts,
                   "last_ts": self.last_ts}
        if wrong := [f"{k} {getattr(head, k)!r} (the records give {v!r})"
                     for k, v in derived.items() if getattr(head, k) != v]:
            self.problem(None, "catalog_mismatch", "catalog says " + ", ".join(wrong))
