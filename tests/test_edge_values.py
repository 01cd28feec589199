"""Values at the edges of what the contract takes (names of any length, astral and
empty text, the largest integers) are stored, projected and queried alike on both
backends.

The contract bounds only tenants and trace ids among names.

PostgreSQL refuses an index entry over 2,704 bytes, so the views index a prefix of
each name (``projections.base.indexed``) and key their hourly roll-ups by a digest
(``group_key``). Before that, one event with a 9,000-byte memory key stopped every
projection of a PostgreSQL store at it, for good.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_contract import MINIMAL_PAYLOADS
from viewdump import dump

from ledger.grants import add_grant
from ledger.ingest import ingest
from ledger.store import Store
from projections import Projector, queries
from projections.check import check_views

# incompressible (PostgreSQL compresses a long index entry before it refuses it), and
# two that share their first 4,500 characters, beyond any indexed prefix
LONG = secrets.token_hex(4500)
TWIN_A, TWIN_B = LONG[:4500] + "-a", LONG[:4500] + "-b"
TS = "2026-11-20T10:00:{:02d}Z"


def _event(trace_id: str, seq: int, event: str, payload: dict[str, Any],
           **fields: Any) -> dict[str, Any]:
    return {"trace_id": trace_id, "seq": seq, "event": event, "ts": TS.format(seq),
            "agent_owner": "planner", "executed_by": "planner", "payload": payload, **fields}


def _trace(tool: str, agent: str, scope: str, key: str, reason: str) -> list[dict[str, Any]]:
    trace = f"t-{tool[-2:]}"
    return [
        _event(trace, 1, "TOOL_EXEC", {"tool": tool, "args": {}, "success": False,
                                       "error_reason": reason}, executed_by=agent),
        _event(trace, 2, "CALLBACK_FALLBACK", {"original_tool": tool, "fallback_tool": tool},
               executed_by=agent),
        _event(trace, 3, "CALLBACK_MEMORY_WRITE", {"key": key, "value": 1},
               write_scope=scope, executed_by=agent),
        _event(trace, 4, "CALLBACK_" + "X" * 3000, {}, executed_by=agent),
    ]


@pytest.fixture
def long_store(store: Store, tmp_path: Path) -> Store:
    """Two traces whose names differ only after their first 4,500 characters; each
    agent writes the other's memory."""
    events = [*_trace(TWIN_A, TWIN_A, "memory/" + TWIN_B, TWIN_A, TWIN_A),
              *_trace(TWIN_B, TWIN_B, "memory/" + TWIN_A, TWIN_B, TWIN_B)]
    src = tmp_path / "long.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    Projector(store).attach()
    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
    assert (summary.accepted, summary.rejected) == (8, 0)
    return store


def test_views_take_names_of_any_length(long_store: Store) -> None:
    """Every projection keeps up with events whose names run to thousands of bytes."""
    assert all(s.lag == 0 for s in Projector(long_store).status())
    assert check_views(long_store).ok


@pytest.mark.parametrize("twin", [TWIN_A, TWIN_B], ids=["a", "b"])
def test_queries_by_a_long_name_find_its_rows_and_no_others(long_store: Store,
                                                            twin: str) -> None:
    """A filter matches the whole name, not the prefix the index holds."""
    trace, scope = f"t-{twin[-2:]}", "memory/" + (TWIN_B if twin == TWIN_A else TWIN_A)
    for rows in (queries.failures(long_store, "default", tool=twin),
                 queries.failures(long_store, "default", agent=twin),
                 queries.audit_writes(long_store, "default", key=twin),
                 queries.audit_writes(long_store, "default", by=twin),
                 queries.audit_writes(long_store, "default", scope=scope)):
        assert [(r.trace_id, r.seq) for r in rows] in ([(trace, 1)], [(trace, 3)])
    state = queries.memory_state(long_store, "default", trace, scope=scope)
    assert state.state == {twin: 1}
    [version] = queries.memory_history(long_store, "default", trace, scope=scope)
    assert version.key == twin


def test_hourly_counts_keep_long_names_apart(long_store: Store) -> None:
    """Roll-ups keyed by a digest count each name on its own."""
    for by in ("tool", "reason", "agent"):
        rows = queries.failure_stats(long_store, "default", by=by)
        assert sorted((*r.key.values(), r.values["failures"]) for r in rows) == [
            (TWIN_A, 1), (TWIN_B, 1)], by
    rows = queries.fallback_stats(long_store, "default")
    assert sorted((r.key["tool"], r.values["fallbacks"], r.values["tool_execs"])
                  for r in rows) == [(TWIN_A, 1, 1), (TWIN_B, 1, 1)]


def test_a_grant_of_a_long_scope_covers_its_write_only(long_store: Store) -> None:
    """Re-evaluating writes against a grant finds them by the whole agent and scope."""
    assert not any(r.authorized for r in queries.audit_writes(long_store, "default"))
    add_grant(long_store, "default", TWIN_A, "memory/" + TWIN_B,
              valid_from="2026-01-01T00:00:00Z")
    rows = queries.audit_writes(long_store, "default")
    assert sorted((r.executed_by == TWIN_A, r.cross_agent, r.authorized) for r in rows) == [
        (False, True, False), (True, True, True)]


def test_names_either_side_of_the_indexed_prefix_stay_apart(store: Store, tmp_path: Path) -> None:
    """Names of 199, 200 and 201 characters, each the start of the next: a filter by
    each finds its own rows only (below 200 the prefix decides, from 200 the name)."""
    names = {n: "x" * n for n in (199, 200, 201)}
    events = [_event(f"t{n}", 1, "TOOL_EXEC", {"tool": name, "args": {}, "success": False},
                     executed_by=name) for n, name in names.items()]
    src = tmp_path / "edge.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    Projector(store).attach()
    ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
    for n, name in names.items():
        assert [r.trace_id for r in queries.failures(store, "default", tool=name)] == [f"t{n}"]
        assert [r.trace_id for r in queries.failures(store, "default", agent=name)] == [f"t{n}"]


EDGE_TEXTS = {"long": LONG, "astral": "😀\U0001d518\u0301\u200b\U0010fffd" * 800, "empty": "",
              "blank": " \t ", "sql": "'\";--%_\\", "short": "x"}
EDGE_VALUES = [2**63 - 1, -(2**63), 2**80, 1.7976931348623157e308, -0.0, None, True, [LONG],
               {LONG[:300]: LONG}]


def _edge_events() -> list[dict[str, Any]]:
    """Every event type, its names and reasons each of ``EDGE_TEXTS`` in turn (one
    tenant each), with an extra payload field of each of ``EDGE_VALUES``."""
    events = []
    for n, (kind, text) in enumerate(EDGE_TEXTS.items()):
        agent = text or "a"  # an agent name may be empty only if the contract said so
        for i, (event, minimal) in enumerate([*MINIMAL_PAYLOADS.items(),
                                              ("CALLBACK_" + "Z" * 3000, {})]):
            payload: dict[str, Any] = {
                k: text if isinstance(v, str) else v for k, v in minimal.items()}
            payload["x_edge"] = EDGE_VALUES[(n + i) % len(EDGE_VALUES)]
            if event == "TOOL_EXEC":
                payload.update(success=False, error_reason=text, attempt=2**63 - 1)
            elif event == "CALLBACK_RESULT":
                payload.update(status="failed", reason=text)
            elif event == "CALLBACK_PERMISSION":
                payload["scope"] = "memory/" + agent
            events.append({"trace_id": f"{kind}-{i}", "seq": 1, "event": event,
                           "ts": TS.format(i), "tenant": kind, "agent_owner": agent,
                           "executed_by": agent, "payload": payload,
                           **({"write_scope": "memory/" + agent}
                              if event == "CALLBACK_MEMORY_WRITE" else {})})
    return events


def test_every_event_type_with_edge_values_is_projected(store: Store, tmp_path: Path) -> None:
    """All are stored; every projection keeps up and equals a fresh fold; each tenant's
    failures are found by agent, whatever its name."""
    events = _edge_events()
    src = tmp_path / "edge.jsonl"  # json: orjson refuses integers beyond 64 bits
    src.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    Projector(store).attach()
    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
    assert (summary.accepted, summary.rejected) == (len(events), 0)
    assert all(s.lag == 0 for s in Projector(store).status())
    assert check_views(store).ok
    incremental = dump(store)
    Projector(store).rebuild()
    assert dump(store) == incremental
    for kind, text in EDGE_TEXTS.items():
        found = queries.failures(store, kind, agent=text or "a")
        assert len(found) == sum(e["tenant"] == kind for e in events if e["event"] in (
            "TOOL_EXEC", "TOOL_FAIL", "CALLBACK_RESULT", "CALLBACK_FAIL", "EXEC_FAIL",
            "EXEC_TERMINATED")), kind
