"""Replay determinism: a replay under the recorded policy reproduces the record.

The property (the replay issue): for random valid traces, a replay from any event
with a policy that reproduces the recorded decisions and the source's own outcomes
yields exactly the recorded events after the fork; only timestamps and replay links
differ. Traces come from ``tests/runtime_sim.py``, a runtime written from
docs/REPLAY.md alone, so the engine is checked against the doc, not against itself.

Then the issue's worked example: a trace that terminated because ``fetch_doc`` failed
with no fallback recovers under ``{"fallback": {"fetch_doc": ["fetch_doc_mirror"]}}``
with a scripted outcome, and a call no outcome source answers stops the replay with
``needs_outcome`` instead of an invented result.

The ``store`` fixture is per test function while hypothesis runs many examples, so
every example writes under a fresh tenant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from runtime_sim import (
    CONTROL_EVENTS,
    Carried,
    Event,
    Outcome,
    Step,
    Undocumented,
    scripted,
    simulate,
)

from ledger import chain
from ledger.errors import UsageError
from ledger.ingest import ingest
from ledger.payloads import is_failure_point
from ledger.reader import get_trace, list_findings
from ledger.store import Store
from ledger.verify import verify
from ledger.writer import TraceWriter
from projections import Projector
from replay import Policy, Replayer

AGENTS = ("planner", "critic")
OWNER = "planner"
TOOLS = ("search", "search_cache", "fetch_doc", "fetch_doc_mirror")
CLASSES = ("terminal", "retryable", "replaceable")
TRACE = "trace-1"
WIRE_FIELDS = {"trace_id", "seq", "event", "ts", "tenant", "agent_owner", "executed_by",
               "write_scope", "memory_hash", "payload"}
MAX_EXAMPLES = 80  # per backend: under 15 s each, so the file stays well under a minute


@pytest.fixture
def projected(store: Store) -> Iterator[Store]:
    """The store with the projections attached (a replay reads the memory view)."""
    Projector(store).attach()
    yield store


def fresh_tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


# -- random policies, plans, outcomes and carried events --------------------------------

tools = st.sampled_from(TOOLS)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.sampled_from((1.5, -0.25, 1e-7))
    | st.text("abé😀", max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text("xyz", max_size=2),
                                                                 inner, max_size=2),
    max_leaves=4,
)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    options: dict[str, st.SearchStrategy[Any]] = {
        "tool": tools, "action_tool": tools, "agent": st.sampled_from(AGENTS),
        "success": st.booleans(), "error_class": st.sampled_from(CLASSES),
        "attempt_gte": st.integers(1, 3), "confidence_lt": st.sampled_from((0.25, 0.5, 0.75)),
        "confidence_gte": st.sampled_from((0.25, 0.5, 0.75)),
    }
    names = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=2))
    return {name: draw(options[name]) for name in names}


@st.composite
def rules(draw: st.DrawFn, index: int) -> dict[str, Any]:
    then: dict[str, Any] = {}
    if draw(st.booleans()):
        then["write_memory"] = draw(st.booleans())
    decision = draw(st.sampled_from((None, None, "retry", "fallback", "terminate")))
    if decision is not None:
        then[decision] = True
    if decision == "fallback" and draw(st.booleans()):  # the rule's own alternatives
        then[decision] = draw(st.lists(tools, min_size=1, max_size=2, unique=True))
    if not then:
        then["write_memory"] = draw(st.booleans())
    return {"name": f"rule_{index}", "when": draw(conditions()), "then": then}


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if draw(st.integers(0, 3)):
        retry: dict[str, Any] = {}
        if draw(st.booleans()):
            retry["max_attempts"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            retry["per_tool"] = draw(st.dictionaries(tools, st.integers(1, 3), max_size=2))
        if draw(st.booleans()):
            retry["never_retry"] = draw(st.lists(st.sampled_from(CLASSES), unique=True,
                                                 max_size=2))
        policy["retry"] = retry
    if draw(st.integers(0, 3)):
        policy["fallback"] = draw(st.dictionaries(
            tools, st.lists(tools, min_size=1, max_size=2, unique=True), min_size=1, max_size=4))
    if draw(st.booleans()):
        memory: dict[str, Any] = {}
        if draw(st.booleans()):
            memory["write_on_success"] = draw(st.booleans())
        if draw(st.booleans()):
            memory["key"] = draw(st.sampled_from(
                ("{tool}_result", "{action_tool}/{agent}", "last", "{agent}:{tool}")))
        policy["memory"] = memory
    if draw(st.booleans()):
        policy["rules"] = [draw(rules(i)) for i in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        policy["max_steps"] = 200
    return policy


@st.composite
def plans(draw: st.DrawFn) -> list[Step]:
    return [Step(agent=draw(st.sampled_from((OWNER, *AGENTS))), tool=draw(tools),
                 args=draw(st.sampled_from(({}, {"q": 1}, {"q": "zürich", "k": [1, 2]}))),
                 confidence=draw(st.none() | st.sampled_from((0.1, 0.5, 0.9))),
                 extra=draw(st.sampled_from(({}, {}, {"intent": "look it up"},
                                             {"strategy": "serial"}))))
            for _ in range(draw(st.integers(1, 4)))]


@st.composite
def outcomes(draw: st.DrawFn) -> Outcome:
    if draw(st.booleans()):
        ok: Outcome = {"success": True, "output": draw(json_values)}
    else:
        ok = {"success": False,
              "error_reason": draw(st.sampled_from(("429 rate limited", "timeout", "404")))}
        if draw(st.integers(0, 3)):
            ok["error_class"] = draw(st.sampled_from(CLASSES))
        if draw(st.integers(0, 5)) == 0:
            ok["output"] = {"status": 503}
    if draw(st.booleans()):
        ok["latency_ms"] = draw(st.integers(0, 900))
    return ok


CARRIED_KINDS = ("EXEC_NEXT", "EXEC_LOOP", "CALLBACK_NEXT_ACTION", "CALLBACK_PERMISSION",
                 "TOOL_FAIL", "CALLBACK_FAIL", "EXEC_FAIL", "CALLBACK_AUDIT_NOTE")


@st.composite
def carried_events(draw: st.DrawFn, steps: int) -> list[Carried]:
    carried: list[Carried] = []
    if draw(st.booleans()):
        carried.append(Carried((1, "REASONER_ACTION", 1), "EXEC_START", {"context_id": "c1"},
                               OWNER))
    for _ in range(draw(st.integers(0, 4))):
        anchor = draw(st.none() | st.tuples(
            st.integers(1, steps),
            st.sampled_from(("REASONER_ACTION", "TOOL_EXEC", "CALLBACK_RESULT", *CONTROL_EVENTS)),
            st.sampled_from((1, 1, 2))))
        kind = draw(st.sampled_from(CARRIED_KINDS))
        payloads: dict[str, dict[str, Any]] = {
            "EXEC_NEXT": {}, "EXEC_LOOP": {"i": 2},
            "CALLBACK_NEXT_ACTION": {"next_action": {"tool": "search"}},
            "CALLBACK_PERMISSION": {"source_agent": OWNER, "executing_agent": "critic",
                                    "scope": "memory/" + OWNER, "granted": draw(st.booleans())},
            "TOOL_FAIL": {"tool": "search", "reason": "socket closed"},
            "CALLBACK_FAIL": {"reason": "hook failed"},
            "EXEC_FAIL": {"error_code": "E7", "reason": "worker lost"},
            "CALLBACK_AUDIT_NOTE": {"note": "ok"},
        }
        payload = payloads[kind]
        carried.append(Carried(anchor, kind, payload, draw(st.sampled_from((*AGENTS, "system"))),
                               draw(st.none() | st.sampled_from(("memory/planner",
                                                                 "memory/critic")))))
    return carried


# -- writing a trace and comparing events ------------------------------------------------

def write_trace(store: Store, events: list[Event], how: str, tmp: Path | None = None) -> None:
    """Store ``events`` through ingest (with the runtime's memory hashes) or TraceWriter."""
    if how == "ingest":
        assert tmp is not None
        path = tmp / f"{events[0]['tenant']}.jsonl"
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events),
                        encoding="utf-8")
        summary = ingest(store, [str(path)], reject_file=str(tmp / "rejects.jsonl"))
        assert summary.accepted == len(events), summary
        return
    with TraceWriter(store, tenant=events[0]["tenant"]) as writer:
        for e in events:
            writer.record(e["trace_id"], e["event"], e["payload"], agent_owner=e["agent_owner"],
                          executed_by=e["executed_by"], write_scope=e["write_scope"], ts=e["ts"])


def comparable(event: Event) -> Event:
    """An event without what a replay may change: its timestamp and trace id."""
    return {k: v for k, v in event.items() if k not in ("ts", "trace_id")}


def assert_same_events(replayed: list[Event], recorded: list[Event]) -> None:
    for got, want in zip(replayed, recorded, strict=False):
        assert comparable(got) == comparable(want), (
            f"seq {want['seq']} differs:\n replay: {comparable(got)}\n record: {comparable(want)}")
    assert [e["event"] for e in replayed] == [e["event"] for e in recorded]


def source_states(store: Store, tenant: str) -> list[tuple[int, bytes]]:
    stored = store.backend.read_stream(chain.trace_stream_id(tenant, TRACE))
    return list(stored)


def default_fork(events: list[Event]) -> int:
    """The doc's default fork: the first failure point of the last step when the source
    terminated, else its last failure point."""
    failures: list[int] = [e["seq"] for e in events
                           if is_failure_point(e["event"], e["payload"])]
    if events[-1]["event"] != "EXEC_TERMINATED":
        return failures[-1]
    last_step: int = max(e["seq"] for e in events if e["event"] == "REASONER_ACTION")
    return min(seq for seq in failures if seq > last_step)


def expected_status(events: list[Event], fork: int) -> str:
    if events[-1]["event"] == "EXEC_TERMINATED":
        return "terminated"
    fork_event = events[fork - 1]
    return "recovered" if is_failure_point(fork_event["event"], fork_event["payload"]) \
        else "completed"


# -- the property ------------------------------------------------------------------------

@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_replay_under_the_recorded_policy_reproduces_the_events_after_any_fork(
        projected: Store, tmp_path: Path, data: st.DataObject) -> None:
    """A replay from any seq with the source's policy and outcomes re-emits the record."""
    tenant = fresh_tenant()
    policy = data.draw(policies(), label="policy")
    plan = data.draw(plans(), label="plan")
    carried = data.draw(carried_events(len(plan)), label="carried")

    def outcome_for(step: int, tool: str, attempt: int) -> Outcome:
        if attempt > 3:  # a rule may retry for ever: the tool comes back eventually
            return {"success": True, "output": {"attempt": attempt}}
        return data.draw(outcomes(), label=f"outcome of step {step} {tool} attempt {attempt}")

    try:
        run = simulate(policy, plan, outcome_for, carried=carried, tenant=tenant,
                       trace_id=TRACE, agent_owner=OWNER)
    except Undocumented:
        reject()  # the doc does not say what a runtime emits here
    write_trace(projected, run.events, data.draw(st.sampled_from(("ingest", "writer"))),
                tmp_path)
    stored = get_trace(projected, tenant, TRACE).records
    assert [comparable(chain.wire_part(r)) for r in stored] == \
        [comparable(e) for e in run.events], "the simulator's memory hashes are the ledger's"
    assert list_findings(projected, tenant) == []

    has_failure = any(is_failure_point(e["event"], e["payload"]) for e in run.events)
    chosen = data.draw(st.integers(1, len(run.events))
                       | (st.none() if has_failure else st.nothing()), label="from_seq")
    fork = default_fork(run.events) if chosen is None else chosen
    dry_run = data.draw(st.booleans(), label="dry_run")
    replayer = Replayer(projected)
    before = source_states(projected, tenant)
    result = replayer.replay(tenant, TRACE, Policy.from_obj(policy), from_seq=chosen,
                             dry_run=dry_run)
    assert source_states(projected, tenant) == before
    assert result.fork_seq == fork
    for e in result.events:
        assert set(e) == WIRE_FIELDS and e["tenant"] == tenant
    assert_same_events(result.events, run.events[fork - 1:])
    assert result.replay_status == expected_status(run.events, fork)
    assert result.first_divergence is None
    calls = [e for e in result.events if e["event"] == "TOOL_EXEC"]
    assert [c["source"] for c in result.outcome_sources] == ["source"] * len(calls)
    if not dry_run:
        assert str(result.replay_trace_id).startswith(TRACE + "~replay-")
        assert {e["trace_id"] for e in result.events} <= {result.replay_trace_id}
        stored_replay = replayer.stored(tenant, str(result.replay_trace_id))["events"]
        assert_same_events(stored_replay, run.events[fork - 1:])


# -- the simulator's reading of the grammar ----------------------------------------------

def test_simulated_runtime_follows_the_documented_chain() -> None:
    """Retry, then the fallback, then a memory write of the fallback's output."""
    policy = {"retry": {"per_tool": {"search": 2}}, "fallback": {"search": ["search_cache"]}}
    fail = {"success": False, "error_reason": "429 rate limited", "error_class": "retryable"}
    run = simulate(policy, [Step("planner", "search", {"q": 1})],
                   scripted({(1, "search"): [fail, fail],
                             (1, "search_cache"): [{"success": True, "output": 3}]}),
                   carried=[Carried((1, "REASONER_ACTION", 1), "EXEC_START", {}, "planner")])
    assert [(e["event"], e["payload"].get("attempt"), e["payload"].get("rule"))
            for e in run.events] == [
        ("EXEC_START", None, None), ("REASONER_ACTION", None, None), ("TOOL_EXEC", 1, None),
        ("CALLBACK_RESULT", None, None), ("CALLBACK_RETRY", 2, None), ("TOOL_EXEC", 2, None),
        ("CALLBACK_RESULT", None, None), ("CALLBACK_POLICY_RESOLVED", None, "fallback"),
        ("CALLBACK_FALLBACK", None, None), ("TOOL_EXEC", 1, None),
        ("CALLBACK_RESULT", None, None), ("CALLBACK_POLICY_RESOLVED", None, "write_memory"),
        ("CALLBACK_MEMORY_WRITE", None, None), ("CALLBACK_SUCCESS", None, None)]
    assert run.events[-2]["payload"] == {"key": "search_cache_result", "value": 3}
    assert not run.terminated


# -- the issue's example -----------------------------------------------------------------

FETCH_FAILED = {"success": False, "error_reason": "503 unavailable", "error_class": "replaceable"}
MIRROR_DOC = {"success": True, "output": {"doc": "mirror copy", "bytes": 512}}
RECOVER = {"fallback": {"fetch_doc": ["fetch_doc_mirror"]}}


def terminated_fetch(store: Store, tenant: str) -> list[Event]:
    """A trace whose ``fetch_doc`` failed with no fallback: it terminated."""
    run = simulate({}, [Step("planner", "fetch_doc", {"url": "https://example.org/a"})],
                   scripted({(1, "fetch_doc"): [FETCH_FAILED]}),
                   carried=[Carried((1, "REASONER_ACTION", 1), "EXEC_START", {}, "planner")],
                   tenant=tenant, trace_id=TRACE)
    assert run.terminated and run.events[-1]["payload"] == {
        "reason": "fetch_doc: 503 unavailable"}
    write_trace(store, run.events, "writer")
    return run.events


def test_a_saved_backtest_stores_each_chunk_of_replays_in_one_commit(
        projected: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """--save writes a chunk's replays together (one commit, one catch-up of the
    views), each named and linked as a replay stored alone is; verify passes."""
    from replay import backtest

    tenant = fresh_tenant()
    traces = [f"run-{k}" for k in range(5)]
    for trace_id in traces:
        run = simulate({}, [Step("planner", "fetch_doc", {"url": "https://example.org/a"})],
                       scripted({(1, "fetch_doc"): [FETCH_FAILED]}),
                       carried=[Carried((1, "REASONER_ACTION", 1), "EXEC_START", {}, "planner")],
                       tenant=tenant, trace_id=trace_id)
        write_trace(projected, run.events, "writer")
    monkeypatch.setattr(backtest, "CHUNK", 2)
    commits: list[int] = []
    projected.add_commit_listener(lambda: commits.append(1))
    replayer = Replayer(projected)
    report = replayer.backtest(tenant, Policy.from_obj(RECOVER), save=True,
                               outcomes={"fetch_doc_mirror": MIRROR_DOC}, reason="chunks")
    assert report.terminated_traces == report.recovered == 5
    assert len(commits) == 3  # chunks of 2, 2 and 1 traces
    links = replayer.replays(tenant)
    assert sorted((link["source_trace_id"], link["replay_trace_id"]) for link in links) == [
        (t, f"{t}~replay-1") for t in traces]
    assert {link["reason"] for link in links} == {"chunks"}
    for trace_id in traces:
        replay = replayer.stored(tenant, f"{trace_id}~replay-1")
        assert replay["source_trace_id"] == trace_id
        assert {e["trace_id"] for e in replay["events"]} == {f"{trace_id}~replay-1"}
    assert verify(projected, tenant=tenant).ok


@pytest.mark.parametrize("texts", [{"reason": "why\ud800"}, {"by": "al\udcff"}])
def test_a_reason_or_author_no_record_can_hold_is_refused_before_any_work(
        projected: Store, texts: dict[str, str]) -> None:
    """A lone surrogate (no UTF-8 holds one) in ``reason`` or ``by`` failed in the
    encoder once the replay was done (UnicodeEncodeError); nothing is stored."""
    tenant = fresh_tenant()
    terminated_fetch(projected, tenant)
    replayer = Replayer(projected)
    for run in (lambda: replayer.replay(tenant, TRACE, Policy.from_obj(RECOVER),
                                        outcomes={"fetch_doc_mirror": MIRROR_DOC}, **texts),
                lambda: replayer.backtest(tenant, Policy.from_obj(RECOVER), save=True, **texts)):
        with pytest.raises(UsageError, match="lone surrogate"):
            run()
    assert replayer.replays(tenant) == []


@pytest.mark.parametrize("as_file", [False, True], ids=["dict", "file"])
def test_terminated_fetch_recovers_with_a_fallback_and_a_scripted_outcome(
        projected: Store, tmp_path: Path, as_file: bool) -> None:
    """The issue's example ends recovered, with the fallback's output in memory."""
    tenant = fresh_tenant()
    source = terminated_fetch(projected, tenant)
    scripted_outcomes: Any = {"fetch_doc_mirror": MIRROR_DOC}
    if as_file:
        path = tmp_path / "outcomes.json"
        path.write_text(json.dumps(scripted_outcomes), encoding="utf-8")
        scripted_outcomes = str(path)
    before = source_states(projected, tenant)
    result = Replayer(projected).replay(tenant, TRACE, Policy.from_obj(RECOVER),
                                        outcomes=scripted_outcomes, reason="mirror?", by="alice",
                                        dry_run=False)
    assert source_states(projected, tenant) == before
    assert result.replay_status == "recovered"
    assert result.fork_seq == 3  # the default fork: the failed TOOL_EXEC of the last step
    expected = simulate(RECOVER, [Step("planner", "fetch_doc", {"url": "https://example.org/a"})],
                        scripted({(1, "fetch_doc"): [FETCH_FAILED],
                                  (1, "fetch_doc_mirror"): [MIRROR_DOC]}),
                        carried=[Carried((1, "REASONER_ACTION", 1), "EXEC_START", {}, "planner")],
                        tenant=tenant, trace_id=TRACE)
    assert_same_events(result.events, expected.events[2:])
    kinds = [e["event"] for e in result.events]
    assert "CALLBACK_FALLBACK" in kinds and "EXEC_TERMINATED" not in kinds
    [mirror] = [e for e in result.events if e["event"] == "TOOL_EXEC"
                and e["payload"]["tool"] == "fetch_doc_mirror"]
    assert mirror["payload"]["success"] is True
    assert [(c["tool"], c["source"]) for c in result.as_json()["outcome_sources"]] == [
        ("fetch_doc", "source"), ("fetch_doc_mirror", "scripted")]
    assert result.as_json()["memory_diff"] == {"memory/planner": {
        "added": {"fetch_doc_mirror_result": MIRROR_DOC["output"]}, "removed": {},
        "changed": {}}}
    assert source[-1]["event"] == "EXEC_TERMINATED"


def test_a_call_no_outcome_source_answers_stops_with_needs_outcome(projected: Store) -> None:
    """A fallback to a tool with no outcome anywhere is never given an invented result."""
    tenant = fresh_tenant()
    terminated_fetch(projected, tenant)
    result = Replayer(projected).replay(tenant, TRACE, Policy.from_obj(RECOVER), dry_run=True)
    assert result.replay_status == "needs_outcome"
    assert [e["event"] for e in result.events][-2:] == ["CALLBACK_POLICY_RESOLVED",
                                                        "CALLBACK_FALLBACK"]
    assert not any(e["event"] == "TOOL_EXEC" and e["payload"]["tool"] == "fetch_doc_mirror"
                   for e in result.events)
    missing = result.as_json()["missing_outcome"]
    assert (missing["tool"], missing["attempt"], missing["args"]) == (
        "fetch_doc_mirror", 1, {"url": "https://example.org/a"})


# -- calls no reasoner action planned --------------------------------------------------

FETCH_ARGS = {"url": "https://example.org/b"}


def _record(store: Store, tenant: str, steps: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Record ``(event, executed_by, payload)`` steps as trace TRACE of ``tenant``."""
    writer = TraceWriter(store, tenant=tenant)
    for i, (event, by, payload) in enumerate(steps):
        writer.record(TRACE, event, payload, agent_owner=OWNER, executed_by=by,
                      ts=f"2026-11-20T10:00:{i:02d}Z")
    writer.flush()


UNPLANNED_FAILURE = [
    ("TOOL_EXEC", "critic", {"tool": "fetch_doc", "args": FETCH_ARGS, **FETCH_FAILED}),
    ("CALLBACK_RESULT", "critic", {"tool": "fetch_doc", "status": "failed"}),
    ("EXEC_TERMINATED", "system", {"reason": "fetch_doc: 503 unavailable"}),
]
A_FINISHED_STEP = [
    ("REASONER_ACTION", OWNER, {"action": {"tool": "search", "args": {"q": "x"}}}),
    ("TOOL_EXEC", OWNER, {"tool": "search", "args": {"q": "x"}, "success": True}),
    ("CALLBACK_RESULT", OWNER, {"tool": "search", "status": "success"}),
    ("CALLBACK_SUCCESS", OWNER, {"next": False}),
]


@pytest.mark.parametrize("before", [[("EXEC_START", OWNER, {})], A_FINISHED_STEP],
                         ids=["no-reasoner-action", "after-a-finished-step"])
def test_a_failed_call_no_reasoner_action_planned_is_made_again_from_the_fork(
        projected: Store, before: list[tuple[str, str, dict[str, Any]]]) -> None:
    """A trace whose failing TOOL_EXEC no REASONER_ACTION planned (none at all, or the
    last step had ended) replays from that call: made again with its own tool, args
    and agent, then the policy's fallback; not an empty replay called recovered."""
    tenant = fresh_tenant()
    _record(projected, tenant, before + UNPLANNED_FAILURE)
    result = Replayer(projected).replay(tenant, TRACE, Policy.from_obj(RECOVER),
                                        outcomes={"fetch_doc_mirror": MIRROR_DOC},
                                        dry_run=True)
    assert result.fork_seq == len(before) + 1 and result.replay_status == "recovered"
    assert [(e["event"], e["executed_by"]) for e in result.events] == [
        ("TOOL_EXEC", "critic"), ("CALLBACK_RESULT", "critic"),
        ("CALLBACK_POLICY_RESOLVED", "critic"), ("CALLBACK_FALLBACK", "critic"),
        ("TOOL_EXEC", "critic"), ("CALLBACK_RESULT", "critic"),
        ("CALLBACK_POLICY_RESOLVED", "critic"), ("CALLBACK_MEMORY_WRITE", "critic"),
        ("CALLBACK_SUCCESS", "critic")]
    calls = [e["payload"] for e in result.events if e["event"] == "TOOL_EXEC"]
    assert [(c["tool"], c["args"], c["success"]) for c in calls] == [
        ("fetch_doc", FETCH_ARGS, False), ("fetch_doc_mirror", FETCH_ARGS, True)]
    assert [(c["tool"], c["source"]) for c in result.as_json()["outcome_sources"]] == [
        ("fetch_doc", "source"), ("fetch_doc_mirror", "scripted")]


def test_an_output_memory_cannot_hold_stops_the_replay_naming_the_way_out(
        projected: Store) -> None:
    """A fallback whose output is not I-JSON (an integer beyond 2**53) cannot be
    written to memory: a usage error naming the seq and the rule that leaves the
    write out, and with that rule the replay recovers."""
    from ledger.errors import UsageError

    tenant = fresh_tenant()
    _record(projected, tenant, [("EXEC_START", OWNER, {}), *UNPLANNED_FAILURE])
    huge = {"fetch_doc_mirror": {"success": True, "output": {"bytes": 2**60}}}
    with pytest.raises(UsageError, match=r"cannot write memory at seq 9 .*payload\.value\.bytes"
                                         r".*then: \{write_memory: false\}"):
        Replayer(projected).replay(tenant, TRACE, Policy.from_obj(RECOVER), outcomes=huge,
                                   dry_run=True)
    no_write = {**RECOVER, "rules": [{"when": {"tool": "fetch_doc_mirror"},
                                      "then": {"write_memory": False}}]}
    result = Replayer(projected).replay(tenant, TRACE, Policy.from_obj(no_write),
                                        outcomes=huge, dry_run=True)
    assert result.replay_status == "recovered"
