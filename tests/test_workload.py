"""Tests for the deterministic demo workload and the synthetic benchmark stream."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from ledger.memory import memory_hash
from ledger.workload import DEFAULT_BASE_TS, demo_bad_lines, demo_events, synthetic_lines

Event = dict[str, Any]
ENVELOPE = ("trace_id", "seq", "event", "ts", "tenant", "agent_owner", "executed_by", "payload")


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return demo_events()


def _traces(events: list[Event]) -> dict[tuple[str, str], list[Event]]:
    traces: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for ev in events:
        traces[ev["tenant"], ev["trace_id"]].append(ev)
    return {key: sorted(evs, key=lambda ev: ev["seq"]) for key, evs in traces.items()}


def _scope(ev: Event) -> str:
    return str(ev.get("write_scope", f"memory/{ev['agent_owner']}"))


def _cross_agent_writes(events: list[Event]) -> list[tuple[Event, bool]]:
    """Each cross-agent memory write with whether an in-trace grant authorized it."""
    found: list[tuple[Event, bool]] = []
    for evs in _traces(events).values():
        grants: dict[tuple[str, str], bool] = {}
        for ev in evs:
            p = ev["payload"]
            if ev["event"] == "CALLBACK_PERMISSION":
                grants[p["executing_agent"], p["scope"]] = p["granted"]
            elif ev["event"] == "CALLBACK_MEMORY_WRITE" and (
                ev["write_scope"] != f"memory/{ev['executed_by']}"
            ):
                found.append((ev, grants.get((ev["executed_by"], ev["write_scope"]), False)))
    return found


def _wrong_hashes(events: list[Event]) -> list[Event]:
    """Events whose memory_hash differs from the hash their trace's logged writes imply."""
    wrong = []
    for evs in _traces(events).values():
        memory: dict[str, dict[str, Any]] = defaultdict(dict)
        for ev in evs:
            state = memory[_scope(ev)]
            if ev["event"] == "CALLBACK_MEMORY_WRITE":
                if ev["payload"].get("op") == "delete":
                    del state[ev["payload"]["key"]]
                else:
                    state[ev["payload"]["key"]] = ev["payload"]["value"]
            if ev["memory_hash"] != memory_hash(state):
                wrong.append(ev)
    return wrong


def test_demo_events_are_deterministic(events: list[Event]) -> None:
    """The same seed and base time give identical events."""
    assert demo_events() == events


def test_demo_events_shift_with_base_ts(events: list[Event]) -> None:
    """Moving base_ts moves every timestamp by the same amount and nothing else."""
    shifted = demo_events(base_ts=DEFAULT_BASE_TS + timedelta(days=1))
    assert [ev["ts"] for ev in shifted] != [ev["ts"] for ev in events]
    assert [{**ev, "ts": ""} for ev in shifted] == [{**ev, "ts": ""} for ev in events]


def test_demo_events_have_envelope_fields(events: list[Event]) -> None:
    """Every event carries the required envelope fields, a tenant and a memory_hash."""
    for ev in events:
        assert all(field in ev for field in ENVELOPE), ev
        assert isinstance(ev["payload"], dict)
        assert ev["memory_hash"].startswith("sha256:") and len(ev["memory_hash"]) == 71


def test_demo_size_is_realistic(events: list[Event]) -> None:
    """The demo has 30-60 traces and a few hundred to ~1,500 events."""
    assert 30 <= len(_traces(events)) <= 60
    assert 300 <= len(events) <= 1_500


def test_demo_seq_is_gap_free_per_trace(events: list[Event]) -> None:
    """Each (tenant, trace_id) runs seq 1..n with no gaps."""
    for evs in _traces(events).values():
        assert [ev["seq"] for ev in evs] == list(range(1, len(evs) + 1))


def test_demo_timestamps_increase_within_three_days_before_base(events: list[Event]) -> None:
    """Timestamps are RFC 3339 with Z, rise within a trace and lie in the 3 days before base."""
    for evs in _traces(events).values():
        stamps = [datetime.fromisoformat(ev["ts"]) for ev in evs]
        assert all(ev["ts"].endswith("Z") for ev in evs)
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert DEFAULT_BASE_TS - timedelta(days=3) <= stamps[0]
        assert stamps[-1] < DEFAULT_BASE_TS
    assert stamps[0].tzinfo == UTC


def test_demo_shares_a_trace_id_across_tenants(events: list[Event]) -> None:
    """The same trace_id names separate traces in acme and globex."""
    traces = _traces(events)
    assert ("acme", "q4-market-report") in traces and ("globex", "q4-market-report") in traces
    assert {ev["tenant"] for ev in events} == {"acme", "globex"}


def test_demo_retries_then_succeeds(events: list[Event]) -> None:
    """Some trace retries a tool and the retried attempt succeeds."""
    retried = {
        (ev["tenant"], ev["trace_id"], ev["payload"]["tool"], ev["payload"]["attempt"])
        for ev in events if ev["event"] == "CALLBACK_RETRY"
    }
    assert any(
        (ev["tenant"], ev["trace_id"], ev["payload"]["tool"], ev["payload"]["attempt"]) in retried
        and ev["payload"]["success"]
        for ev in events if ev["event"] == "TOOL_EXEC"
    )


def test_demo_fallbacks_both_recover_and_fail(events: list[Event]) -> None:
    """Fallbacks occur, some in traces that finish and some in traces that are terminated."""
    traces = _traces(events)
    with_fallback = {(ev["tenant"], ev["trace_id"]) for ev in events
                     if ev["event"] == "CALLBACK_FALLBACK"}
    ends = {traces[key][-1]["event"] == "EXEC_TERMINATED" for key in with_fallback}
    assert ends == {True, False}


def test_demo_terminates_about_a_quarter_of_traces(events: list[Event]) -> None:
    """Roughly 25% of traces end in EXEC_TERMINATED."""
    traces = _traces(events)
    ended = [key for key, evs in traces.items() if evs[-1]["event"] == "EXEC_TERMINATED"]
    assert 0.18 <= len(ended) / len(traces) <= 0.32


def test_demo_tool_failures_cover_every_error_class(events: list[Event]) -> None:
    """Failed tool calls include retryable, replaceable and terminal errors."""
    classes = {ev["payload"].get("error_class") for ev in events
               if ev["event"] == "TOOL_EXEC" and not ev["payload"]["success"]}
    assert classes == {"retryable", "replaceable", "terminal"}


def test_demo_has_authorized_cross_agent_write(events: list[Event]) -> None:
    """A cross-agent memory write follows a granting CALLBACK_PERMISSION."""
    assert any(ok for _, ok in _cross_agent_writes(events))


def test_demo_has_unauthorized_cross_agent_write(events: list[Event]) -> None:
    """A cross-agent memory write happens with no standing grant."""
    unauthorized = {ev["trace_id"] for ev, ok in _cross_agent_writes(events) if not ok}
    assert unauthorized == {"supplier-audit", "budget-review"}


def test_demo_has_memory_delete(events: list[Event]) -> None:
    """Some memory write deletes a key."""
    assert any(ev["payload"].get("op") == "delete" for ev in events
               if ev["event"] == "CALLBACK_MEMORY_WRITE")


def test_demo_has_exactly_one_wrong_memory_hash(events: list[Event]) -> None:
    """Exactly one event, an acme memory write, claims a hash its log does not explain."""
    [wrong] = _wrong_hashes(events)
    assert (wrong["tenant"], wrong["trace_id"]) == ("acme", "pricing-memo")
    assert wrong["event"] == "CALLBACK_MEMORY_WRITE"


def test_demo_bad_lines_conflict_with_a_demo_event(events: list[Event]) -> None:
    """One bad line reuses a demo event's (tenant, trace_id, seq) with a different payload."""
    by_key = {(ev["tenant"], ev["trace_id"], ev["seq"]): ev for ev in events}
    parsed = []
    for line in demo_bad_lines():
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    clashes = [ev for ev in parsed
               if (ev.get("tenant"), ev.get("trace_id"), ev.get("seq")) in by_key]
    assert len(clashes) == 1
    original = by_key[clashes[0]["tenant"], clashes[0]["trace_id"], clashes[0]["seq"]]
    assert clashes[0]["payload"] != original["payload"]


def test_demo_bad_lines_include_undecodable_input() -> None:
    """Bad lines include one that is not JSON and one that is not UTF-8."""
    lines = demo_bad_lines()
    assert all(line.endswith(b"\n") for line in lines)
    not_utf8 = 0
    for line in lines:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            not_utf8 += 1
    assert not_utf8 == 1
    assert sum(line.rstrip().endswith(b"{") for line in lines) == 1


def test_synthetic_lines_yield_exactly_n_parseable_lines() -> None:
    """synthetic_lines yields n newline-terminated JSON objects, even for a partial trace."""
    lines = list(synthetic_lines(1_234, events_per_trace=10))
    assert len(lines) == 1_234
    assert all(line.endswith(b"\n") and isinstance(orjson.loads(line), dict) for line in lines)


def test_synthetic_lines_have_gap_free_seq() -> None:
    """Each synthetic (tenant, trace_id) runs seq 1..n with no gaps."""
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for line in synthetic_lines(5_000, tenants=3, events_per_trace=7):
        ev = orjson.loads(line)
        seqs[ev["tenant"], ev["trace_id"]].append(ev["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    assert len({tenant for tenant, _ in seqs}) == 3


def test_synthetic_lines_shape_tool_call_chains() -> None:
    """Synthetic events are valid-looking tool-call chains without memory hashes."""
    events = [orjson.loads(line) for line in synthetic_lines(20_000)]
    kinds = {ev["event"] for ev in events}
    assert {"REASONER_ACTION", "TOOL_EXEC", "CALLBACK_RESULT", "CALLBACK_RETRY",
            "CALLBACK_FALLBACK", "CALLBACK_MEMORY_WRITE", "EXEC_TERMINATED"} <= kinds
    assert all("memory_hash" not in ev and all(f in ev for f in ENVELOPE) for ev in events)
    assert all(ev["write_scope"].startswith("memory/") for ev in events
               if ev["event"] == "CALLBACK_MEMORY_WRITE")
    assert all(ev["payload"]["attempt"] >= 2 for ev in events if ev["event"] == "CALLBACK_RETRY")


def test_synthetic_lines_are_deterministic_per_seed() -> None:
    """The same seed gives the same bytes; another seed gives different ones."""
    assert list(synthetic_lines(500)) == list(synthetic_lines(500))
    assert list(synthetic_lines(500)) != list(synthetic_lines(500, seed=2))


def test_synthetic_lines_reject_bad_arguments() -> None:
    """Negative counts and empty traces or tenants are refused."""
    with pytest.raises(ValueError):
        next(synthetic_lines(10, events_per_trace=0))
