"""The quick checks compiled from the models accept only what the models accept.

Ingest skips pydantic for an event whose envelope and payload pass their quick
checks (``ledger.quick_check``), so a quick check that passed a value its model
refuses would store an event the contract refuses. Hypothesis alters valid events
field by field with arbitrary JSON and edge strings; wherever a quick check passes,
the model must too.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import events
from ledger.events import EventEnvelope, parse_line
from ledger.payloads import MODEL_RULES, PAYLOAD_MODELS
from ledger.quick_check import quick_check
from ledger.records import StoredEvent
from ledger.workload import demo_events, synthetic_lines

EDGE_TEXT = ["", " ", "a b", "a\n", "\n", "memory/", "memory/a\n", "memory/a\r", "memory/é",
             "sha256:" + "0" * 64, "sha256:" + "0" * 64 + "\n", "sha256:" + "A" * 64,
             "2026-11-20T10:00:00Z", "2026-11-20T10:00:00Z\n", "2026-02-30T10:00:00Z",
             "x\x1c", "x\x85", "x\u2028", "\u00a0", "é", "success", "failed", "delete",
             "serial", "terminal", "x" * 200, "x" * 201, "t" * 100, "t" * 101]
NUMBERS = [0, 1, -1, 2, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**70, 0.0, -0.0, 0.5,
           1.0, 1.5, -0.5, 1e308, True, False]
json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from(NUMBERS) | st.integers() | st.floats(
        allow_nan=False, allow_infinity=False) | st.sampled_from(EDGE_TEXT) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["tool", "args", "action", "key", "value", "op", "x"]), inner, max_size=3),
    max_leaves=6)
SAMPLES = [orjson.loads(line) for line in synthetic_lines(60, events_per_trace=20, tenants=2)]
SAMPLES += demo_events()[:300]


def _accepts(model: type[pydantic.BaseModel], value: Any) -> bool:
    try:
        model.__pydantic_validator__.validate_python(value)
    except pydantic.ValidationError:
        return False
    return True


def test_every_model_the_ledger_checks_compiles_to_a_quick_check() -> None:
    for model in [EventEnvelope, StoredEvent, *PAYLOAD_MODELS.values()]:
        assert quick_check(model, MODEL_RULES) is not None, model.__name__


def test_the_events_of_the_workloads_take_the_quick_path() -> None:
    """Else the quick checks would cost time and save none."""
    for obj in SAMPLES:
        payload_ok = events.payload_check(obj["event"])
        assert payload_ok is not None and payload_ok(obj["payload"]), obj
        assert events._quick_envelope(obj), obj


@settings(max_examples=400, deadline=None)
@given(sample=st.sampled_from(SAMPLES), path=st.lists(st.integers(0, 99), min_size=1,
                                                      max_size=3),
       value=json_values, drop=st.booleans())
def test_what_the_quick_checks_pass_the_models_accept(sample: dict[str, Any], path: list[int],
                                                      value: Any, drop: bool) -> None:
    obj = copy.deepcopy(sample)
    keys = [*obj, "tenant", "write_scope", "memory_hash"]
    target, name = obj, keys[path[0] % len(keys)]
    for step in path[1:]:  # walk into the payload, where there is one
        inner = target.get(name)
        if not isinstance(inner, dict) or not inner:
            break
        target, name = inner, list(inner)[step % len(inner)]
    if drop:
        target.pop(name, None)
    else:
        target[name] = value
    payload_ok = events.payload_check(obj.get("event"))
    if payload_ok is not None and isinstance(obj.get("payload"), dict | list) and payload_ok(
            obj["payload"]):
        assert _accepts(PAYLOAD_MODELS[obj["event"]], obj["payload"]), obj["payload"]
    if events._quick_envelope(obj):
        assert _accepts(EventEnvelope, obj), obj


@pytest.mark.parametrize("field", ["trace_id", "tenant", "write_scope", "memory_hash", "ts",
                                   "agent_owner", "executed_by", "event"])
@pytest.mark.parametrize("text", EDGE_TEXT)
def test_edge_strings_in_the_envelope(field: str, text: str) -> None:
    obj = {**SAMPLES[0], field: text}
    if events._quick_envelope(obj):
        assert _accepts(EventEnvelope, obj), (field, text)


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize(("event", "field"), [
    ("TOOL_EXEC", "attempt"), ("TOOL_EXEC", "latency_ms"), ("CALLBACK_RETRY", "attempt"),
    ("REASONER_ACTION", "confidence"), ("EXEC_FAIL", "error_code"), ("TOOL_EXEC", "success"),
])
def test_edge_numbers_in_payloads(event: str, field: str, number: Any) -> None:
    sample = next(s for s in SAMPLES if s["event"] == event) if event != "EXEC_FAIL" else {
        "payload": {"error_code": 1, "reason": "x"}}
    payload = {**sample["payload"], field: number}
    quick = events.payload_check(event)
    assert quick is not None
    if quick(payload):
        assert _accepts(PAYLOAD_MODELS[event], payload), (event, field, number)


def test_ingest_gives_the_same_answers_with_and_without_the_quick_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [orjson.dumps(s) for s in SAMPLES[:200]]
    lines += [orjson.dumps({**s, "seq": "1"}) for s in SAMPLES[:20]]
    lines += [orjson.dumps({**s, "payload": {**s["payload"], "tool": 5}}) for s in SAMPLES[:20]]

    def outcome(raw: bytes) -> Any:
        try:
            return parse_line(raw)
        except Exception as exc:  # compared below
            return repr(exc)

    quick = [outcome(raw) for raw in lines]
    monkeypatch.setattr(events, "_quick_envelope", lambda obj: False)
    assert [outcome(raw) for raw in lines] == quick
