"""``Replayer``: fork a stored trace, re-run it under a policy, diff it, store it.

The Python API the CLI wraps (see docs/REPLAY.md). A replay reads the source
stream, reconstructs memory at the fork from the ``memory`` projection (checked
against the ledger's hashes in the record), drives the engine with the outcome
chain (source, cassette, scripted, live), and stores the result as a linked
replay stream unless ``dry_run``.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ledger import chain
from ledger.errors import (
    MemoryDisagreementError,
    NotFoundError,
    UnreadableRecordError,
    UsageError,
)
from ledger.gcpause import paused_gc
from ledger.memory import memory_hash
from ledger.payloads import is_failure_point
from ledger.reader import iter_traces
from ledger.records import decode_stored
from ledger.replays import list_replays, read_replay, source_hash_before, write_replay
from ledger.store import Store
from ledger.strict_json import non_json
from projections import Projector, queries
from replay.backtest import BacktestJob, BacktestReport, ProgressFn, run_backtest, script_source
from replay.engine import Engine
from replay.outcomes import (
    Cassette,
    CassetteIndex,
    LiveTools,
    OutcomeChain,
    ScriptedOutcomes,
    SourceOutcomes,
)
from replay.plan import Plan, default_fork, read_plan
from replay.policy import Policy

Outcomes = ScriptedOutcomes | dict[str, Any] | str | Path | None


@dataclass
class ReplayResult:
    """One replay (the ``--json`` of ``agentledger replay``)."""

    replay_trace_id: str | None
    tenant: str
    source_trace_id: str
    fork_seq: int
    original_status: str
    replay_status: str
    events: list[dict[str, Any]]
    memory_diff: dict[str, dict[str, Any]]
    first_divergence: dict[str, Any] | None
    outcome_sources: list[dict[str, Any]]
    missing_outcome: dict[str, Any] | None = None
    dropped_carried: list[int] = field(default_factory=list)
    policy_digest: str = ""
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _named(result: ReplayResult, name: str) -> None:
    """``result`` as stored under ``name``: its trace id, and its events'."""
    result.replay_trace_id = name
    result.events = [{**e, "trace_id": name} for e in result.events]


class Replayer:
    """Replays and backtests over one store."""

    def __init__(self, store: Store, *, tool_timeout: float = 30.0) -> None:
        self.store = store
        self.tool_timeout = tool_timeout
        self._views_current = False
        self._index: CassetteIndex | None = None  # shared by the replays of a backtest
        self._workers: Any = None  # a backtest.WorkerPool, kept for the next backtest

    def close(self) -> None:
        """Stop the worker processes a parallel backtest started (the store stays open)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def replay(self, tenant: str, trace_id: str, policy: Policy, *, from_seq: int | None = None,
               outcomes: Outcomes = None, tools: str | None = None, reason: str | None = None,
               by: str | None = None, dry_run: bool = False) -> ReplayResult:
        """Replay ``trace_id`` from ``from_seq`` (default: see docs/REPLAY.md) under ``policy``."""
        _check_storable(reason=reason, by=by)
        self._catch_up()
        scripted = _scripted(outcomes)
        live = LiveTools.load(tools, timeout=self.tool_timeout) if tools else None
        with paused_gc():
            records = self._records(tenant, trace_id)
            result = self._run(tenant, trace_id, records, policy, from_seq, scripted, live)
        if not dry_run:
            self._store(tenant, trace_id, records, policy, result, scripted, live, reason, by)
        result.dry_run = dry_run
        return result

    def _store(self, tenant: str, trace_id: str, records: list[dict[str, Any]], policy: Policy,
               result: ReplayResult, scripted: ScriptedOutcomes | None, live: LiveTools | None,
               reason: str | None, by: str | None) -> None:
        link = self._link(tenant, trace_id, records, policy, result, scripted, live, reason, by)
        _named(result, write_replay(self.store, link, result.events))

    def _link(self, tenant: str, trace_id: str, records: list[dict[str, Any]], policy: Policy,
              result: ReplayResult, scripted: ScriptedOutcomes | None, live: LiveTools | None,
              reason: str | None, by: str | None,
              record_hashes: dict[int, str] | None = None) -> dict[str, Any]:
        """The link record of ``result``, a replay of ``trace_id``, as it is stored (the
        source's record hash before the fork from ``record_hashes``, by seq, when it
        holds it; else read from the store)."""
        fork = result.fork_seq
        before = (record_hashes or {}).get(fork - 1) if fork > 1 else chain.GENESIS_HASH
        if before is None:
            before = source_hash_before(self.store, tenant, trace_id, fork)
        return {
            "tenant": tenant, "source_trace_id": trace_id, "fork_seq": fork,
            "source_prev_hash": before,
            "policy_digest": policy.digest(), "policy": policy.text,
            "outcome_sources": _source_names(scripted, live),
            "by": by or _default_by(), "reason": reason,
            "replay_status": result.replay_status, "original_status": result.original_status,
            "agent_owner": records[0]["agent_owner"],
        }

    def backtest(self, tenant: str, policy: Policy, *, outcomes: Outcomes = None,
                 tools: str | None = None, since: str | None = None, until: str | None = None,
                 tool: str | None = None, agent: str | None = None, save: bool = False,
                 reason: str | None = None, by: str | None = None, workers: int = 1,
                 progress: ProgressFn | None = None) -> BacktestReport:
        """Replay every terminated trace from the failure that led to termination.

        Nothing is stored unless ``save``. ``tool``/``agent`` keep traces whose fork
        event names that tool in play / was executed by that agent. Scripted
        outcome lists restart for each trace when ``outcomes`` is a dict or a file
        (a ``ScriptedOutcomes`` object is shared, its lists consumed across traces).
        ``extra_tool_calls`` is net: calls the replays made minus the source's calls
        from the fork, over the replays that did not stop for a missing outcome.

        ``workers`` > 1 shares the traces, 100 at a time, between this process and
        ``workers - 1`` spawned ones (each with its own connection) and sums their
        reports: the same report as one process gives. It applies when nothing is
        stored and scripted outcomes are not a shared ``ScriptedOutcomes`` object;
        otherwise (or for an in-memory SQLite store) this process runs them all.
        """
        _check_storable(reason=reason, by=by)
        self._catch_up()
        with closing(iter_traces(self.store, tenant, status="terminated", since=since,
                                 until=until)) as listed:  # ids only: a tenant may have millions
            traces = [t.trace_id for t in listed]
        job = BacktestJob(tenant, policy, script_source(outcomes), tools, tool, agent, save,
                          reason, by)
        return run_backtest(self, job, traces, workers=workers, progress=progress)

    def _backtest_trace(self, job: BacktestJob, trace_id: str, records: list[dict[str, Any]],
                        history: list[Any], live: LiveTools | None,
                        record_hashes: dict[int, str] | None = None) -> tuple[
                            str | None, ReplayResult, int, dict[str, Any] | None] | None:
        """One trace of a backtest: (tool in play, replay, source calls from the fork, the
        replay's link when the job saves it), or None when the job's tool/agent filter
        leaves it out. ``record_hashes``: the hashes of its stored records, by seq."""
        wire = [chain.wire_part(r) for r in records]
        fork = default_fork(wire)
        in_play = _tool_in_play(wire, fork)
        if (job.tool is not None and in_play != job.tool) or (
                job.agent is not None and wire[fork - 1]["executed_by"] != job.agent):
            return None
        scripted = _scripted(job.script)
        result = self._run(job.tenant, trace_id, records, job.policy, fork, scripted, live,
                           history, wire)
        link = None
        if job.save:  # stored with the rest of its chunk by ``backtest.run_chunk``
            link = self._link(job.tenant, trace_id, records, job.policy, result, scripted,
                              live, job.reason, job.by, record_hashes)
        return (in_play, result, sum(1 for r in wire[fork - 1:] if r["event"] == "TOOL_EXEC"),
                link)

    def _records_of(
        self, tenant: str, trace_ids: list[str], hashes: dict[str, dict[int, str]] | None = None
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, UnreadableRecordError]]:
        """The records of many traces in one scan, and the first unreadable record of
        each trace that has one (such a trace is left out of the records). With
        ``hashes``, each trace's record hashes by seq go there too (what a saved replay's
        link names: one scan instead of a read for each replay)."""
        ids = {chain.trace_stream_id(tenant, t): t for t in trace_ids}
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in trace_ids}
        unreadable: dict[str, UnreadableRecordError] = {}
        for row in self.store.backend.iter_rows(list(ids)):
            trace_id = ids[row.stream_id]
            if trace_id in unreadable:
                continue
            try:
                out[trace_id].append(decode_stored(row.state, tenant=tenant,
                                                           name=trace_id, seq=row.version))
                if hashes is not None:
                    hashes.setdefault(trace_id, {})[row.version] = chain.record_hash(row.state)
            except UnreadableRecordError as exc:
                unreadable[trace_id] = exc
                del out[trace_id]
        return out, unreadable

    def _histories(self, tenant: str, trace_ids: list[str]) -> dict[str, list[Any]]:
        """The memory writes of many traces, from the ``memory`` view, in one query."""
        out: dict[str, list[Any]] = {}
        for version in queries.memory_histories(self.store, tenant, trace_ids):
            out.setdefault(version.trace_id, []).append(version)
        return out

    def replays(self, tenant: str, *, source: str | None = None) -> list[dict[str, Any]]:
        """Link records of stored replays (of one source trace), oldest first."""
        return [_link_json(link) for link in list_replays(self.store, tenant, source=source)]

    def stored(self, tenant: str, replay_trace_id: str) -> dict[str, Any]:
        """A stored replay: its link and events."""
        stored = read_replay(self.store, tenant, replay_trace_id)
        return {**_link_json(stored.link), "events": stored.events}

    # -- internals ----------------------------------------------------------------------------

    def _catch_up(self) -> None:
        if not self._views_current:
            Projector(self.store, ["memory", "analytics"]).catch_up()
            self._views_current = True

    def _records(self, tenant: str, trace_id: str) -> list[dict[str, Any]]:
        sid = chain.trace_stream_id(tenant, trace_id)
        rows = self.store.backend.read_stream(sid)
        if not rows:
            raise NotFoundError(f"no trace {trace_id!r} in tenant {tenant!r}")
        return [decode_stored(state, tenant=tenant, name=trace_id, seq=version)
                for version, state in rows]

    def _chain(self, tenant: str, trace_id: str, plan: Plan, scripted: ScriptedOutcomes | None,
               live: LiveTools | None) -> OutcomeChain:
        """The outcome sources in their order (``_source_names`` lists the same)."""
        sources: list[Any] = [SourceOutcomes.from_payloads(plan.tool_execs),
                              Cassette(self.store, tenant, exclude_trace=trace_id,
                                       index=self._index)]
        if scripted is not None:
            sources.append(scripted)
        if live is not None:
            sources.append(live)
        return OutcomeChain(sources)

    def _run(self, tenant: str, trace_id: str, records: list[dict[str, Any]], policy: Policy,
             from_seq: int | None, scripted: ScriptedOutcomes | None,
             live: LiveTools | None, history: list[Any] | None = None,
             wire: list[dict[str, Any]] | None = None) -> ReplayResult:
        if wire is None:
            wire = [chain.wire_part(r) for r in records]
        fork = default_fork(wire) if from_seq is None else from_seq
        if not 1 <= fork <= len(wire):
            raise UsageError(f"--from {fork} is outside trace {trace_id!r} (seq 1..{len(wire)})")
        plan = read_plan(wire)
        if history is None:
            history = queries.memory_history(self.store, tenant, trace_id)
        memory = _memory_at(history, records, fork, tenant, trace_id)
        outcomes = self._chain(tenant, trace_id, plan, scripted, live)
        engine = Engine(plan, policy, outcomes, tenant=tenant, trace_id=trace_id,
                        agent_owner=wire[0]["agent_owner"], memory=memory)
        emitted = engine.run(fork)
        _stamp(emitted.events)
        original = "terminated" if plan.terminated else "active"
        status = emitted.status
        if status == "completed" and (original == "terminated" or is_failure_point(
                wire[fork - 1]["event"], wire[fork - 1]["payload"])):
            status = "recovered"
        final = {scope: state.as_dict() for scope, state in engine.memory.items()}
        return ReplayResult(
            None, tenant, trace_id, fork, original, status, emitted.events,
            _memory_diff(_fold(wire, len(wire) + 1), final),
            _divergence(wire, emitted.events, fork), emitted.calls, emitted.missing,
            emitted.dropped, policy.digest())



def _memory_at(history: list[Any], records: list[dict[str, Any]], fork: int, tenant: str,
               trace_id: str) -> dict[str, dict[str, Any]]:
    """Memory per scope before the fork, from the projection, checked against the record."""
    memory: dict[str, dict[str, Any]] = {}
    for version in history:
        if version.seq >= fork:
            break
        state = memory.setdefault(version.scope, {})
        if version.op == "delete":
            state.pop(version.key, None)
        else:
            state[version.key] = version.value
    last: dict[str, dict[str, Any]] = {}  # scope -> its last write before the fork
    for r in records[:fork - 1]:
        if r["event"] == "CALLBACK_MEMORY_WRITE":
            last[r["write_scope"]] = r
    for scope_name in set(last) | set(memory):
        record = last.get(scope_name)
        if record is None or record["ledger_memory_hash"] != memory_hash(
                memory.get(scope_name, {})):
            raise MemoryDisagreementError(
                tenant, trace_id, record["seq"] if record else fork - 1,
                f"memory of {scope_name} before seq {fork} in the memory view disagrees "
                "with the ledger's record")
    return memory


def _tool_in_play(wire: list[dict[str, Any]], fork: int) -> str | None:
    from projections.failures import named_tool

    for r in reversed(wire[:fork]):
        tool = named_tool(r["event"], r["payload"])
        if tool is not None:
            return tool
    return None


def _source_names(scripted: ScriptedOutcomes | None, live: LiveTools | None) -> list[str]:
    """The names of the outcome sources a replay consults, in order (for its link)."""
    return [SourceOutcomes.name, Cassette.name,
            *(s.name for s in (scripted, live) if s is not None)]


def _scripted(outcomes: Outcomes) -> ScriptedOutcomes | None:
    if outcomes is None or isinstance(outcomes, ScriptedOutcomes):
        return outcomes
    if isinstance(outcomes, dict):
        return ScriptedOutcomes(outcomes)
    return ScriptedOutcomes.load(outcomes)


def _stamp(events: list[dict[str, Any]]) -> None:
    """Replay events happen now: increasing timestamps, 1 ms apart."""
    start = datetime.now(UTC).replace(tzinfo=None)
    for i, e in enumerate(events):
        e["ts"] = (start + timedelta(milliseconds=i)).isoformat(timespec="milliseconds") + "Z"


def _fold(wire: list[dict[str, Any]], before: int) -> dict[str, dict[str, Any]]:
    memory: dict[str, dict[str, Any]] = {}
    for r in wire[:before - 1]:
        if r["event"] == "CALLBACK_MEMORY_WRITE":
            state = memory.setdefault(r["write_scope"], {})
            if r["payload"].get("op") == "delete":
                state.pop(r["payload"]["key"], None)
            else:
                state[r["payload"]["key"]] = r["payload"].get("value")
    return memory


def _memory_diff(source: dict[str, dict[str, Any]],
                 replay: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scope, what the replay's final memory has that the source's does not."""
    out: dict[str, dict[str, Any]] = {}
    for scope in sorted(set(source) | set(replay)):
        a, b = source.get(scope, {}), replay.get(scope, {})
        added = {k: v for k, v in b.items() if k not in a}
        removed = {k: v for k, v in a.items() if k not in b}
        changed = {k: {"from": a[k], "to": v} for k, v in b.items()
                   if k in a and chain.encode(a[k], sort_keys=True)
                   != chain.encode(v, sort_keys=True)}
        if added or removed or changed:
            out[scope] = {"added": added, "removed": removed, "changed": changed}
    return out


def _divergence(wire: list[dict[str, Any]], events: list[dict[str, Any]],
                fork: int) -> dict[str, Any] | None:
    """The first seq from the fork where the replay's event differs from the source's."""
    source = wire[fork - 1:]
    for i in range(max(len(source), len(events))):
        a = _shape(source[i]) if i < len(source) else None
        b = _shape(events[i]) if i < len(events) else None
        if a is None or b is None or chain.encode(a, sort_keys=True) != chain.encode(
                b, sort_keys=True):
            return {"seq": fork + i, "source": a, "replay": b}
    return None


def _shape(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in ("event", "executed_by", "write_scope", "payload")}


def _link_json(link: dict[str, Any]) -> dict[str, Any]:
    keys = ("replay_trace_id", "tenant", "source_trace_id", "fork_seq", "source_prev_hash",
            "replay_status", "original_status", "policy_digest", "policy", "outcome_sources",
            "by", "reason", "recorded_at")
    return {k: link.get(k) for k in keys}


def _check_storable(**texts: str | None) -> None:
    """Refuse, before any work, free text a stored replay could not hold: a lone
    surrogate, which no UTF-8 holds (the CLI refuses it as an option already)."""
    found = non_json(texts, "", nul=False)
    if found is not None:
        raise UsageError(f"{found[0]}: {found[1]}")


def _default_by() -> str:
    try:
        import getpass

        return "user:" + getpass.getuser()
    except (KeyError, OSError):
        return "user:" + os.environ.get("USER", "unknown")

