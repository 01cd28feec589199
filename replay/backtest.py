"""Backtests: one policy replayed over every terminated trace of a tenant.

``Replayer.backtest`` (the API) lists the traces and calls :func:`run_backtest`,
which reads them in chunks (one scan of their records and one memory-view query
per chunk) and adds each replay to a :class:`BacktestReport`. With ``workers`` > 1
the chunks are shared with worker processes: workers take them from the front,
this process from the back, and the reports are summed, which gives the report a
single process gives (docs/REPLAY.md, "Backtest").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ledger.errors import UnreadableRecordError, UnwritableReplayError
from ledger.gcpause import paused_gc
from ledger.replays import write_replays
from ledger.store import Store
from ledger.workers import WorkerError, share, shareable, spawn_pool
from replay.outcomes import CassetteIndex, LiveTools, ScriptedOutcomes
from replay.policy import Policy

if TYPE_CHECKING:
    from replay.replayer import Replayer, ReplayResult

CHUNK = 100  # traces read per query, and the unit of work workers share
ProgressFn = Callable[[int, int], None]
Replay = tuple[dict[str, Any], list[dict[str, Any]]]  # a replay to store: link, events


@dataclass
class BacktestReport:
    """A policy replayed over every terminated trace (the ``--json`` of ``backtest``)."""

    tenant: str
    policy_digest: str
    terminated_traces: int = 0
    recovered: int = 0
    still_terminated: int = 0
    needs_outcome: int = 0
    by_tool: dict[str, dict[str, int]] = field(default_factory=dict)
    extra_tool_calls: int = 0
    unreadable: list[dict[str, Any]] = field(default_factory=list)  # traces left out
    unwritable: list[dict[str, Any]] = field(default_factory=list)  # and these

    def skip(self, error: UnreadableRecordError | UnwritableReplayError) -> None:
        """Leave out a trace (named in the report): one with a stored record that cannot
        be read, or whose replay would write to memory what the contract cannot hash."""
        if isinstance(error, UnreadableRecordError):
            self.unreadable.append({"trace_id": error.name, "seq": error.seq,
                                    "reason": error.reason})
        else:
            self.unwritable.append({"trace_id": error.trace_id, "seq": error.seq,
                                    "reason": error.reason})

    def add(self, tool: str | None, result: ReplayResult, source_calls: int) -> None:
        key = {"recovered": "recovered", "completed": "recovered",
               "needs_outcome": "needs_outcome"}.get(result.replay_status, "still_terminated")
        self.terminated_traces += 1
        setattr(self, key, getattr(self, key) + 1)
        row = self.by_tool.setdefault(tool or "(none)", {
            "terminated_traces": 0, "recovered": 0, "still_terminated": 0, "needs_outcome": 0})
        row["terminated_traces"] += 1
        row[key] += 1
        if result.replay_status != "needs_outcome":  # a stopped replay made fewer calls
            self.extra_tool_calls += len(result.outcome_sources) - source_calls

    def merge(self, other: BacktestReport) -> None:
        """Add another part of the same backtest (the counts are sums)."""
        for key in ("terminated_traces", "recovered", "still_terminated", "needs_outcome",
                    "extra_tool_calls"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for tool, counts in other.by_tool.items():
            row = self.by_tool.setdefault(tool, dict.fromkeys(counts, 0))
            for key, n in counts.items():
                row[key] += n
        self.unreadable += other.unreadable
        self.unwritable += other.unwritable

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BacktestJob:
    """What every chunk of one backtest needs (sent as is to worker processes)."""

    tenant: str
    policy: Policy
    script: Any  # None, a dict (restarts per trace), or a shared ScriptedOutcomes
    tools: str | None
    tool: str | None
    agent: str | None
    save: bool
    reason: str | None
    by: str | None
    run: int = 0  # which parallel backtest this is (workers drop caches of another)


def run_backtest(replayer: Replayer, job: BacktestJob, traces: list[str], *, workers: int = 1,
                 progress: ProgressFn | None = None) -> BacktestReport:
    """Backtest ``traces`` (in chunks, shared with ``workers - 1`` processes if allowed).

    Workers apply when scripted outcomes are not one shared ``ScriptedOutcomes``
    object (its lists are consumed across traces, in order) and the store is not an
    in-memory SQLite database (another process cannot open it). With ``job.save`` a
    worker sends its chunk's replays back, and this process stores them, a chunk a
    transaction (it alone writes).
    """
    chunks = [traces[i:i + CHUNK] for i in range(0, len(traces), CHUNK)]
    url = replayer.store.backend.url
    shared = (workers > 1 and len(chunks) > 1
              and not isinstance(job.script, ScriptedOutcomes) and shareable(url))
    report = BacktestReport(tenant=job.tenant, policy_digest=job.policy.digest())
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(traces))

    live = LiveTools.load(job.tools, timeout=replayer.tool_timeout) if job.tools else None
    replayer._index = CassetteIndex(replayer.store, job.tenant)  # one lookup per (tool, args)
    try:
        if shared:
            pool = replayer._workers
            if pool is None or pool.size != workers - 1:
                replayer.close()
                pool = replayer._workers = WorkerPool(url, replayer.tool_timeout, workers - 1)
            for part in pool.share(replayer, job, chunks, live, tick):
                report.merge(part)
        else:
            for chunk in chunks:
                report.merge(run_chunk(replayer, job, chunk, live, tick))
    finally:
        replayer._index = None
    report.by_tool = dict(sorted(report.by_tool.items()))
    report.unreadable.sort(key=lambda u: (u["trace_id"], u["seq"]))
    report.unwritable.sort(key=lambda u: (u["trace_id"], u["seq"]))
    return report


def run_chunk(replayer: Replayer, job: BacktestJob, chunk: list[str], live: LiveTools | None,
              tick: Callable[[int], None] | None = None, *,
              unsaved: list[Replay] | None = None) -> BacktestReport:
    """Backtest the traces of one chunk (read in one scan) into a report of its own; with
    ``job.save``, their replays are stored together at the end (one transaction), or
    put in ``unsaved`` for the caller to store."""
    report = BacktestReport(tenant=job.tenant, policy_digest=job.policy.digest())
    replays: list[Replay] = []  # to store in one transaction (job.save)
    with paused_gc():
        hashes: dict[str, dict[int, str]] | None = {} if job.save else None
        records_of, unreadable = replayer._records_of(job.tenant, chunk, hashes)
        history = replayer._histories(job.tenant, chunk)
        for trace_id in chunk:
            if trace_id in unreadable:
                report.skip(unreadable[trace_id])
            else:
                try:
                    done = replayer._backtest_trace(job, trace_id, records_of[trace_id],
                                                    history.get(trace_id, []), live,
                                                    (hashes or {}).get(trace_id))
                except (UnwritableReplayError, UnreadableRecordError) as exc:  # none stored
                    report.skip(exc)
                else:
                    if done is not None:
                        in_play, result, source_calls, link = done
                        report.add(in_play, result, source_calls)
                        if link is not None:
                            replays.append((link, result.events))
            if tick is not None:
                tick(1)
        if unsaved is not None:
            unsaved += replays
        elif replays:
            write_replays(replayer.store, replays)
    return report


class WorkerPool:
    """Spawned worker processes, each with its own store connection, kept between runs
    (see ``ledger.workers`` for how parts are shared)."""

    def __init__(self, url: str, tool_timeout: float, size: int) -> None:
        self.size = size
        self._runs = 0
        self._executor = spawn_pool(size, _worker_start, (url, tool_timeout))

    def share(self, replayer: Replayer, job: BacktestJob, chunks: list[list[str]],
              live: LiveTools | None, tick: Callable[[int], None]) -> Iterable[BacktestReport]:
        """Each chunk's report, run by a worker or, from the back, by ``replayer`` here."""
        self._runs += 1
        job = replace(job, run=self._runs)
        try:
            for index, (report, unsaved), here in share(
                self._executor, chunks, partial(_worker_chunk, job),
                lambda chunk: (run_chunk(replayer, job, chunk, live, tick), []),
                what="backtest",
            ):
                if unsaved:  # a worker's chunk of a saved backtest: stored here
                    write_replays(replayer.store, unsaved)
                if not here:
                    tick(len(chunks[index]))
                yield report
        except WorkerError:
            self.size = 0  # unusable: the next backtest starts a new pool
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def script_source(outcomes: Any) -> Any:
    """What to build a fresh ScriptedOutcomes from for each trace (lists restart per trace)."""
    if outcomes is None or isinstance(outcomes, (dict, ScriptedOutcomes)):
        return outcomes
    from replay.policy import load_document

    obj, _ = load_document(outcomes)
    ScriptedOutcomes(obj, source=str(outcomes))  # validate once, naming the file
    return obj


_worker: dict[str, Any] = {}  # in a worker process: its replayer, run and live tools


def _worker_start(url: str, tool_timeout: float) -> None:
    from multiprocessing.util import Finalize

    from replay.replayer import Replayer

    store = Store.open(url, migrate=False)
    Finalize(store, store.close, exitpriority=10)  # runs as the worker exits
    replayer = Replayer(store, tool_timeout=tool_timeout)
    replayer._views_current = True  # the parent brought them up to date
    _worker["replayer"] = replayer


def _worker_chunk(job: BacktestJob, chunk: list[str]) -> tuple[BacktestReport, list[Replay]]:
    """A chunk's report, and its replays to store (``job.save``) in the calling process."""
    replayer: Replayer = _worker["replayer"]
    if _worker.get("run") != job.run:  # another backtest: what was cached may be stale
        _worker["run"] = job.run
        _worker["live"] = (LiveTools.load(job.tools, timeout=replayer.tool_timeout)
                           if job.tools else None)
        replayer._index = CassetteIndex(replayer.store, job.tenant)
    unsaved: list[Replay] = []
    return run_chunk(replayer, job, chunk, _worker["live"], unsaved=unsaved), unsaved
