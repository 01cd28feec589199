"""Conformance tests for ``TraceWriter``, the Python API a runtime records with.

Every test runs on SQLite and PostgreSQL (the ``store`` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
from freezegun import freeze_time

from ledger import chain
from ledger.errors import ConcurrencyError, ValidationError
from ledger.memory import EMPTY_MEMORY_HASH, memory_hash
from ledger.store import Store
from ledger.verify import verify
from ledger.writer import TraceWriter

AGENTS = {"agent_owner": "planner", "executed_by": "planner"}
TOOL_OK = {"tool": "search", "args": {"q": "x"}, "success": True}


def stored(store: Store, trace_id: str, tenant: str = "default") -> list[dict[str, Any]]:
    """The decoded records of one trace stream, in seq order."""
    sid = chain.trace_stream_id(tenant, trace_id)
    return [chain.decode(state) for _, state in store.backend.read_stream(sid)]


def test_record_assigns_seq_one_to_n(store: Store) -> None:
    """Successive records of a trace get seq 1, 2, ..., n, stored in that order."""
    writer = TraceWriter(store)
    seqs = [writer.record("t1", "EXEC_START", {}, **AGENTS).seq,
            writer.record("t1", "TOOL_EXEC", TOOL_OK, **AGENTS).seq,
            writer.record("t1", "CALLBACK_SUCCESS", {}, **AGENTS).seq]
    assert seqs == [1, 2, 3]
    assert [r["seq"] for r in stored(store, "t1")] == [1, 2, 3]


def test_seq_is_per_trace(store: Store) -> None:
    """Each trace has its own seq counter."""
    writer = TraceWriter(store)
    assert writer.record("a", "EXEC_START", {}, **AGENTS).seq == 1
    assert writer.record("b", "EXEC_START", {}, **AGENTS).seq == 1
    assert writer.record("a", "EXEC_NEXT", {}, **AGENTS).seq == 2


def test_new_writer_continues_after_stored_head(store: Store) -> None:
    """A writer opened on an existing trace continues at the stored length + 1."""
    TraceWriter(store).record("t1", "EXEC_START", {}, **AGENTS)
    assert TraceWriter(store).record("t1", "EXEC_NEXT", {}, **AGENTS).seq == 2


def test_record_fills_memory_hash_of_state(store: Store) -> None:
    """The writer stores memory_hash = memory_hash(state after the event) for each event."""
    writer = TraceWriter(store)
    start = writer.record("t1", "EXEC_START", {}, **AGENTS)
    write = writer.record("t1", "CALLBACK_MEMORY_WRITE", {"key": "plan", "value": ["a", "b"]},
                          write_scope="memory/planner", **AGENTS)
    after = writer.record("t1", "CALLBACK_SUCCESS", {}, **AGENTS)
    expected = memory_hash({"plan": ["a", "b"]})
    assert (start.memory_hash, write.memory_hash, after.memory_hash) == (
        EMPTY_MEMORY_HASH, expected, expected)
    assert [r["memory_hash"] for r in stored(store, "t1")] == [
        EMPTY_MEMORY_HASH, expected, expected]


def test_memory_delete_changes_hash_back(store: Store) -> None:
    """Deleting the only key returns the memory hash to that of the empty state."""
    writer = TraceWriter(store)
    scope = {"write_scope": "memory/planner", **AGENTS}
    writer.record("t1", "CALLBACK_MEMORY_WRITE", {"key": "k", "value": 1}, **scope)
    gone = writer.record("t1", "CALLBACK_MEMORY_WRITE", {"key": "k", "op": "delete"}, **scope)
    assert gone.memory_hash == EMPTY_MEMORY_HASH


def test_record_hash_is_hash_of_stored_bytes(store: Store) -> None:
    """Recorded.record_hash is the chain hash of the bytes actually stored."""
    recorded = TraceWriter(store).record("t1", "EXEC_START", {}, **AGENTS)
    [(_, state)] = store.backend.read_stream(chain.trace_stream_id("default", "t1"))
    assert recorded.record_hash == chain.record_hash(state)


def test_batched_events_are_not_visible_before_flush(store: Store) -> None:
    """With batch_size > 1, staged events are not stored until flush."""
    writer = TraceWriter(store, batch_size=10)
    writer.record("t1", "EXEC_START", {}, **AGENTS)
    writer.record("t1", "EXEC_NEXT", {}, **AGENTS)
    assert stored(store, "t1") == []
    assert writer.flush() == 2
    assert [r["seq"] for r in stored(store, "t1")] == [1, 2]


def test_batch_is_written_when_full(store: Store) -> None:
    """The batch_size-th staged event writes the whole batch."""
    writer = TraceWriter(store, batch_size=3)
    writer.record("t1", "EXEC_START", {}, **AGENTS)
    writer.record("t1", "EXEC_NEXT", {}, **AGENTS)
    assert stored(store, "t1") == []
    writer.record("t1", "EXEC_NEXT", {}, **AGENTS)
    assert [r["seq"] for r in stored(store, "t1")] == [1, 2, 3]


def test_leaving_with_block_flushes(store: Store) -> None:
    """Leaving the ``with`` block writes what is staged."""
    with TraceWriter(store, batch_size=100) as writer:
        writer.record("t1", "EXEC_START", {}, **AGENTS)
    assert [r["seq"] for r in stored(store, "t1")] == [1]


def test_default_batch_size_is_durable_per_record(store: Store) -> None:
    """With the default batch_size, each record is stored when it returns."""
    writer = TraceWriter(store)
    writer.record("t1", "EXEC_START", {}, **AGENTS)
    assert [r["seq"] for r in stored(store, "t1")] == [1]


def test_invalid_payload_raises_validation_error_naming_field(store: Store) -> None:
    """A payload missing a required field raises ValidationError naming it; nothing is stored."""
    writer = TraceWriter(store)
    with pytest.raises(ValidationError) as info:
        writer.record("t1", "TOOL_EXEC", {"tool": "search", "args": {}}, **AGENTS)
    assert info.value.field == "payload.success"
    assert stored(store, "t1") == []


def test_invalid_trace_id_raises_validation_error_naming_field(store: Store) -> None:
    """A trace id with whitespace raises ValidationError on field trace_id."""
    with pytest.raises(ValidationError) as info:
        TraceWriter(store).record("bad id", "EXEC_START", {}, **AGENTS)
    assert info.value.field == "trace_id"


def test_unknown_event_type_raises_validation_error(store: Store) -> None:
    """An event type outside the contract raises ValidationError on field event."""
    with pytest.raises(ValidationError) as info:
        TraceWriter(store).record("t1", "NOT_AN_EVENT", {}, **AGENTS)
    assert info.value.field == "event"


def test_rejected_record_does_not_consume_a_seq(store: Store) -> None:
    """After an invalid record, the next valid record still gets the next free seq."""
    writer = TraceWriter(store)
    writer.record("t1", "EXEC_START", {}, **AGENTS)
    with pytest.raises(ValidationError):
        writer.record("t1", "TOOL_EXEC", {}, **AGENTS)
    assert writer.record("t1", "EXEC_NEXT", {}, **AGENTS).seq == 2


def test_second_writer_on_same_trace_gets_error_not_fork(store: Store) -> None:
    """Two writers staging the same seq: the second to flush raises; the trace does not fork."""
    first, second = TraceWriter(store, batch_size=10), TraceWriter(store, batch_size=10)
    first.record("t1", "EXEC_START", {"context_id": "first"}, **AGENTS)
    second.record("t1", "EXEC_START", {"context_id": "second"}, **AGENTS)
    first.flush()
    with pytest.raises(ConcurrencyError):
        second.flush()
    assert [(r["seq"], r["payload"]) for r in stored(store, "t1")] == [(1, {"context_id": "first"})]
    assert verify(store).ok


def test_stale_writer_gets_error_not_fork(store: Store) -> None:
    """A writer whose view of the trace is stale raises instead of overwriting or forking."""
    stale, other = TraceWriter(store), TraceWriter(store)
    stale.record("t1", "EXEC_START", {}, **AGENTS)
    other.record("t1", "EXEC_NEXT", {"by": "other"}, **AGENTS)
    with pytest.raises(ConcurrencyError):
        stale.record("t1", "EXEC_NEXT", {"by": "stale"}, **AGENTS)
    assert [(r["seq"], r["payload"]) for r in stored(store, "t1")] == [
        (1, {}), (2, {"by": "other"})]
    assert verify(store).ok


def test_writer_recovers_after_concurrency_error(store: Store) -> None:
    """After a concurrency error the writer reloads the head and continues at the next seq."""
    stale, other = TraceWriter(store), TraceWriter(store)
    stale.record("t1", "EXEC_START", {}, **AGENTS)
    other.record("t1", "EXEC_NEXT", {}, **AGENTS)
    with pytest.raises(ConcurrencyError):
        stale.record("t1", "EXEC_NEXT", {}, **AGENTS)
    assert stale.record("t1", "EXEC_NEXT", {}, **AGENTS).seq == 3
    assert verify(store).ok


def test_default_ts_is_the_current_utc_time(store: Store) -> None:
    """Without ts, the event is stamped with the current UTC time in RFC 3339 with ms and Z."""
    with freeze_time("2026-11-20 10:00:00.123456"):
        TraceWriter(store).record("t1", "EXEC_START", {}, **AGENTS)
    [record] = stored(store, "t1")
    assert record["ts"] == "2026-11-20T10:00:00.123Z"


def test_explicit_ts_is_kept(store: Store) -> None:
    """A ts passed as a string is stored exactly as given."""
    TraceWriter(store).record("t1", "EXEC_START", {}, ts="2026-11-20T11:00:00+01:00", **AGENTS)
    [record] = stored(store, "t1")
    assert record["ts"] == "2026-11-20T11:00:00+01:00"


def test_writer_uses_its_tenant(store: Store) -> None:
    """Events recorded by a tenant's writer land in that tenant's stream."""
    TraceWriter(store, tenant="acme").record("t1", "EXEC_START", {}, **AGENTS)
    assert [r["tenant"] for r in stored(store, "t1", tenant="acme")] == ["acme"]
    assert stored(store, "t1") == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes", "a\ud800",
                                   {"k\udcff": 1}],
                         ids=["nan", "infinity", "set", "bytes", "surrogate", "surrogate-key"])
def test_non_json_payload_value_raises_validation_error(store: Store, value: object) -> None:
    """A payload value JSON cannot represent raises ValidationError naming it; nothing is
    stored. A lone surrogate (not Unicode text, and no UTF-8 holds it) was a
    UnicodeEncodeError from the encoder."""
    with pytest.raises(ValidationError) as info:
        TraceWriter(store).record("t1", "EXEC_NEXT", {"x": value}, **AGENTS)
    assert info.value.field is not None and info.value.field.startswith("payload")
    assert stored(store, "t1") == []


def test_payload_integer_beyond_64_bits_reads_back_exactly(store: Store) -> None:
    """A payload integer too large for 64 bits is stored and read back as the same integer."""
    TraceWriter(store).record("t1", "EXEC_NEXT", {"n": 2**70}, **AGENTS)
    [record] = stored(store, "t1")
    assert type(record["payload"]["n"]) is int and record["payload"]["n"] == 2**70
