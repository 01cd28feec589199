"""Property: every projection answers exactly as a naive fold of the log, however it was built.

For random valid behaviour chains (several traces, one or two tenants, several
agents; tools that fail and succeed, retries, fallbacks, in-trace permissions
granted and revoked, memory writes and deletes across scopes, wrong memory-hash
claims, duplicates and conflicting re-sends, EXEC_TERMINATED) and tenant grants
(backdated, bounded, revoked), written in random batch splits through ingest and
``TraceWriter``, on both backends, every query of ``projections.queries`` gives the
answer of ``tests/naive_fold.py``:

(a) incrementally, with a projector attached while the log is written (checked
    part-way and at the end; some batches are committed by another writer and
    applied by a follower projector on the same database), (b) after a rebuild from
    zero (of all projections or a few), and (c) when a store written without
    projections is caught up once at the end, in small projector batches.

Set AGENTLEDGER_PROPERTY_EXAMPLES for a longer run (the default is a quick one).

The ``store`` fixture is per test function while hypothesis runs many examples,
so every example writes under fresh tenant names.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive_fold import GrantOp, NaiveFold, jcs_hash, utc

from ledger.grants import add_grant, revoke_grant
from ledger.ingest import ingest
from ledger.store import Store
from ledger.writer import TraceWriter

AGENTS = ("planner", "writer", "critic")
EXECUTORS = ("planner", "writer", "critic", "system", "user:alice")
TOOLS = ("search", "search_cache", "calc")
KEYS = ("plan", "n", "é", "\U0001f600", "\ue000")
TENANTS = ("acme", "beta")
TRACE_IDS = ("t1", "t2", "t3")
BASE = datetime(2026, 11, 19, 21, 0, tzinfo=UTC)  # traces run across UTC midnights
OFFSETS = ("Z", "Z", "+00:00", "+02:00", "-05:00", "+05:30")
STATS_BY = {"fallback_stats": ("tool", "pair", "agent", "day"),
            "retry_stats": ("tool", "agent", "day"),
            "failure_stats": ("tool", "reason", "agent"),
            "unknown_callback_stats": ("event", "agent", "day")}
MAX_SAFE = 2**53 - 1
PROJECTIONS = ("memory", "failures", "attribution", "analytics", "findings")

Event = dict[str, Any]


# -- time -------------------------------------------------------------------------------

def render(minute: int, ms: int | None, offset: str, digits: int = 3,
           lower: bool = False) -> str:
    """The instant BASE + minute (+ ms, then digits beyond the ms up to ``digits``,
    which the ledger truncates to microseconds) as RFC 3339 in the given offset."""
    when = BASE + timedelta(minutes=minute, milliseconds=ms or 0)
    if offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        when = when.astimezone(timezone(sign * delta))
    fraction = "" if ms is None else f".{ms:03d}" + "456789"[:digits - 3]
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset
    return text.replace("T", "t").replace("Z", "z") if lower else text


@st.composite
def instants(draw: st.DrawFn, lo: int = -120, hi: int = 50 * 60) -> tuple[int, str]:
    """A minute on the example's grid (so times tie with events') and its rendering."""
    minute = draw(st.integers(lo, hi))
    return minute, render(minute, draw(st.none() | st.just(0)), draw(st.sampled_from(OFFSETS)))


# -- traces -------------------------------------------------------------------------------

TEXT = st.characters(codec="utf-8", exclude_characters="\x00")  # events hold no NUL
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE, MAX_SAFE)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(TEXT, max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=3), inner,
                                                                 max_size=3),
    max_leaves=5,
)
STEPS = ("call", "call", "retry", "fallback", "write", "write", "write", "permission", "fail",
         "misc", "terminate")


@st.composite
def trace_events(draw: st.DrawFn, tenant: str, trace_id: str,
                 focus: tuple[str, str]) -> list[Event]:
    """One valid behaviour chain, with the memory-hash claims of a runtime (some wrong).

    Half the cross-agent writes and permissions are about ``focus`` (writer, scope
    owner), as are half the grants, so that permissions and grants meet writes.
    """
    owner = draw(st.sampled_from(AGENTS))
    clock = [draw(st.integers(0, 30 * 60))]
    memory: dict[str, dict[str, Any]] = {}
    events: list[Event] = []
    tools = st.sampled_from(TOOLS)

    def executor() -> str:
        return draw(st.sampled_from((owner, owner, owner, *EXECUTORS)))

    def emit(event: str, payload: dict[str, Any], *, by: str | None = None,
             scope: str | None = None) -> None:
        clock[0] += draw(st.sampled_from((0, 1, 1, 7, 45, 180, -30)))
        e: Event = {
            "tenant": tenant, "trace_id": trace_id, "seq": len(events) + 1, "event": event,
            "ts": render(clock[0], draw(st.none() | st.integers(0, 999)),
                         draw(st.sampled_from(OFFSETS)), draw(st.sampled_from((3, 3, 6, 9))),
                         draw(st.integers(0, 9)) == 9),
            "agent_owner": owner, "executed_by": by or executor(), "payload": payload,
        }
        if scope is None and draw(st.integers(0, 9)) == 9:
            scope = "memory/" + draw(st.sampled_from(AGENTS))
        if scope is not None:
            e["write_scope"] = scope
        state = memory.setdefault(scope or "memory/" + owner, {})
        if event == "CALLBACK_MEMORY_WRITE":
            if payload.get("op") == "delete":
                state.pop(payload["key"], None)
            else:
                state[payload["key"]] = payload["value"]
        claim = draw(st.sampled_from(("none", "none", "none", "right", "wrong")))
        if claim == "right":
            e["memory_hash"] = jcs_hash(state)
        elif claim == "wrong":
            e["memory_hash"] = jcs_hash({**state, "\x00not logged": clock[0]})
        events.append(e)

    def tool_exec(tool: str, attempt: int | None = None) -> None:
        ok = draw(st.booleans())
        payload: dict[str, Any] = {"tool": tool, "args": {"q": draw(st.integers(0, 2))},
                                   "success": ok}
        if attempt is not None:
            payload["attempt"] = attempt
        if not ok:
            if draw(st.booleans()):
                payload["error_reason"] = draw(st.sampled_from(("429", "timeout")))
            if draw(st.booleans()):
                payload["error_class"] = draw(st.sampled_from(("retryable", "replaceable")))
        emit("TOOL_EXEC", payload)

    if draw(st.integers(0, 4)):
        emit("EXEC_START", {"context_id": "c"})
    for step in draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=7)):
        if step == "call":
            tool = draw(tools)
            emit("REASONER_ACTION", {"action": {"tool": tool, "args": {}}, "strategy": "serial"})
            tool_exec(tool)
            if draw(st.booleans()):
                status = draw(st.sampled_from(("success", "failed")))
                emit("CALLBACK_RESULT", {"tool": tool, "status": status})
        elif step == "retry":
            tool = draw(tools)
            attempt = draw(st.integers(2, 3))
            emit("CALLBACK_RETRY", {"tool": tool, "attempt": attempt})
            if draw(st.booleans()):
                tool_exec(draw(tools))
            if draw(st.integers(0, 3)):
                tool_exec(tool, attempt)
        elif step == "fallback":
            original, fallback = draw(tools), draw(tools)
            emit("CALLBACK_FALLBACK", {"original_tool": original, "fallback_tool": fallback})
            for follow in draw(st.lists(st.sampled_from(("exec", "retry", "other")),
                                        max_size=3)):
                if follow == "retry":
                    emit("CALLBACK_RETRY", {"tool": fallback, "attempt": 2})
                tool_exec(fallback if follow != "other" else draw(tools))
        elif step == "write":
            if draw(st.booleans()):
                emit("CALLBACK_POLICY_RESOLVED", {"policy": {
                    "write_memory": True, "record_trace": True, "fallback_required": False,
                    "trigger_next": False}})
            if draw(st.booleans()):
                by, scope = focus[0], "memory/" + focus[1]
            else:
                by = executor()
                scope = "memory/" + draw(st.sampled_from((by, owner, *AGENTS)))
            key = draw(st.sampled_from(KEYS))
            payload = ({"key": key, "op": "delete"} if draw(st.integers(0, 3)) == 3
                       else {"key": key, "value": draw(json_values)})
            emit("CALLBACK_MEMORY_WRITE", payload, by=by, scope=scope)
        elif step == "permission":
            agent, target = draw(st.sampled_from((focus, focus, (executor(), owner),
                                                  (draw(st.sampled_from(EXECUTORS)),
                                                   draw(st.sampled_from(AGENTS))))))
            emit("CALLBACK_PERMISSION", {
                "source_agent": owner, "executing_agent": agent, "scope": "memory/" + target,
                "granted": draw(st.booleans())})
        elif step == "fail":
            kind = draw(st.sampled_from(("TOOL_FAIL", "CALLBACK_FAIL", "EXEC_FAIL", "RESULT")))
            if kind == "TOOL_FAIL":
                emit(kind, {"tool": draw(tools), "reason": "boom"})
            elif kind == "CALLBACK_FAIL":
                emit(kind, {"reason": draw(st.sampled_from(("boom", "policy")))})
            elif kind == "EXEC_FAIL":
                emit(kind, {"error_code": draw(st.sampled_from(("E42", "E7", 42))),
                            "reason": "x"})
            else:
                emit("CALLBACK_RESULT", {"tool": draw(tools), "status": "failed"})
        elif step == "misc":
            kind = draw(st.sampled_from(("EXEC_NEXT", "EXEC_LOOP", "CALLBACK_SUCCESS",
                                         "CALLBACK_NEXT_ACTION", "CALLBACK_CUSTOM_HOOK",
                                         "CALLBACK_CACHE_HIT")))
            emit(kind, {"next_action": {"go": 1}} if kind == "CALLBACK_NEXT_ACTION" else {})
        else:
            code = draw(st.sampled_from((None, None, "E_TERM", 7)))
            emit("EXEC_TERMINATED", {
                "reason": draw(st.sampled_from(("fallback failed", "budget"))),
                **({} if code is None else {"error_code": code})})
    return events


# -- scenarios: what is written, in which batches, with which grants ---------------------

@dataclass(frozen=True)
class GrantSpec:
    tenant: str
    agent: str
    scope: str
    valid_from: str
    valid_until: str | None
    revoke_at: str | None


@dataclass(frozen=True)
class Batch:
    """Events written in one go: ``method`` is ingest, ingest_reorder or writer."""

    method: str
    size: int  # the ingest / writer batch size
    events: tuple[int, ...]  # indexes into Scenario.events
    resend: tuple[tuple[int, bool], ...] = ()  # (event index, changed) re-sent after them


@dataclass(frozen=True)
class Scenario:
    events: list[Event]  # in write order (per trace, seq order)
    grants: list[GrantSpec]
    ops: list[tuple[str, Any]]  # ("batch", Batch) | ("grant", i) | ("revoke", i)
    windows: list[tuple[str | None, str | None]]
    check_after: int  # (a) also compares after this many ops
    elsewhere: frozenset[int]  # (a) ops (1-based) another writer commits, then a follower applies
    rebuild: tuple[str, ...] | None  # (b) rebuilds these projections (None: all)
    projector_batch: int  # the projector's batch size for (b) and (c)
    limit: int
    decode_chunk: int  # entries the projector decodes and folds at a time (all of (a)-(c))


@st.composite
def moments(draw: st.DrawFn, writes: list[str]) -> str:
    """A write's own ``ts`` (so grant bounds fall exactly on writes) or a grid instant."""
    on_a_write = draw(st.integers(0, 2)) > 0
    if writes and on_a_write:
        return draw(st.sampled_from(writes))
    return draw(instants())[1]


@st.composite
def grant_specs(draw: st.DrawFn, tenants: list[str], focus: tuple[str, str],
                writes: list[str]) -> GrantSpec:
    valid_from = draw(moments(writes))
    if draw(st.integers(0, 4)) == 4:  # a date: midnight UTC
        valid_from = utc(valid_from)[:10]
    later = [w for w in writes if utc(w) > utc(valid_from)]
    until = draw(moments(later)) if draw(st.booleans()) else None
    if until is not None and utc(until) <= utc(valid_from):
        until = None
    revoke = draw(moments(later)) if draw(st.booleans()) else None
    agent, target = focus if draw(st.integers(0, 3)) > 0 else (
        draw(st.sampled_from(EXECUTORS)), draw(st.sampled_from(AGENTS)))
    return GrantSpec(draw(st.sampled_from(tenants)), agent, "memory/" + target, valid_from,
                     until, revoke)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    tenants = list(TENANTS[:draw(st.integers(1, 2))])
    focus = draw(st.sampled_from([(a, b) for a in AGENTS for b in AGENTS if a != b]))
    traces = [draw(trace_events(tenant, trace_id, focus))
              for tenant in tenants
              for trace_id in TRACE_IDS[:draw(st.integers(1, 3))]]
    # Interleave the traces, each kept in seq order.
    labels = draw(st.permutations([i for i, t in enumerate(traces) for _ in t]))
    cursors = [0] * len(traces)
    events: list[Event] = []
    for i in labels:
        events.append(traces[i][cursors[i]])
        cursors[i] += 1
    # Cut into batches; re-send some earlier events (duplicates and conflicts).
    batches: list[Batch] = []
    start = 0
    while start < len(events):
        end = min(len(events), start + draw(st.integers(1, 12)))
        idx = tuple(range(start, end))
        claims = any("memory_hash" in events[i] for i in idx)
        method = draw(st.sampled_from(("ingest", "ingest_reorder") if claims
                                      else ("ingest", "ingest_reorder", "writer")))
        resend: tuple[tuple[int, bool], ...] = ()
        if start and method != "writer" and draw(st.integers(0, 3)) == 3:
            resend = ((draw(st.integers(0, start - 1)), draw(st.booleans())),)
        batches.append(Batch(method, draw(st.integers(1, 6)), idx, resend))
        start = end
    writes = [e["ts"] for e in events if e["event"] == "CALLBACK_MEMORY_WRITE"
              and (e["executed_by"], e.get("write_scope")) == (focus[0], "memory/" + focus[1])]
    grants = [draw(grant_specs(tenants, focus, writes)) for _ in range(draw(st.integers(0, 4)))]
    ops: list[tuple[str, Any]] = [("batch", b) for b in batches]
    for g, spec in enumerate(grants):  # anywhere: before, between or after the writes
        at = draw(st.integers(0, len(ops)))
        ops.insert(at, ("grant", g))
        if spec.revoke_at is not None:
            ops.insert(draw(st.integers(at + 1, len(ops))), ("revoke", g))
    windows: list[tuple[str | None, str | None]] = [(None, None)]
    for _ in range(draw(st.integers(1, 2))):
        lo, since = draw(instants())
        hi, until = draw(instants(lo, lo + 40 * 60))
        choice = draw(st.sampled_from(("both", "since", "until", "days")))
        if choice == "days":
            since = (BASE + timedelta(minutes=lo)).date().isoformat()
            until = (BASE + timedelta(minutes=hi)).date().isoformat()
        windows.append((None if choice == "until" else since,
                        None if choice == "since" else until))
    check_after = draw(st.sampled_from((0, 0, *range(1, len(ops)))))  # 0: only at the end
    elsewhere = frozenset(draw(st.lists(st.integers(1, len(ops)), max_size=len(ops) // 3)))
    rebuild = draw(st.none() | st.lists(st.sampled_from(PROJECTIONS), min_size=1,
                                        unique=True).map(tuple))
    return Scenario(events, grants, ops, windows, check_after, elsewhere, rebuild,
                    draw(st.integers(1, 7)), draw(st.integers(1, 4)),
                    draw(st.sampled_from((1, 2, 3, 100))))


# -- writing a scenario --------------------------------------------------------------------

@dataclass
class Log:
    """What was actually written: the fold's input."""

    events: list[Event] = field(default_factory=list)
    grants: list[GrantOp] = field(default_factory=list)
    conflicts: list[tuple[str, str, int]] = field(default_factory=list)
    attempts: set[bytes] = field(default_factory=set)  # each attempted rewrite is one finding

    def fold(self) -> NaiveFold:
        return NaiveFold(self.events, self.grants, self.conflicts)


def renamed(event: Event, tenants: dict[str, str]) -> Event:
    return {**event, "tenant": tenants[event["tenant"]]}


def write(stores: Callable[[int], Store], scenario: Scenario, tenants: dict[str, str],
          workdir: Path, after_op: Callable[[int, Log], None] = lambda n, log: None) -> Log:
    """Write the scenario's ops in order, the n-th through ``stores(n)``; then call
    ``after_op(n, log)``."""
    log = Log()
    grant_ids: dict[int, str] = {}
    for n, (kind, arg) in enumerate(scenario.ops, 1):
        store = stores(n)
        if kind == "batch":
            write_batch(store, scenario, arg, tenants, workdir, log)
        elif kind == "grant":
            spec: GrantSpec = scenario.grants[arg]
            tenant = tenants[spec.tenant]
            grant = add_grant(store, tenant, spec.agent, spec.scope, valid_from=spec.valid_from,
                              valid_until=spec.valid_until, by="user:test", reason="property")
            grant_ids[arg] = grant.grant_id
            log.grants.append(GrantOp("add", tenant, grant.grant_id, spec.agent, spec.scope,
                                      spec.valid_from, spec.valid_until))
        else:
            spec = scenario.grants[arg]
            tenant = tenants[spec.tenant]
            revoke_grant(store, tenant, grant_ids[arg], at=spec.revoke_at, by="user:test")
            log.grants.append(GrantOp("revoke", tenant, grant_ids[arg], at=spec.revoke_at))
        after_op(n, log)
    return log


def write_batch(store: Store, scenario: Scenario, batch: Batch, tenants: dict[str, str],
                workdir: Path, log: Log) -> None:
    events = [renamed(scenario.events[i], tenants) for i in batch.events]
    if batch.method == "writer":
        writers: dict[str, TraceWriter] = {}
        for e in events:
            writer = writers.setdefault(e["tenant"], TraceWriter(
                store, tenant=e["tenant"], batch_size=batch.size))
            recorded = writer.record(e["trace_id"], e["event"], e["payload"],
                                     agent_owner=e["agent_owner"], executed_by=e["executed_by"],
                                     write_scope=e.get("write_scope"), ts=e["ts"])
            assert recorded.seq == e["seq"]
        for writer in writers.values():
            writer.close()
        log.events += events
        return
    lines = list(events)
    if batch.method == "ingest_reorder":
        random.Random(len(log.events)).shuffle(lines)
    conflicts, rejected = [], 0
    for i, changed in batch.resend:
        again = renamed(scenario.events[i], tenants)
        if changed:
            again = {**again, "payload": {**again["payload"], "resent": True}}
            rejected += 1
            attempt = orjson.dumps(again, option=orjson.OPT_SORT_KEYS)
            if attempt not in log.attempts:  # the same rewrite sent again adds no finding
                log.attempts.add(attempt)
                conflicts.append((again["tenant"], again["trace_id"], again["seq"]))
        lines.append(again)
    source = workdir / f"batch-{uuid.uuid4().hex}.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    reorder = batch.method == "ingest_reorder"
    summary = ingest(store, [str(source)], reject_file=str(workdir / "rejected.jsonl"),
                     batch_size=len(lines) if reorder else batch.size, reorder=reorder)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (
        len(events), len(batch.resend) - rejected, rejected), summary
    log.events += events
    log.conflicts += conflicts


# -- asking every question of both sides -----------------------------------------------------

@dataclass(frozen=True)
class Question:
    query: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ordered: bool = False  # compare lists in order (else as multisets)
    limit: int | None = None

    def __str__(self) -> str:
        params = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if self.limit is not None:
            params.append(f"limit={self.limit}")
        return f"{self.query}({', '.join(params)})"


def questions(fold: NaiveFold, tenants: list[str], scenario: Scenario) -> Iterator[Question]:
    """Every query, with every filter value and window the example makes interesting."""
    for tenant in tenants:
        for trace_id in fold.trace_ids(tenant):
            last = len(fold.trace(tenant, trace_id))
            for scope in [None, *fold.scopes(tenant, trace_id), "memory/nobody"]:
                seqs = range(last + 1) if scope in fold.scopes(tenant, trace_id) else (0, last)
                for at in [None, *seqs]:
                    yield Question("memory_state", (tenant, trace_id), {"scope": scope, "at": at})
                yield Question("memory_history", (tenant, trace_id), {"scope": scope},
                               ordered=True)
                pairs = {(0, last), (last, 0), (last // 2, last), (1, last // 2)}
                for lo, hi in sorted(pairs):
                    yield Question("memory_diff", (tenant, trace_id, lo, hi), {"scope": scope})
        yield Question("audit_findings", (tenant,), {})
        yield Question("grants", (tenant,), {})
        for kind in ("conflict", "memory_hash_mismatch", "unauthorized_write"):
            yield Question("audit_findings", (tenant,), {"kind": kind})
        for trace_id in fold.trace_ids(tenant):
            yield Question("audit_findings", (tenant,), {"trace_id": trace_id})
            yield Question("failures", (tenant,), {"trace_id": trace_id}, ordered=True)
            yield Question("audit_writes", (tenant,), {"trace_id": trace_id}, ordered=True)
        for since, until in scenario.windows:
            window = {"since": since, "until": until}
            yield Question("failures", (tenant,), window, ordered=True)
            yield Question("audit_writes", (tenant,), window, ordered=True)
            for query, bys in STATS_BY.items():
                for by in bys:
                    yield Question(query, (tenant,), {"by": by, **window})
        yield Question("failures", (tenant,), {}, ordered=True, limit=scenario.limit)
        yield Question("audit_writes", (tenant,), {}, ordered=True, limit=scenario.limit)
        for tool in (*TOOLS, "nope"):
            yield Question("failures", (tenant,), {"tool": tool}, ordered=True)
        for agent in EXECUTORS:
            yield Question("failures", (tenant,), {"agent": agent}, ordered=True)
            yield Question("audit_writes", (tenant,), {"by": agent}, ordered=True)
            yield Question("audit_writes", (tenant,), {"scope": "memory/" + agent}, ordered=True)
        for event in ("TOOL_EXEC", "CALLBACK_RESULT", "EXEC_TERMINATED"):
            yield Question("failures", (tenant,), {"event": event}, ordered=True)
        for key in KEYS[:2]:
            yield Question("audit_writes", (tenant,), {"key": key}, ordered=True)


def oldest_first(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["ts"], row["trace_id"], row["seq"])


def expected_answer(fold: NaiveFold, q: Question) -> Any:
    answer = getattr(fold, q.query)(*q.args, **q.kwargs)
    if q.query in ("failures", "audit_writes"):
        answer = sorted(answer, key=oldest_first)[:q.limit]
    return answer


def actual_answer(store: Store, q: Question) -> Any:
    from projections import queries

    kwargs = dict(q.kwargs) if q.limit is None else {**q.kwargs, "limit": q.limit}
    try:
        answer = getattr(queries, q.query)(store, *q.args, **kwargs)
    except Exception as exc:  # reported as a difference, with the other answers
        return f"<raised {type(exc).__name__}: {exc}>"
    if isinstance(answer, list):
        return [row.as_json() for row in answer]
    return answer.as_json()


def canonical(value: Any) -> str:
    """Exact JSON text (1, 1.0 and true all differ), keys sorted, one item per line."""
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)


def shaped_like(actual: Any, expected: Any) -> Any:
    """The actual answer cut down to the fields the expected one has (missing ones marked)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: actual.get(k, "<missing>") for k in expected}
    if isinstance(expected, list) and isinstance(actual, list):
        template = expected[0] if expected else None
        return [shaped_like(a, template) if template is not None else a for a in actual]
    return actual


def differences(store: Store, log: Log, tenants: list[str], scenario: Scenario) -> list[str]:
    """A readable unified diff per question whose answers differ (expected vs actual)."""
    fold = log.fold()
    found = []
    for q in questions(fold, tenants, scenario):
        expected = expected_answer(fold, q)
        actual = shaped_like(actual_answer(store, q), expected)
        if isinstance(expected, list) and isinstance(actual, list) and not q.ordered:
            expected, actual = sorted(expected, key=canonical), sorted(actual, key=canonical)
        want, got = canonical(expected), canonical(actual)
        if want != got:
            diff = difflib.unified_diff(want.splitlines(), got.splitlines(),
                                        "naive fold", "projection", lineterm="", n=2)
            found.append(f"{q}:\n" + "\n".join(diff))
    return found


def assert_matches_fold(store: Store, log: Log, tenants: list[str], scenario: Scenario,
                        stage: str) -> None:
    __tracebackhide__ = True
    found = differences(store, log, tenants, scenario)
    if found:
        shown = "\n\n".join(found[:6])
        raise AssertionError(f"{stage}: {len(found)} answer(s) differ from the naive fold "
                             f"(first {min(6, len(found))} shown)\n\n{shown}")


# -- the properties ----------------------------------------------------------------------------

# A quick run by default; AGENTLEDGER_PROPERTY_EXAMPLES=500 for a deep one.
EXAMPLES = int(os.environ.get("AGENTLEDGER_PROPERTY_EXAMPLES", "10"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def fresh_tenants() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {t: f"{t}-{suffix}" for t in TENANTS}


@PROPERTY
@given(scenario=scenarios())
def test_incremental_and_rebuilt_projections_equal_the_naive_fold(
    store: Store, scenario: Scenario
) -> None:
    """Attached while the log is written (some of it by another writer, applied by a
    follower), and then rebuilt from zero, every query answers as the naive fold of
    the whole log, grants included."""
    from projections import Projector

    tenants = fresh_tenants()
    names = sorted({tenants[e["tenant"]] for e in scenario.events})
    with (Store.open(store.url) as attached, Store.open(store.url) as other,
          tempfile.TemporaryDirectory() as tmp, decoding_chunks_of(scenario.decode_chunk)):
        Projector(attached).attach()
        follower = Projector(other)

        def after(n: int, log: Log) -> None:
            if n in scenario.elsewhere:
                follower.catch_up()
            if n == scenario.check_after:
                assert_matches_fold(attached, log, names, scenario,
                                    f"(a) attached, after {n} of {len(scenario.ops)} writes")

        def route(n: int) -> Store:
            return other if n in scenario.elsewhere else attached

        log = write(route, scenario, tenants, Path(tmp), after)
        Projector(attached).catch_up()  # in case the last writes were the other writer's
        assert_matches_fold(attached, log, names, scenario, "(a) attached, at the end")
        Projector(attached, batch_size=scenario.projector_batch,  # contexts overflow the
                  context_cache=1).rebuild(scenario.rebuild)       # cache: read back
        assert_matches_fold(attached, log, names, scenario,
                            f"(b) after rebuilding {scenario.rebuild or 'all'}")
        with parts_in_this_process():
            Projector(attached, batch_size=scenario.projector_batch,
                      context_cache=1).rebuild(scenario.rebuild, workers=3)
        assert_matches_fold(attached, log, names, scenario,
                            f"(c) after rebuilding {scenario.rebuild or 'all'} in 3 parts")


@contextmanager
def decoding_chunks_of(size: int) -> Iterator[None]:
    """The projector decodes and folds ``size`` log entries at a time: a batch of more
    entries reaches each projection in several ``apply`` calls, then one ``finish``."""
    from projections import runner

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "DECODE_CHUNK", size)
        yield


@contextmanager
def parts_in_this_process() -> Iterator[None]:
    """A rebuild shared out in parts even for a short log, each part run by the real
    part code (``_run_part``), one after the other in this process: hypothesis runs
    many examples, and spawning processes for each would take minutes. Processes
    themselves are tested in ``test_shared_rebuild.py``."""
    from projections import parts

    def here(plans: list[parts.PartPlan], head: int, progress: Any) -> int:
        return sum(parts._run_part(plan) for plan in plans)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parts, "ENTRIES_PER_PART", 1)
        patch.setattr(parts, "_run_parts", here)
        yield


@PROPERTY
@given(scenario=scenarios())
def test_projections_caught_up_once_at_the_end_equal_the_naive_fold(
    store: Store, scenario: Scenario
) -> None:
    """A store written with no projector attached, caught up once at the end (in small
    batches), answers every query as the naive fold."""
    from projections import Projector

    tenants = fresh_tenants()
    names = sorted({tenants[e["tenant"]] for e in scenario.events})
    with Store.open(store.url) as writer, tempfile.TemporaryDirectory() as tmp:
        log = write(lambda n: writer, scenario, tenants, Path(tmp))
    with decoding_chunks_of(scenario.decode_chunk):
        Projector(store, batch_size=scenario.projector_batch, context_cache=2).catch_up()
    assert_matches_fold(store, log, names, scenario, "(c) caught up at the end")
