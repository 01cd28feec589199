"""A stored record altered into JSON of another shape gives the same views on SQLite and
PostgreSQL: each either folds it as it reads, or sets it aside, but both alike.

The demo's traces are stored in both backends; hypothesis then alters one stored
trace event at a time (a field set to another JSON value, deleted, or added, at the
top level or in the payload), the same bytes in both, rebuilds both and compares every
view table. Before ``projections/row_types.py``, 9 alterations in 400 gave different
views (a NUL kept in a name on SQLite, ``True`` stored as ``1`` there and as ``t`` on
PostgreSQL, a list taken as an array's text).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import rawdb
from hypothesis import example, given, settings
from hypothesis import strategies as st
from viewdump import dump

from ledger import chain
from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import demo_events
from projections.runner import Projector

EVENTS = demo_events()
RECORD_FIELDS = ["v", "tenant", "trace_id", "seq", "event", "ts", "agent_owner", "executed_by",
                 "write_scope", "memory_hash", "payload", "ledger_memory_hash", "prev_hash"]
PAYLOAD_FIELDS = ["tool", "attempt", "success", "key", "op", "value", "original_tool",
                  "fallback_tool", "error_class", "error_code", "reason", "extra"]
VALUES = st.sampled_from([
    None, 0, -1, 7, 2**31, 2**63, 2**70, 1.5, True, False, "", "x", "a\u0000b", "\u0000",
    "memory/x", "2026-11-17T10:30:00Z", "TOOL_EXEC", "CALLBACK_MEMORY_WRITE", "delete",
    [], [1, "a"], {}, {"a": 1},
])
DELETE = object()
ALTERATIONS = st.tuples(
    st.sampled_from(range(len(EVENTS))),
    st.one_of(st.tuples(st.just(""), st.sampled_from(RECORD_FIELDS)),
              st.tuples(st.just("payload"), st.sampled_from(PAYLOAD_FIELDS))),
    st.one_of(VALUES, st.just(DELETE)))


def _first(event: str) -> int:
    return next(i for i, e in enumerate(EVENTS) if e["event"] == event)


TOOL_EXEC, MEMORY_WRITE, FALLBACK = (
    _first("TOOL_EXEC"), _first("CALLBACK_MEMORY_WRITE"), _first("CALLBACK_FALLBACK"))


@pytest.fixture(scope="module")
def both(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A SQLite and a PostgreSQL store holding the demo's traces."""
    folder = tmp_path_factory.mktemp("alike")
    source = folder / "demo.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS))
    urls = [f"sqlite:///{folder / 'ledger.db'}",
            pg_cluster.url_for("agentledger_test") + "?schema=alike"]
    for url in urls:
        with Store.open(url) as store:
            ingest(store, [str(source)], reject_file=str(folder / "rejected.jsonl"))
    yield urls


def _views(url: str) -> dict[str, list[tuple[str, ...]]]:
    with Store.open(url) as store:
        Projector(store).rebuild()
        views = dump(store)
    views.pop("projection_context")  # the same folds' working state, not what is read
    views["findings"] = [row[:-1] for row in views["findings"]]  # recorded_at: when ingested
    return {table: [tuple(str(v) for v in row) for row in rows] for table, rows in views.items()}


@settings(max_examples=40, deadline=None)
@given(ALTERATIONS)
@example((TOOL_EXEC, ("payload", "tool"), 7))  # the ones that differed before row_types.py
@example((TOOL_EXEC, ("", "executed_by"), "a\u0000b"))
@example((TOOL_EXEC, ("", "event"), True))
@example((TOOL_EXEC, ("payload", "attempt"), "a\u0000b"))
@example((MEMORY_WRITE, ("", "ledger_memory_hash"), []))
@example((MEMORY_WRITE, ("payload", "key"), ["k"]))
@example((FALLBACK, ("", "event"), 2**70))
def test_an_altered_record_gives_the_same_views_on_both_backends(
        both: list[str], alteration: tuple[int, tuple[str, str], Any]) -> None:
    index, (where, field), value = alteration
    event = EVENTS[index]
    sid = chain.trace_stream_id(event["tenant"], event["trace_id"])
    original = rawdb.get_state(both[0], sid, event["seq"])
    record = orjson.loads(original)
    target = record[where] if where else record
    if value is DELETE:
        target.pop(field, None)
    else:
        target[field] = value
    state = chain.encode(record)  # 2^70 too
    try:
        for url in both:
            rawdb.set_state(url, sid, event["seq"], state)
        sqlite_views, postgres_views = (_views(url) for url in both)
    finally:
        for url in both:
            rawdb.set_state(url, sid, event["seq"], original)
    for table in sqlite_views:
        assert sqlite_views[table] == postgres_views[table], (table, event["event"], field, value)


def test_the_two_stores_give_the_same_views_unaltered(both: list[str]) -> None:
    assert _views(both[0]) == _views(both[1])
