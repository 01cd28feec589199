"""Hand-written traces for each edge case of the definitions in docs/PROJECTIONS.md.

Every test runs on SQLite and PostgreSQL (the ``store`` fixture) with a projector
attached, so each event is applied in its own commit (context carried across
batches), and asserts the exact rows the documentation gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.grants import add_grant, revoke_grant
from ledger.ingest import ingest
from ledger.store import Store
from ledger.writer import TraceWriter
from projections import Projector, queries

TENANT = "acme"
EMPTY_HASH = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def ts(minute: int, day: int = 20) -> str:
    """2026-11-<day> 10:00 UTC plus ``minute``, as the views give it."""
    return f"2026-11-{day:02d}T{10 + minute // 60:02d}:{minute % 60:02d}:00.000000Z"


def record(store: Store, trace_id: str, steps: list[tuple[Any, ...]], *,
           owner: str = "planner", day: int = 20) -> None:
    """Record ``(minute, event, payload[, executed_by[, write_scope]])`` steps in order."""
    writer = TraceWriter(store, tenant=TENANT)
    for minute, event, payload, *rest in steps:
        by = rest[0] if rest else owner
        scope = rest[1] if len(rest) > 1 else None
        writer.record(trace_id, event, payload, agent_owner=owner, executed_by=by,
                      write_scope=scope, ts=ts(minute, day))


def rows(answer: list[Any], *fields: str) -> list[dict[str, Any]]:
    """The answer's rows as JSON, cut to ``fields`` (all fields when none are named)."""
    out = [r.as_json() for r in answer]
    return [{f: r[f] for f in fields} for r in out] if fields else out


@pytest.fixture
def projected(store: Store) -> Iterator[Store]:
    """The store with a projector attached: views follow every commit."""
    Projector(store).attach()
    yield store


def search(success: bool, **extra: Any) -> dict[str, Any]:
    return {"tool": "search", "args": {"q": "x"}, "success": success, **extra}


def action(tool: str) -> dict[str, Any]:
    return {"action": {"tool": tool, "args": {}}}


def fallback(original: str, to: str) -> dict[str, Any]:
    return {"original_tool": original, "fallback_tool": to}


def exec_(tool: str, success: bool, attempt: int = 1) -> dict[str, Any]:
    return {"tool": tool, "args": {}, "success": success, "attempt": attempt}


# -- tool in play, failure index -------------------------------------------------------

def test_exec_terminated_inherits_the_fallback_tool_in_play(projected: Store) -> None:
    """A failure point naming no tool gets the tool of the trace's latest event that
    named one (the fallback tool of a CALLBACK_FALLBACK); null before any."""
    record(projected, "t1", [
        (0, "EXEC_FAIL", {"error_code": "E_BOOT", "reason": "cold start"}),
        (1, "REASONER_ACTION", action("search")),
        (2, "TOOL_EXEC", search(False, error_reason="429 rate limited", error_class="retryable")),
        (3, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (4, "CALLBACK_POLICY_RESOLVED", {"policy": {
            "write_memory": False, "record_trace": True, "fallback_required": True,
            "trigger_next": False}}),
        (5, "EXEC_TERMINATED", {"reason": "fallback failed", "error_code": "E_TERM"}),
    ])
    common = {"tenant": TENANT, "trace_id": "t1", "executed_by": "planner"}
    assert rows(queries.failures(projected, TENANT)) == [
        {**common, "seq": 1, "ts": ts(0), "event": "EXEC_FAIL", "tool": None,
         "reason": "cold start", "error_class": None, "error_code": "E_BOOT"},
        {**common, "seq": 3, "ts": ts(2), "event": "TOOL_EXEC", "tool": "search",
         "reason": "429 rate limited", "error_class": "retryable", "error_code": None},
        {**common, "seq": 6, "ts": ts(5), "event": "EXEC_TERMINATED", "tool": "search_cache",
         "reason": "fallback failed", "error_class": None, "error_code": "E_TERM"},
    ]
    assert rows(queries.failures(projected, TENANT, tool="search_cache"), "seq") == [{"seq": 6}]


def test_failure_reasons_come_from_the_documented_fields(projected: Store) -> None:
    """``reason`` is error_reason for TOOL_EXEC and payload.reason for the others,
    null when absent."""
    record(projected, "t1", [
        (0, "TOOL_EXEC", search(False, reason="not the field for TOOL_EXEC")),
        (1, "CALLBACK_RESULT", {"tool": "search", "status": "failed"}),
        (2, "TOOL_FAIL", {"tool": "calc", "reason": "division by zero"}),
        (3, "CALLBACK_FAIL", {"reason": "policy refused"}),
        (4, "CALLBACK_RESULT", {"tool": "calc", "status": "success"}),
    ])
    assert rows(queries.failures(projected, TENANT), "seq", "event", "tool", "reason") == [
        {"seq": 1, "event": "TOOL_EXEC", "tool": "search", "reason": None},
        {"seq": 2, "event": "CALLBACK_RESULT", "tool": "search", "reason": None},
        {"seq": 3, "event": "TOOL_FAIL", "tool": "calc", "reason": "division by zero"},
        {"seq": 4, "event": "CALLBACK_FAIL", "tool": "calc", "reason": "policy refused"},
    ]


def test_failure_keeps_error_code_as_given(projected: Store) -> None:
    """error_code (a string or an integer in the contract) is kept as the event gave it."""
    record(projected, "t1", [(0, "EXEC_FAIL", {"error_code": 42, "reason": "x"})])
    assert rows(queries.failures(projected, TENANT), "error_code") == [{"error_code": 42}]


# -- recoveries --------------------------------------------------------------------------

def test_retry_is_recovered_only_by_the_first_later_exec_of_its_tool(projected: Store) -> None:
    """Recovered when the first later TOOL_EXEC of the tool succeeds (other tools'
    execs in between do not count); not when that exec fails, or when a
    REASONER_ACTION, CALLBACK_FALLBACK or EXEC_TERMINATED comes first."""
    record(projected, "recovered", [
        (0, "TOOL_EXEC", exec_("search", False)),
        (1, "CALLBACK_RETRY", {"tool": "search", "attempt": 2}),
        (2, "TOOL_EXEC", exec_("calc", False)),
        (3, "TOOL_EXEC", exec_("search", True, 2)),
        (4, "TOOL_EXEC", exec_("calc", True)),
    ], day=20)
    record(projected, "first-exec-failed", [
        (0, "CALLBACK_RETRY", {"tool": "search", "attempt": 2}),
        (1, "TOOL_EXEC", exec_("search", False, 2)),
        (2, "TOOL_EXEC", exec_("search", True, 3)),
    ], day=21)
    record(projected, "interrupted", [
        (0, "CALLBACK_RETRY", {"tool": "search", "attempt": 2}),
        (1, "REASONER_ACTION", action("search")),
        (2, "TOOL_EXEC", exec_("search", True)),
    ], day=22)
    record(projected, "terminated", [
        (0, "CALLBACK_RETRY", {"tool": "calc", "attempt": 2}),
        (1, "EXEC_TERMINATED", {"reason": "budget"}),
        (2, "TOOL_EXEC", exec_("calc", True)),
        (3, "TOOL_EXEC", exec_("calc", False)),
    ], day=23)
    assert rows(queries.retry_stats(projected, TENANT, by="day")) == [
        {"day": "2026-11-20", "retries": 1, "recovered": 1, "tool_execs": 4, "rate": 0.25},
        {"day": "2026-11-21", "retries": 1, "recovered": 0, "tool_execs": 2, "rate": 0.5},
        {"day": "2026-11-22", "retries": 1, "recovered": 0, "tool_execs": 1, "rate": 1.0},
        {"day": "2026-11-23", "retries": 1, "recovered": 0, "tool_execs": 2, "rate": 0.5},
    ]
    by_tool = {r["tool"]: r for r in rows(queries.retry_stats(projected, TENANT))}
    assert by_tool == {
        "search": {"tool": "search", "retries": 3, "recovered": 1, "tool_execs": 5,
                   "rate": 0.6},
        "calc": {"tool": "calc", "retries": 1, "recovered": 0, "tool_execs": 4, "rate": 0.25},
    }


def test_fallback_is_recovered_after_a_retry_of_the_fallback_tool(projected: Store) -> None:
    """A fallback recovers when some later exec of the fallback tool succeeds before the
    next REASONER_ACTION / CALLBACK_FALLBACK / EXEC_TERMINATED; failed execs and
    retries of the fallback tool in between are fine."""
    record(projected, "retried", [
        (0, "TOOL_EXEC", exec_("search", False)),
        (1, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (2, "TOOL_EXEC", exec_("search_cache", False)),
        (3, "CALLBACK_RETRY", {"tool": "search_cache", "attempt": 2}),
        (4, "TOOL_EXEC", exec_("search_cache", True, 2)),
        (5, "TOOL_EXEC", exec_("calc", True)),
    ], day=20)
    record(projected, "replanned", [
        (0, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (1, "REASONER_ACTION", action("search_cache")),
        (2, "TOOL_EXEC", exec_("search_cache", True)),
    ], day=21)
    record(projected, "superseded", [
        (0, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (1, "CALLBACK_FALLBACK", fallback("search_cache", "calc")),
        (2, "TOOL_EXEC", exec_("search_cache", True)),
        (3, "TOOL_EXEC", exec_("calc", True)),
    ], day=22)
    assert rows(queries.fallback_stats(projected, TENANT, by="day")) == [
        {"day": "2026-11-20", "fallbacks": 1, "recovered": 1, "tool_execs": 4, "rate": 0.25},
        {"day": "2026-11-21", "fallbacks": 1, "recovered": 0, "tool_execs": 1, "rate": 1.0},
        {"day": "2026-11-22", "fallbacks": 2, "recovered": 1, "tool_execs": 2, "rate": 1.0},
    ]
    pairs = sorted(rows(queries.fallback_stats(projected, TENANT, by="pair")),
                   key=lambda r: (r["tool"], r["fallback_tool"]))
    assert pairs == [
        {"tool": "search", "fallback_tool": "search_cache", "fallbacks": 3, "recovered": 1,
         "tool_execs": 1, "rate": 3.0},
        {"tool": "search_cache", "fallback_tool": "calc", "fallbacks": 1, "recovered": 1,
         "tool_execs": 4, "rate": 0.25},
    ]
    assert rows(queries.retry_stats(projected, TENANT)) == [
        {"tool": "search_cache", "retries": 1, "recovered": 1, "tool_execs": 4, "rate": 0.25}]


def test_stats_windows_are_inclusive_and_count_only_events_inside(projected: Store) -> None:
    """``since <= ts <= until``: a fallback exactly at either bound counts, and so do
    only the TOOL_EXECs inside the window (a date bound is its first / last instant)."""
    record(projected, "t1", [
        (0, "TOOL_EXEC", exec_("search", False)),
        (10, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (20, "TOOL_EXEC", exec_("search", False)),
        (30, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (40, "TOOL_EXEC", exec_("search", False)),
    ])
    window = queries.fallback_stats(projected, TENANT, since=ts(10), until=ts(30))
    assert rows(window) == [
        {"tool": "search", "fallbacks": 2, "recovered": 0, "tool_execs": 1, "rate": 2.0}]
    whole_day = queries.fallback_stats(projected, TENANT, since="2026-11-20", until="2026-11-20")
    assert rows(whole_day, "fallbacks", "tool_execs") == [{"fallbacks": 2, "tool_execs": 3}]
    assert queries.fallback_stats(projected, TENANT, until="2026-11-19") == []


def test_instants_before_year_1000_keep_four_digit_years_in_views_and_windows(
    projected: Store,
) -> None:
    """A timestamp before year 1000 given with an offset is normalised to a four-digit
    year (``0999-...``), so the views sort it as a time, and a stats window inside that
    year counts its whole hours (from the hourly rollup) as well as its partial ones."""
    writer = TraceWriter(projected, tenant=TENANT)
    for when, event, payload in [
        ("0999-12-31T22:30:00+01:00", "TOOL_EXEC", exec_("search", False)),  # 21:30 UTC
        ("0999-12-31T21:40:00-01:00", "CALLBACK_FALLBACK", fallback("search", "cache")),
        ("0999-12-31T22:50:00Z", "TOOL_EXEC", exec_("search", True)),
        ("0999-12-31T23:10:00Z", "TOOL_EXEC", exec_("cache", True)),
    ]:
        writer.record("old", event, payload, agent_owner="planner", executed_by="planner",
                      ts=when)
    assert [r.ts for r in queries.failures(projected, TENANT)] == [
        "0999-12-31T21:30:00.000000Z"]
    window = queries.fallback_stats(projected, TENANT, since="0999-12-31T21:15:00Z",
                                    until="0999-12-31T23:05:00Z")
    assert rows(window, "tool", "fallbacks", "tool_execs") == [
        {"tool": "search", "fallbacks": 1, "tool_execs": 2}]


def test_rates_are_exact_ratios(projected: Store) -> None:
    """``rate = fallbacks / tool_execs`` and ``share`` are the exact quotients."""
    record(projected, "t1", [
        (0, "TOOL_EXEC", exec_("search", False)),
        (1, "TOOL_EXEC", exec_("search", True)),
        (2, "TOOL_EXEC", exec_("search", True)),
        (3, "CALLBACK_FALLBACK", fallback("search", "search_cache")),
        (4, "CALLBACK_FAIL", {"reason": "x"}),
        (5, "CALLBACK_FAIL", {"reason": "y"}),
    ])
    assert rows(queries.fallback_stats(projected, TENANT), "rate") == [{"rate": 1 / 3}]
    shares = {r["reason"]: r["share"] for r in rows(
        queries.failure_stats(projected, TENANT, by="reason"))}
    assert shares == {None: 1 / 3, "x": 1 / 3, "y": 1 / 3}


def test_failure_stats_share_and_rate(projected: Store) -> None:
    """Per tool: failures, share of all failures in the window, failed execs over execs."""
    record(projected, "t1", [
        (0, "TOOL_EXEC", exec_("search", False)),
        (1, "TOOL_EXEC", exec_("search", True)),
        (2, "CALLBACK_RESULT", {"tool": "search", "status": "failed"}),
        (3, "EXEC_TERMINATED", {"reason": "budget"}),
    ])
    record(projected, "t2", [(0, "EXEC_FAIL", {"error_code": "E1", "reason": "budget"})])
    by_tool = sorted(rows(queries.failure_stats(projected, TENANT, by="tool")),
                     key=lambda r: str(r["tool"]))
    assert by_tool == [
        {"tool": None, "failures": 1, "share": 0.25, "failed_execs": 0, "tool_execs": 0,
         "rate": None},
        {"tool": "search", "failures": 3, "share": 0.75, "failed_execs": 1, "tool_execs": 2,
         "rate": 0.5},
    ]
    by_reason = sorted(rows(queries.failure_stats(projected, TENANT, by="reason")),
                       key=lambda r: str(r["reason"]))
    assert by_reason == [
        {"reason": None, "failures": 2, "share": 0.5},
        {"reason": "budget", "failures": 2, "share": 0.5},
    ]


# -- attribution -------------------------------------------------------------------------

def write(key: str, value: Any = 1) -> dict[str, Any]:
    return {"key": key, "value": value}


def permission(agent: str, scope: str, granted: bool) -> dict[str, Any]:
    return {"source_agent": "planner", "executing_agent": agent, "scope": scope,
            "granted": granted}


def test_permission_granted_then_revoked_before_a_write(projected: Store) -> None:
    """The latest earlier in-trace permission for (writer, scope) decides: granted gives
    ``permission:<seq>``; revoked before the write leaves it unauthorized."""
    record(projected, "t1", [
        (0, "CALLBACK_PERMISSION", permission("writer", "memory/planner", True)),
        (1, "CALLBACK_MEMORY_WRITE", write("a"), "writer", "memory/planner"),
        (2, "CALLBACK_PERMISSION", permission("writer", "memory/critic", True)),
        (3, "CALLBACK_PERMISSION", permission("writer", "memory/planner", False)),
        (4, "CALLBACK_MEMORY_WRITE", write("b"), "writer", "memory/planner"),
        (5, "CALLBACK_MEMORY_WRITE", write("c"), "planner", "memory/planner"),
        (6, "CALLBACK_MEMORY_WRITE", {"key": "a", "op": "delete"}, "writer", "memory/critic"),
    ])
    common = {"tenant": TENANT, "trace_id": "t1", "agent_owner": "planner"}
    assert rows(queries.audit_writes(projected, TENANT)) == [
        {**common, "seq": 2, "ts": ts(1), "scope": "memory/planner", "key": "a", "op": "set",
         "executed_by": "writer", "cross_agent": True, "authorized": True,
         "basis": "permission:1"},
        {**common, "seq": 5, "ts": ts(4), "scope": "memory/planner", "key": "b", "op": "set",
         "executed_by": "writer", "cross_agent": True, "authorized": False, "basis": None},
        {**common, "seq": 6, "ts": ts(5), "scope": "memory/planner", "key": "c", "op": "set",
         "executed_by": "planner", "cross_agent": False, "authorized": True,
         "basis": "own_scope"},
        {**common, "seq": 7, "ts": ts(6), "scope": "memory/critic", "key": "a",
         "op": "delete", "executed_by": "writer", "cross_agent": True, "authorized": True,
         "basis": "permission:3"},
    ]
    assert rows(queries.audit_findings(projected, TENANT), "trace_id", "seq", "kind", "at") == [
        {"trace_id": "t1", "seq": 5, "kind": "unauthorized_write", "at": ts(4)}]


def test_permission_in_another_trace_does_not_authorize(projected: Store) -> None:
    """Only an earlier permission *in the same trace* counts."""
    record(projected, "t1", [(0, "CALLBACK_PERMISSION",
                              permission("writer", "memory/planner", True))])
    record(projected, "t2", [(1, "CALLBACK_MEMORY_WRITE", write("a"), "writer", "memory/planner")])
    assert rows(queries.audit_writes(projected, TENANT), "trace_id", "authorized", "basis") == [
        {"trace_id": "t2", "authorized": False, "basis": None}]


def test_backdated_grant_reevaluates_an_earlier_write(projected: Store) -> None:
    """A grant recorded after a write, valid from before it, authorizes it; valid_from
    is inclusive and valid_until exclusive; the earliest covering grant is the basis."""
    record(projected, "t1", [
        (10, "CALLBACK_MEMORY_WRITE", write("a"), "writer", "memory/planner"),
        (20, "CALLBACK_MEMORY_WRITE", write("b"), "writer", "memory/planner"),
        (30, "CALLBACK_MEMORY_WRITE", write("c"), "writer", "memory/planner"),
    ])
    assert [r.seq for r in queries.audit_findings(projected, TENANT)] == [1, 2, 3]
    late = add_grant(projected, TENANT, "writer", "memory/planner", valid_from=ts(20))
    early = add_grant(projected, TENANT, "writer", "memory/planner", valid_from=ts(5),
                      valid_until=ts(20))
    add_grant(projected, TENANT, "critic", "memory/planner", valid_from=ts(0))
    assert rows(queries.audit_writes(projected, TENANT), "seq", "authorized", "basis") == [
        {"seq": 1, "authorized": True, "basis": f"grant:{early.grant_id}"},
        {"seq": 2, "authorized": True, "basis": f"grant:{late.grant_id}"},
        {"seq": 3, "authorized": True, "basis": f"grant:{late.grant_id}"},
    ]
    assert queries.audit_findings(projected, TENANT) == []
    wide = add_grant(projected, TENANT, "writer", "memory/planner", valid_from=ts(15))
    assert rows(queries.audit_writes(projected, TENANT), "seq", "basis") == [
        {"seq": 1, "basis": f"grant:{early.grant_id}"},
        {"seq": 2, "basis": f"grant:{wide.grant_id}"},
        {"seq": 3, "basis": f"grant:{wide.grant_id}"},
    ]


def test_grants_with_equal_valid_from_resolve_to_the_smallest_grant_id(projected: Store) -> None:
    """Of covering grants with the same valid_from, the basis is the smallest grant_id."""
    grants = [add_grant(projected, TENANT, "writer", "memory/planner", valid_from=ts(0))
              for _ in range(3)]
    record(projected, "t1", [(5, "CALLBACK_MEMORY_WRITE", write("a"), "writer",
                              "memory/planner")])
    smallest = min(g.grant_id for g in grants)
    assert rows(queries.audit_writes(projected, TENANT), "basis") == [
        {"basis": f"grant:{smallest}"}]


def test_grant_revoked_before_a_write_does_not_cover_it(projected: Store) -> None:
    """A revoked grant covers writes with ``ts <`` the revocation's ``at`` only."""
    grant = add_grant(projected, TENANT, "writer", "memory/planner", valid_from=ts(0))
    record(projected, "t1", [
        (5, "CALLBACK_MEMORY_WRITE", write("a"), "writer", "memory/planner"),
        (10, "CALLBACK_MEMORY_WRITE", write("b"), "writer", "memory/planner"),
        (15, "CALLBACK_MEMORY_WRITE", write("c"), "writer", "memory/planner"),
    ])
    revoke_grant(projected, TENANT, grant.grant_id, at=ts(10))
    assert rows(queries.audit_writes(projected, TENANT), "seq", "authorized", "basis") == [
        {"seq": 1, "authorized": True, "basis": f"grant:{grant.grant_id}"},
        {"seq": 2, "authorized": False, "basis": None},
        {"seq": 3, "authorized": False, "basis": None},
    ]
    assert rows(queries.audit_findings(projected, TENANT), "seq", "kind") == [
        {"seq": 2, "kind": "unauthorized_write"}, {"seq": 3, "kind": "unauthorized_write"}]


def test_grants_query_lists_grants_with_their_revocation(projected: Store) -> None:
    """``queries.grants`` lists the tenant's grants, each with its revocation."""
    grant = add_grant(projected, TENANT, "writer", "memory/planner", valid_from=ts(0))
    revoke_grant(projected, TENANT, grant.grant_id, at=ts(10))
    listed = rows(queries.grants(projected, TENANT), "grant_id", "agent", "scope",
                  "valid_from", "valid_until", "revoked_at")
    assert listed == [{"grant_id": grant.grant_id, "agent": "writer", "scope": "memory/planner",
                       "valid_from": ts(0), "valid_until": None, "revoked_at": ts(10)}]


# -- memory ------------------------------------------------------------------------------

def test_memory_delete_removes_the_key(projected: Store) -> None:
    """``op: "delete"`` removes a key (deleting a missing key changes nothing); history
    shows it with ``value`` null; diff reports it as removed."""
    record(projected, "t1", [
        (0, "CALLBACK_MEMORY_WRITE", write("a", {"x": [1, 2]}), "planner", "memory/planner"),
        (1, "CALLBACK_MEMORY_WRITE", write("b", 1.5), "planner", "memory/planner"),
        (2, "CALLBACK_MEMORY_WRITE", {"key": "a", "op": "delete"}, "planner", "memory/planner"),
        (3, "CALLBACK_MEMORY_WRITE", {"key": "zz", "op": "delete"}, "planner",
         "memory/planner"),
    ])
    after_b = queries.memory_state(projected, TENANT, "t1", at=2)
    final = queries.memory_state(projected, TENANT, "t1")
    assert (final.state, final.seq) == ({"b": 1.5}, 4)
    assert final.memory_hash == queries.memory_state(projected, TENANT, "t1", at=3).memory_hash
    assert after_b.state == {"a": {"x": [1, 2]}, "b": 1.5}
    history = rows(queries.memory_history(projected, TENANT, "t1"), "seq", "key", "op", "value")
    assert history == [
        {"seq": 1, "key": "a", "op": "set", "value": {"x": [1, 2]}},
        {"seq": 2, "key": "b", "op": "set", "value": 1.5},
        {"seq": 3, "key": "a", "op": "delete", "value": None},
        {"seq": 4, "key": "zz", "op": "delete", "value": None},
    ]
    assert [h.memory_hash for h in queries.memory_history(projected, TENANT, "t1")] == [
        queries.memory_state(projected, TENANT, "t1", at=n).memory_hash for n in (1, 2, 3, 4)]
    diff = queries.memory_diff(projected, TENANT, "t1", 2, 4).as_json()
    assert diff == {"tenant": TENANT, "trace_id": "t1", "scope": "memory/planner",
                    "from_seq": 2, "to_seq": 4, "added": {}, "removed": {"a": {"x": [1, 2]}},
                    "changed": {}}


def test_memory_show_before_any_write_is_empty(projected: Store) -> None:
    """At a seq before the scope's first write (and at 0) the state is ``{}`` with the
    spec's empty hash; a scope never written is empty at every seq."""
    record(projected, "t1", [
        (0, "EXEC_START", {}),
        (1, "REASONER_ACTION", action("search")),
        (2, "CALLBACK_MEMORY_WRITE", write("plan", ["a"]), "planner", "memory/planner"),
        (3, "CALLBACK_MEMORY_WRITE", write("note", "x"), "critic", "memory/critic"),
    ])
    for at in (0, 2):
        assert queries.memory_state(projected, TENANT, "t1", at=at).as_json() == {
            "tenant": TENANT, "trace_id": "t1", "scope": "memory/planner", "seq": at,
            "state": {}, "memory_hash": EMPTY_HASH}
    assert queries.memory_state(projected, TENANT, "t1", at=3).state == {"plan": ["a"]}
    assert queries.memory_state(projected, TENANT, "t1", scope="memory/critic", at=3).state == {}
    nobody = queries.memory_state(projected, TENANT, "t1", scope="memory/nobody")
    assert (nobody.state, nobody.memory_hash, nobody.seq) == ({}, EMPTY_HASH, 4)


def test_memory_history_without_scope_lists_every_scope(projected: Store) -> None:
    """``memory history`` without ``--scope`` gives every write of the trace (CLI.md)."""
    record(projected, "t1", [
        (0, "CALLBACK_MEMORY_WRITE", write("a"), "planner", "memory/planner"),
        (1, "CALLBACK_MEMORY_WRITE", write("b"), "critic", "memory/critic"),
    ])
    assert rows(queries.memory_history(projected, TENANT, "t1"), "seq", "scope") == [
        {"seq": 1, "scope": "memory/planner"}, {"seq": 2, "scope": "memory/critic"}]
    assert rows(queries.memory_history(projected, TENANT, "t1", scope="memory/critic"),
                "seq") == [{"seq": 2}]


# -- findings ------------------------------------------------------------------------------

def test_ledger_findings_are_listed_with_unauthorized_writes(projected: Store,
                                                             tmp_path: Path) -> None:
    """A wrong claimed memory hash and a conflicting re-send are findings of the ledger,
    listed with the unauthorized writes, by trace and seq."""
    base = {"tenant": TENANT, "trace_id": "t1", "agent_owner": "planner"}
    lines = [
        {**base, "seq": 1, "event": "CALLBACK_MEMORY_WRITE", "ts": ts(0), "executed_by": "writer",
         "write_scope": "memory/planner", "payload": write("a")},
        {**base, "seq": 2, "event": "EXEC_NEXT", "ts": ts(1), "executed_by": "planner",
         "memory_hash": EMPTY_HASH, "payload": {}},  # wrong: memory/planner holds {"a": 1}
    ]
    conflicting = {**lines[1], "payload": {"changed": True}}
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in [*lines, conflicting]))
    ingest(projected, [str(source)], reject_file=str(tmp_path / "rejected.jsonl"))
    assert rows(queries.audit_findings(projected, TENANT), "trace_id", "seq", "kind") == [
        {"trace_id": "t1", "seq": 1, "kind": "unauthorized_write"},
        {"trace_id": "t1", "seq": 2, "kind": "conflict"},
        {"trace_id": "t1", "seq": 2, "kind": "memory_hash_mismatch"},
    ]
    assert rows(queries.audit_findings(projected, TENANT, kind="conflict"), "seq") == [
        {"seq": 2}]


# -- projectors ----------------------------------------------------------------------------

def test_two_projectors_on_one_database_agree_with_one(store_url: str, store: Store) -> None:
    """An attached projector stays right when a follower on the same database applied
    entries another writer committed in between (no stale per-trace context)."""
    with Store.open(store_url) as attached, Store.open(store_url) as other:
        Projector(attached).attach()
        follower = Projector(other)
        record(attached, "t1", [(0, "REASONER_ACTION", action("search")),
                                (1, "CALLBACK_RETRY", {"tool": "search", "attempt": 2})])
        record(other, "t1", [(2, "REASONER_ACTION", action("calc")),
                             (3, "CALLBACK_PERMISSION",
                              permission("writer", "memory/planner", True))])
        follower.catch_up()
        record(attached, "t1", [
            (4, "EXEC_TERMINATED", {"reason": "budget"}),
            (5, "TOOL_EXEC", exec_("search", True)),
            (6, "CALLBACK_MEMORY_WRITE", write("a"), "writer", "memory/planner"),
        ])
        assert rows(queries.failures(attached, TENANT), "seq", "tool") == [
            {"seq": 5, "tool": "calc"}]
        assert rows(queries.retry_stats(attached, TENANT), "retries", "recovered") == [
            {"retries": 1, "recovered": 0}]
        assert rows(queries.audit_writes(attached, TENANT), "seq", "basis") == [
            {"seq": 7, "basis": "permission:4"}]
