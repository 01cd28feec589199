"""``chain.event_state`` builds a stored record from the encoded wire event, byte for byte
what encoding the whole record gives (the chain hashes those bytes)."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import chain
from ledger.events import parse_event
from ledger.memory import MemoryState

HASH = "sha256:" + "ab" * 32

TEXT = st.characters(codec="utf-8", exclude_characters="\x00")  # events hold no NUL
json_scalars = st.one_of(
    st.none(), st.booleans(), st.text(TEXT, max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits: the stdlib encoder
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


def _wire(payload: dict[str, Any], trace_id: str, memory_hash: str | None) -> dict[str, Any]:
    return {"tenant": "ténant", "trace_id": trace_id, "seq": 3, "event": "EXEC_NEXT",
            "ts": "2026-11-20T10:00:00Z", "agent_owner": "a", "executed_by": "b",
            "write_scope": "memory/a", "memory_hash": memory_hash, "payload": payload}


@settings(max_examples=300)
@given(payload=st.dictionaries(st.text(TEXT, max_size=6), json_values, max_size=4),
       trace_id=st.text(TEXT, min_size=1, max_size=10), claim=st.sampled_from([None, HASH]))
def test_event_state_is_the_encoded_record(payload: dict[str, Any], trace_id: str,
                                           claim: str | None) -> None:
    wire = _wire(payload, trace_id, claim)
    expected = chain.encode(chain.event_record(wire, ledger_memory_hash=HASH,
                                               prev_hash=chain.GENESIS_HASH))
    built = chain.event_state(chain.encode(wire), ledger_memory_hash=HASH,
                              prev_hash=chain.GENESIS_HASH)
    assert built == expected


def test_validated_event_carries_its_encoded_wire_form() -> None:
    event = parse_event({"trace_id": "t", "seq": 1, "event": "EXEC_NEXT", "ts":
                         "2026-11-20T10:00:00+01:00", "agent_owner": "a", "executed_by": "a",
                         "payload": {"n": 2**65, "s": "ü"}})
    assert event.wire_json == chain.encode(event.record())
    assert chain.decode(event.wire_json)["payload"]["n"] == 2**65


@settings(max_examples=500)
@given(st.text(), st.text(), st.text())
def test_stream_id_is_uuid5_of_the_json_array_as_documented(kind: str, tenant: str,
                                                            name: str) -> None:
    """The id is ``uuid5(ns, json.dumps([kind, tenant, name], ensure_ascii=False))``, the
    formula of docs/VERIFY.md, for any text (a lone surrogate fails the same way)."""
    text = json.dumps([kind, tenant, name], ensure_ascii=False)
    try:
        documented = uuid.uuid5(chain.STREAM_NAMESPACE, text)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            chain.stream_id(kind, tenant, name)
        return
    assert chain.stream_id(kind, tenant, name) == documented


def test_stream_id_of_a_known_trace() -> None:
    """A fixed id, so the formula cannot drift together with its test."""
    known = uuid.UUID("898ac15c-e182-5e4f-8893-c3df74895011")  # computed before the rewrite
    assert chain.stream_id("trace", "acme", "q4-market-report") == known


def _kept_bytes_each(make: Any, count: int = 200) -> float:
    """The memory ``count`` kept results of ``make()`` hold, per result, as traced."""
    tracemalloc.start()
    try:
        kept = [make() for _ in range(count)]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return held / count


def test_what_ingest_keeps_per_event_holds_no_more_than_its_bytes() -> None:
    """An ingest batch keeps each event's encoded wire form, and the appender's cache each
    memory value encoded: orjson's own output would hold a 4 KiB buffer for each (from
    3.12 on), ~19.5 MB of a 5,000-event batch's ~30 MB."""
    line = {"trace_id": "t", "seq": 1, "event": "CALLBACK_MEMORY_WRITE",
            "ts": "2026-11-20T10:00:00Z", "agent_owner": "a", "executed_by": "a",
            "write_scope": "memory/a", "payload": {"key": "k", "value": {"n": 1}}}
    event = parse_event(line)
    assert _kept_bytes_each(lambda: parse_event(line).wire_json) < 3 * len(event.wire_json)
    assert _kept_bytes_each(lambda: chain.encode(line)) < 3 * len(event.wire_json)

    def state() -> MemoryState:
        memory = MemoryState()
        memory.set("k", {"n": 1})
        return memory
    assert _kept_bytes_each(state) < 1024
