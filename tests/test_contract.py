"""The trace-event contract (``spec/trace-events.md``, v1), row by row.

Every envelope field and every payload row of the spec's tables, in valid and
invalid forms, through :func:`ledger.events.parse_event` (the Python API) and
:func:`ledger.events.parse_line` (the wire). Tests are written to the spec, not to
the implementation: a failing test here is a deviation from the contract.
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import ValidationError
from ledger.events import TraceEvent, parse_event, parse_line
from ledger.payloads import is_failure_point, is_unknown_callback
from ledger.strict_json import _surely_unique_keys
from ledger.timestamps import stored_ts_utc

MISSING: Any = object()
"""Marks a field to delete (instead of set) in :func:`_envelope` and :func:`_at`."""

HASH = "sha256:" + "0123456789abcdef" * 4
EMPTY_STATE_HASH = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
SQL_ID = "x';DROP/**/TABLE/**/agentledger_events;--"
"""SQL-looking, but within the trace_id rules (no whitespace)."""
SQL_ID_WITH_SPACES = "x'; DROP TABLE agentledger_events;--"
"""The same with spaces: the spec's no-whitespace rule rejects it as a trace_id."""

MINIMAL_PAYLOADS: dict[str, dict[str, Any]] = {
    "EXEC_START": {},
    "REASONER_ACTION": {"action": {"tool": "search", "args": {}}},
    "TOOL_EXEC": {"tool": "search", "args": {"q": "x"}, "success": True},
    "TOOL_FAIL": {"tool": "search", "reason": "429 rate limited"},
    "CALLBACK_RESULT": {"tool": "search", "status": "success"},
    "CALLBACK_POLICY_RESOLVED": {
        "policy": {
            "write_memory": True,
            "record_trace": True,
            "fallback_required": False,
            "trigger_next": False,
        }
    },
    "CALLBACK_MEMORY_WRITE": {"key": "k", "value": 1},
    "CALLBACK_FALLBACK": {"original_tool": "search", "fallback_tool": "search_cache"},
    "CALLBACK_RETRY": {"tool": "search", "attempt": 2},
    "CALLBACK_NEXT_ACTION": {"next_action": {}},
    "CALLBACK_PERMISSION": {
        "source_agent": "a",
        "executing_agent": "b",
        "scope": "memory/a",
        "granted": True,
    },
    "CALLBACK_SUCCESS": {},
    "CALLBACK_FAIL": {"reason": "boom"},
    "EXEC_NEXT": {},
    "EXEC_LOOP": {},
    "EXEC_FAIL": {"error_code": "E42", "reason": "boom"},
    "EXEC_TERMINATED": {"reason": "fallback failed"},
}
NAMED_EVENTS = tuple(MINIMAL_PAYLOADS)


def _envelope(event: str = "EXEC_START", **fields: Any) -> dict[str, Any]:
    """A valid wire object for ``event``; ``fields`` override (``MISSING`` deletes)."""
    obj: dict[str, Any] = {
        "trace_id": "trace-1",
        "seq": 1,
        "event": event,
        "ts": "2026-11-20T10:00:00.123Z",
        "agent_owner": "planner",
        "executed_by": "planner",
        "payload": copy.deepcopy(MINIMAL_PAYLOADS.get(event, {}) if isinstance(event, str) else {}),
    }
    if event == "CALLBACK_MEMORY_WRITE":
        obj["write_scope"] = "memory/planner"
    for name, value in fields.items():
        if value is MISSING:
            obj.pop(name, None)
        else:
            obj[name] = value
    return obj


def _at(payload: dict[str, Any], path: str, value: Any = MISSING) -> dict[str, Any]:
    """A deep copy of ``payload`` with the dotted ``path`` set to ``value`` (or deleted)."""
    result = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = result
    for part in parents:
        node = node[part]
    if value is MISSING:
        del node[last]
    else:
        node[last] = value
    return result


def _rejected(obj: Any) -> ValidationError:
    """The ValidationError ``parse_event`` raises for ``obj`` (fails if it accepts it)."""
    with pytest.raises(ValidationError) as info:
        parse_event(obj)
    assert info.value.reason
    return info.value


def _rejected_line(line: bytes) -> ValidationError:
    """The ValidationError ``parse_line`` raises for ``line``."""
    with pytest.raises(ValidationError) as info:
        parse_line(line)
    return info.value


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


# --- Nesting -----------------------------------------------------------------


def _nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("leaf", [1, 2**70], ids=["int", "int-beyond-64-bits"])
def test_an_event_nests_up_to_254_levels_and_no_deeper(leaf: Any) -> None:
    """Objects and arrays may nest 254 deep, the envelope and payload included (as deep
    as the fast encoder writes); one level more is rejected, as a line or through the
    API, whichever decoder reads it."""
    deepest = _envelope("EXEC_NEXT", payload={"x": _nested(252, leaf)})
    event = parse_line(json.dumps(deepest).encode())
    assert json.loads(event.wire_json)["payload"] == deepest["payload"]
    too_deep = _envelope("EXEC_NEXT", payload={"x": _nested(253, leaf)})
    for error in (_rejected(too_deep), _rejected_line(json.dumps(too_deep).encode())):
        assert error.reason == "nested too deeply: more than 254 levels of objects and arrays"


def test_a_line_nested_beyond_what_any_decoder_reads_is_rejected() -> None:
    """Thousands of levels: rejected as malformed JSON, not a crash."""
    line = b'{"trace_id": "t", "seq": 1, "payload": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    assert _rejected_line(line).reason == "malformed JSON: nested too deeply"


# --- Envelope: required fields ------------------------------------------------


def test_minimal_event_accepted_with_defaults() -> None:
    """A minimal event parses, with tenant, write_scope and memory_hash defaulted."""
    ev = parse_event(_envelope())
    assert ev.record() == {
        "tenant": "default",
        "trace_id": "trace-1",
        "seq": 1,
        "event": "EXEC_START",
        "ts": "2026-11-20T10:00:00.123Z",
        "agent_owner": "planner",
        "executed_by": "planner",
        "write_scope": "memory/planner",
        "memory_hash": None,
        "payload": {},
    }


@pytest.mark.parametrize(
    "name", ["trace_id", "seq", "event", "ts", "agent_owner", "executed_by", "payload"]
)
def test_required_envelope_field_missing_rejected(name: str) -> None:
    """Leaving out a required envelope field is rejected naming that field."""
    assert _rejected(_envelope(**{name: MISSING})).field == name


@pytest.mark.parametrize("name", ["agent_owner", "executed_by"])
@pytest.mark.parametrize("value", [5, None, True, ["a"]], ids=["int", "null", "bool", "list"])
def test_agent_field_not_a_string_rejected(name: str, value: Any) -> None:
    """agent_owner and executed_by must be strings."""
    assert _rejected(_envelope(**{name: value})).field == name


@pytest.mark.parametrize("executed_by", ["system", "user:42", "other-agent"])
def test_executed_by_forms_accepted(executed_by: str) -> None:
    """executed_by may name an agent, ``system`` or ``user:<id>``."""
    assert parse_event(_envelope(executed_by=executed_by)).executed_by == executed_by


# --- Envelope: trace_id -------------------------------------------------------


@pytest.mark.parametrize(
    "trace_id",
    [
        "a",
        "x" * 200,
        "\U0001f600" * 200,
        SQL_ID,
        "Zürich-42",
        "a/b:c#d",
        "a\u200bb",
    ],
    ids=[
        "one-char",
        "200-chars",
        "200-astral-chars",
        "sql-looking",
        "non-ascii",
        "punctuation",
        "zero-width-format-char",
    ],
)
def test_trace_id_valid_kept_verbatim(trace_id: str) -> None:
    """A trace_id of 1-200 non-space, non-control characters is kept verbatim."""
    assert parse_event(_envelope(trace_id=trace_id)).trace_id == trace_id


def test_sql_looking_trace_id_kept_verbatim_on_wire() -> None:
    """A SQL-looking trace_id is just data: accepted from a JSON line, unchanged."""
    assert parse_line(_line(_envelope(trace_id=SQL_ID))).trace_id == SQL_ID


def test_sql_looking_trace_id_with_spaces_rejected_for_whitespace() -> None:
    """A SQL-looking trace_id containing spaces is rejected, for its whitespace only."""
    assert _rejected(_envelope(trace_id=SQL_ID_WITH_SPACES)).field == "trace_id"
    no_spaces = SQL_ID_WITH_SPACES.replace(" ", "")
    assert parse_event(_envelope(trace_id=no_spaces)).trace_id == no_spaces


@pytest.mark.parametrize(
    "trace_id",
    [
        "",
        "x" * 201,
        "a b",
        " a",
        "a ",
        "a\tb",
        "a\nb",
        "a\n",
        "a\rb",
        "a\x00b",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",
        "a\x9fb",
        "a\u00a0b",
        "a\u2028b",
        "a\u3000b",
        5,
        None,
        ["a"],
    ],
    ids=[
        "empty",
        "201-chars",
        "space",
        "leading-space",
        "trailing-space",
        "tab",
        "newline",
        "trailing-newline",
        "cr",
        "nul",
        "esc",
        "del",
        "c1-nel",
        "c1-apc",
        "nbsp",
        "line-separator",
        "ideographic-space",
        "int",
        "null",
        "list",
    ],
)
def test_trace_id_invalid_rejected(trace_id: Any) -> None:
    """trace_id outside 1-200 chars, with whitespace or control chars, or not a string."""
    assert _rejected(_envelope(trace_id=trace_id)).field == "trace_id"


# --- Envelope: seq ------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 2, 2**31, 2**53])
def test_seq_positive_integer_accepted(seq: int) -> None:
    """Any integer >= 1 is a valid seq."""
    assert parse_event(_envelope(seq=seq)).seq == seq


@pytest.mark.parametrize(
    "seq",
    [0, -1, 1.0, 1.5, "1", True, None],
    ids=["zero", "negative", "float-1.0", "float-1.5", "string", "bool", "null"],
)
def test_seq_invalid_rejected(seq: Any) -> None:
    """seq must be an integer >= 1: no 1.0, no "1", no true."""
    assert _rejected(_envelope(seq=seq)).field == "seq"


def test_seq_float_on_wire_rejected() -> None:
    """A JSON line with ``"seq": 1.0`` is rejected (strict integer)."""
    with pytest.raises(ValidationError) as info:
        parse_line(_line(_envelope()).replace(b'"seq":1', b'"seq":1.0'))
    assert info.value.field == "seq"


# --- Envelope: event ----------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        "EXEC_BOGUS",
        "TOOL_RUN",
        "exec_start",
        "callback_x",
        "Callback_X",
        "CALLBACK_foo",
        "CALLBACK_",
        "CALLBACK",
        "CALLBACK_X-Y",
        " EXEC_START",
        "EXEC_START ",
        "",
    ],
)
def test_unknown_event_type_rejected(event: str) -> None:
    """Any event value the spec does not list (and no CALLBACK_[A-Z0-9_]+) is rejected."""
    assert _rejected(_envelope(event=event, payload={})).field == "event"


@pytest.mark.parametrize("event", [5, None, ["EXEC_START"]], ids=["int", "null", "list"])
def test_event_not_a_string_rejected(event: Any) -> None:
    """event must be a string."""
    assert _rejected(_envelope(event=event, payload={})).field == "event"


# --- Envelope: ts -------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-20T10:00:00Z",
        "2026-11-20T10:00:00.123Z",
        "2026-11-20T10:00:00.1Z",
        "2026-11-20T10:00:00.123456Z",
        "2026-11-20T10:00:00.123456789Z",
        "2026-11-20T10:00:00+05:30",
        "2026-11-20T10:00:00.5-08:00",
        "2026-11-20T10:00:00-00:00",
        "2026-11-20T10:00:00+23:59",
        "2026-11-20t10:00:00z",
        "2024-02-29T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ],
    ids=[
        "Z",
        "Z-millis",
        "Z-1-digit",
        "Z-micros",
        "Z-nanos",
        "plus-05:30",
        "minus-08:00",
        "minus-00:00",
        "plus-23:59",
        "lowercase-t-z",
        "leap-day",
        "year-1",
        "year-9999",
    ],
)
def test_ts_with_offset_accepted(ts: str) -> None:
    """An RFC 3339 timestamp with Z or a numeric offset is accepted and kept as sent."""
    assert parse_event(_envelope(ts=ts)).ts == ts


@settings(max_examples=400, deadline=None)
@given(
    when=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    fraction=st.text("0123456789", max_size=9),
    offset_minutes=st.none() | st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    lower=st.booleans(),
)
def test_ts_utc_is_the_instant_datetime_computes(when: datetime, fraction: str,
                                                 offset_minutes: int | None, lower: bool) -> None:
    """ts_utc, for any RFC 3339 form (0-9 fraction digits, Z or an offset, either
    case), is the instant datetime arithmetic gives, to the microsecond (truncated);
    verify's shortcut for stored times (``stored_ts_utc``) gives the same."""
    sign = "-" if (offset_minutes or 0) < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes or 0), 60)
    offset = "Z" if offset_minutes is None else f"{sign}{hours:02}:{minutes:02}"
    ts = f"{when.year:04}-{when:%m-%dT%H:%M:%S}" + (f".{fraction}" if fraction else "") + offset
    if lower:
        ts = ts.replace("T", "t").replace("Z", "z")
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    instant = when.replace(microsecond=micro) - timedelta(minutes=offset_minutes or 0)
    expected = f"{instant.year:04}-{instant:%m-%dT%H:%M:%S}.{instant.microsecond:06}Z"
    assert parse_event(_envelope(ts=ts)).ts_utc == expected == stored_ts_utc(ts)


def test_ts_more_than_nine_fraction_digits_accepted() -> None:
    """RFC 3339 allows any number of fraction digits (time-secfrac = "." 1*DIGIT)."""
    ts = "2026-11-20T10:00:00.123456789012Z"
    assert parse_event(_envelope(ts=ts)).ts == ts


def test_ts_leap_second_accepted() -> None:
    """RFC 3339 allows second 60 on a leap second (2016-12-31T23:59:60Z was one)."""
    ts = "2016-12-31T23:59:60Z"
    assert parse_event(_envelope(ts=ts)).ts == ts
    for leap in (ts, "2016-12-31T23:59:60.5Z"):
        assert stored_ts_utc(leap) == parse_event(_envelope(ts=leap)).ts_utc == (
            "2017-01-01T00:00:00.000000Z" if leap == ts else "2017-01-01T00:00:00.500000Z")


@pytest.mark.parametrize(
    "ts",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"],
    ids=["year-1-plus-offset", "year-9999-minus-offset"],
)
def test_ts_at_calendar_edges_with_offset_accepted(ts: str) -> None:
    """A valid RFC 3339 timestamp whose UTC instant leaves years 1-9999 is still valid."""
    assert parse_event(_envelope(ts=ts)).ts == ts


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-20T10:00:00",
        "2026-11-20T10:00:00.123",
        "2026-11-20",
        "10:00:00Z",
        "2026-11-20T10:00Z",
        "2026-11-20T10:00:00+0530",
        "2026-11-20T10:00:00+05",
        "2026-11-20T10:00:00.Z",
        "2026-11-20 10:00:00Z extra",
        "2026-02-30T10:00:00Z",
        "2025-02-29T10:00:00Z",
        "2026-13-01T10:00:00Z",
        "2026-11-20T24:00:00Z",
        "2026-11-20T10:60:00Z",
        "2026-11-20T10:00:61Z",
        "2026-11-20T10:00:00+24:00",
        "2026-11-20T10:00:00+99:99",
        "\u0662\u0660\u0662\u0666-11-20T10:00:00Z",
        "",
        1794146400,
        None,
    ],
    ids=[
        "no-offset",
        "no-offset-fraction",
        "date-only",
        "time-only",
        "no-seconds",
        "offset-without-colon",
        "offset-hours-only",
        "empty-fraction",
        "trailing-text",
        "feb-30",
        "feb-29-non-leap",
        "month-13",
        "hour-24",
        "minute-60",
        "second-61",
        "offset-24h",
        "offset-99:99",
        "non-ascii-digits",
        "empty",
        "epoch-int",
        "null",
    ],
)
def test_ts_invalid_rejected(ts: Any) -> None:
    """A timestamp without an offset, an invalid date or time, or not a string."""
    assert _rejected(_envelope(ts=ts)).field == "ts"


# --- Envelope: tenant ---------------------------------------------------------


def test_tenant_defaults_to_default() -> None:
    """Without tenant the event belongs to tenant ``default``."""
    assert parse_event(_envelope()).tenant == "default"


@pytest.mark.parametrize(
    "tenant",
    ["t", "x" * 100, "acme corp", SQL_ID_WITH_SPACES],
    ids=["one-char", "100-chars", "space", "sql"],
)
def test_tenant_valid_kept_verbatim(tenant: str) -> None:
    """A tenant of 1-100 characters is kept verbatim."""
    assert parse_event(_envelope(tenant=tenant)).tenant == tenant


@pytest.mark.parametrize(
    "tenant", ["", "x" * 101, 5, None], ids=["empty", "101-chars", "int", "null"]
)
def test_tenant_invalid_rejected(tenant: Any) -> None:
    """tenant must be a string of 1-100 characters."""
    assert _rejected(_envelope(tenant=tenant)).field == "tenant"


# --- Envelope: write_scope ----------------------------------------------------


def test_write_scope_defaults_to_agent_owner_memory() -> None:
    """Outside memory writes, write_scope defaults to ``memory/<agent_owner>``."""
    ev = parse_event(_envelope(agent_owner="owner", executed_by="worker"))
    assert ev.write_scope == "memory/owner"


@pytest.mark.parametrize("write_scope", ["memory/planner", "memory/other-agent", "memory/user:42"])
def test_write_scope_valid_kept_verbatim(write_scope: str) -> None:
    """A write_scope of the form ``memory/<agent>`` is kept as given."""
    assert parse_event(_envelope(write_scope=write_scope)).write_scope == write_scope


@pytest.mark.parametrize(
    "write_scope",
    ["memory/", "memory", "Memory/a", "mem/a", "/memory/a", "planner", "", 5],
    ids=[
        "no-agent",
        "no-slash",
        "capital-M",
        "wrong-prefix",
        "leading-slash",
        "bare-agent",
        "empty",
        "int",
    ],
)
def test_write_scope_invalid_rejected(write_scope: Any) -> None:
    """A write_scope that is not ``memory/<agent>`` is rejected."""
    assert _rejected(_envelope(write_scope=write_scope)).field == "write_scope"


def test_write_scope_required_for_memory_write() -> None:
    """CALLBACK_MEMORY_WRITE without write_scope is rejected naming write_scope."""
    obj = _envelope("CALLBACK_MEMORY_WRITE", write_scope=MISSING)
    assert _rejected(obj).field == "write_scope"


def test_write_scope_of_memory_write_kept() -> None:
    """A memory write keeps its explicit write_scope, even another agent's."""
    ev = parse_event(_envelope("CALLBACK_MEMORY_WRITE", write_scope="memory/other"))
    assert ev.write_scope == "memory/other"


# --- Envelope: memory_hash ----------------------------------------------------


@pytest.mark.parametrize("memory_hash", [HASH, EMPTY_STATE_HASH], ids=["hex", "empty-state"])
def test_memory_hash_valid_kept(memory_hash: str) -> None:
    """``sha256:`` plus 64 lowercase hex digits is a valid memory_hash."""
    assert parse_event(_envelope(memory_hash=memory_hash)).memory_hash == memory_hash


def test_memory_hash_absent_is_none() -> None:
    """memory_hash is optional; absent, the record carries None."""
    assert parse_event(_envelope()).memory_hash is None


@pytest.mark.parametrize(
    "memory_hash",
    [
        HASH.upper(),
        "sha256:" + "0123456789ABCDEF" * 4,
        HASH[:-1],
        HASH + "0",
        "SHA256:" + HASH[7:],
        HASH[7:],
        "md5:" + HASH[7:],
        "sha256:" + "g" * 64,
        "sha256: " + HASH[8:],
        5,
    ],
    ids=[
        "all-upper",
        "upper-hex",
        "63-hex",
        "65-hex",
        "upper-prefix",
        "no-prefix",
        "md5-prefix",
        "non-hex",
        "space",
        "int",
    ],
)
def test_memory_hash_invalid_rejected(memory_hash: Any) -> None:
    """memory_hash must be ``sha256:`` and 64 lowercase hex digits."""
    assert _rejected(_envelope(memory_hash=memory_hash)).field == "memory_hash"


# --- Envelope: payload and unknown fields -------------------------------------


@pytest.mark.parametrize(
    "payload", [[], None, "x", 1, True], ids=["array", "null", "string", "number", "bool"]
)
def test_payload_not_an_object_rejected(payload: Any) -> None:
    """payload must be a JSON object."""
    assert _rejected(_envelope(payload=payload)).field == "payload"


def test_empty_payload_accepted_where_nothing_required() -> None:
    """payload may be ``{}``."""
    assert parse_event(_envelope("EXEC_START", payload={})).payload == {}


@pytest.mark.parametrize("name", ["foo", "value", "key", "Trace_id", "payload_extra"])
def test_unknown_envelope_field_rejected(name: str) -> None:
    """A field the envelope does not define is rejected naming that field."""
    assert _rejected(_envelope(**{name: "x"})).field == name


# --- Payloads: minimal, required, types ---------------------------------------


@pytest.mark.parametrize("event", NAMED_EVENTS)
def test_minimal_payload_accepted(event: str) -> None:
    """Each event type accepts a payload with just its required fields."""
    ev = parse_event(_envelope(event))
    assert (ev.event, ev.payload) == (event, MINIMAL_PAYLOADS[event])


REQUIRED_PAYLOAD_FIELDS = [
    ("REASONER_ACTION", "action"),
    ("REASONER_ACTION", "action.tool"),
    ("REASONER_ACTION", "action.args"),
    ("TOOL_EXEC", "tool"),
    ("TOOL_EXEC", "args"),
    ("TOOL_EXEC", "success"),
    ("TOOL_FAIL", "tool"),
    ("TOOL_FAIL", "reason"),
    ("CALLBACK_RESULT", "tool"),
    ("CALLBACK_RESULT", "status"),
    ("CALLBACK_POLICY_RESOLVED", "policy"),
    ("CALLBACK_POLICY_RESOLVED", "policy.write_memory"),
    ("CALLBACK_POLICY_RESOLVED", "policy.record_trace"),
    ("CALLBACK_POLICY_RESOLVED", "policy.fallback_required"),
    ("CALLBACK_POLICY_RESOLVED", "policy.trigger_next"),
    ("CALLBACK_MEMORY_WRITE", "key"),
    ("CALLBACK_FALLBACK", "original_tool"),
    ("CALLBACK_FALLBACK", "fallback_tool"),
    ("CALLBACK_RETRY", "tool"),
    ("CALLBACK_RETRY", "attempt"),
    ("CALLBACK_NEXT_ACTION", "next_action"),
    ("CALLBACK_PERMISSION", "source_agent"),
    ("CALLBACK_PERMISSION", "executing_agent"),
    ("CALLBACK_PERMISSION", "scope"),
    ("CALLBACK_PERMISSION", "granted"),
    ("CALLBACK_FAIL", "reason"),
    ("EXEC_FAIL", "error_code"),
    ("EXEC_FAIL", "reason"),
    ("EXEC_TERMINATED", "reason"),
]


@pytest.mark.parametrize(
    ("event", "path"), REQUIRED_PAYLOAD_FIELDS, ids=[f"{e}-{p}" for e, p in REQUIRED_PAYLOAD_FIELDS]
)
def test_required_payload_field_missing_rejected(event: str, path: str) -> None:
    """Leaving out a required payload field is rejected with its dotted path."""
    obj = _envelope(event, payload=_at(MINIMAL_PAYLOADS[event], path))
    assert _rejected(obj).field == f"payload.{path}"


WRONG_PAYLOAD_VALUES: list[tuple[str, str, Any, str]] = [
    ("REASONER_ACTION", "action", "search", "action-string"),
    ("REASONER_ACTION", "action", [], "action-array"),
    ("REASONER_ACTION", "action.tool", 1, "tool-int"),
    ("REASONER_ACTION", "action.tool", None, "tool-null"),
    ("REASONER_ACTION", "action.args", [], "args-array"),
    ("REASONER_ACTION", "action.args", "q=x", "args-string"),
    ("REASONER_ACTION", "strategy", "random", "strategy-unknown"),
    ("REASONER_ACTION", "strategy", "SERIAL", "strategy-uppercase"),
    ("REASONER_ACTION", "confidence", -0.01, "confidence-below-0"),
    ("REASONER_ACTION", "confidence", 1.01, "confidence-above-1"),
    ("REASONER_ACTION", "confidence", 2, "confidence-int-2"),
    ("REASONER_ACTION", "confidence", "0.5", "confidence-string"),
    ("REASONER_ACTION", "confidence", True, "confidence-bool"),
    ("TOOL_EXEC", "tool", 1, "tool-int"),
    ("TOOL_EXEC", "args", [], "args-array"),
    ("TOOL_EXEC", "args", None, "args-null"),
    ("TOOL_EXEC", "success", "true", "success-string"),
    ("TOOL_EXEC", "success", 1, "success-int-1"),
    ("TOOL_EXEC", "success", 0, "success-int-0"),
    ("TOOL_EXEC", "success", None, "success-null"),
    ("TOOL_EXEC", "error_reason", 429, "error-reason-int"),
    ("TOOL_EXEC", "error_class", "fatal", "error-class-unknown"),
    ("TOOL_EXEC", "error_class", "Terminal", "error-class-capitalized"),
    ("TOOL_EXEC", "latency_ms", -1, "latency-negative-int"),
    ("TOOL_EXEC", "latency_ms", -0.5, "latency-negative-float"),
    ("TOOL_EXEC", "latency_ms", "10", "latency-string"),
    ("TOOL_EXEC", "latency_ms", True, "latency-bool"),
    ("TOOL_EXEC", "attempt", 0, "attempt-0"),
    ("TOOL_EXEC", "attempt", -1, "attempt-negative"),
    ("TOOL_EXEC", "attempt", 1.0, "attempt-float-1.0"),
    ("TOOL_EXEC", "attempt", "1", "attempt-string"),
    ("TOOL_EXEC", "attempt", True, "attempt-bool"),
    ("TOOL_EXEC", "attempt", 2**63, "attempt-beyond-64-bits"),
    ("CALLBACK_RESULT", "tool", 1, "tool-int"),
    ("CALLBACK_RESULT", "status", "failure", "status-unknown"),
    ("CALLBACK_RESULT", "status", "FAILED", "status-uppercase"),
    ("CALLBACK_RESULT", "status", True, "status-bool"),
    ("CALLBACK_POLICY_RESOLVED", "policy", [], "policy-array"),
    ("CALLBACK_POLICY_RESOLVED", "policy", True, "policy-bool"),
    ("CALLBACK_POLICY_RESOLVED", "policy.write_memory", "true", "write-memory-string"),
    ("CALLBACK_POLICY_RESOLVED", "policy.record_trace", 1, "record-trace-int"),
    ("CALLBACK_POLICY_RESOLVED", "policy.fallback_required", None, "fallback-required-null"),
    ("CALLBACK_POLICY_RESOLVED", "policy.trigger_next", "false", "trigger-next-string"),
    ("CALLBACK_MEMORY_WRITE", "key", 1, "key-int"),
    ("CALLBACK_MEMORY_WRITE", "key", None, "key-null"),
    ("CALLBACK_RETRY", "attempt", 1, "attempt-1"),
    ("CALLBACK_RETRY", "attempt", 0, "attempt-0"),
    ("CALLBACK_RETRY", "attempt", 2.0, "attempt-float-2.0"),
    ("CALLBACK_RETRY", "attempt", "2", "attempt-string"),
    ("CALLBACK_RETRY", "attempt", True, "attempt-bool"),
    ("CALLBACK_RETRY", "attempt", 2**63, "attempt-beyond-64-bits"),
    ("CALLBACK_NEXT_ACTION", "next_action", [], "next-action-array"),
    ("CALLBACK_NEXT_ACTION", "next_action", "search", "next-action-string"),
    ("CALLBACK_NEXT_ACTION", "next_action", None, "next-action-null"),
    ("CALLBACK_PERMISSION", "granted", "true", "granted-string"),
    ("CALLBACK_PERMISSION", "granted", 1, "granted-int"),
    ("CALLBACK_PERMISSION", "granted", None, "granted-null"),
    ("CALLBACK_SUCCESS", "next", "yes", "next-string"),
    ("CALLBACK_SUCCESS", "next", 1, "next-int"),
]


@pytest.mark.parametrize(
    ("event", "path", "value"),
    [(e, p, v) for e, p, v, _ in WRONG_PAYLOAD_VALUES],
    ids=[f"{e}-{i}" for e, _, _, i in WRONG_PAYLOAD_VALUES],
)
def test_payload_field_wrong_type_or_range_rejected(event: str, path: str, value: Any) -> None:
    """A payload field of the wrong type (strict) or out of range is rejected by path."""
    obj = _envelope(event, payload=_at(MINIMAL_PAYLOADS[event], path, value))
    assert _rejected(obj).field == f"payload.{path}"


VALID_OPTIONAL_VALUES: list[tuple[str, str, Any, str]] = [
    ("EXEC_START", "context_id", "ctx-1", "context-id"),
    ("REASONER_ACTION", "strategy", "serial", "strategy-serial"),
    ("REASONER_ACTION", "strategy", "parallel", "strategy-parallel"),
    ("REASONER_ACTION", "strategy", "fallback", "strategy-fallback"),
    ("REASONER_ACTION", "intent", "find the weather", "intent"),
    ("REASONER_ACTION", "confidence", 0, "confidence-0"),
    ("REASONER_ACTION", "confidence", 1, "confidence-1"),
    ("REASONER_ACTION", "confidence", 0.5, "confidence-half"),
    ("REASONER_ACTION", "confidence", 1.0, "confidence-1.0"),
    ("REASONER_ACTION", "action.args", {"q": [1, {"n": None}]}, "args-nested"),
    ("TOOL_EXEC", "success", False, "success-false"),
    ("TOOL_EXEC", "output", None, "output-null"),
    ("TOOL_EXEC", "output", [1, "a", {"b": True}], "output-array"),
    ("TOOL_EXEC", "output", {"hits": 3}, "output-object"),
    ("TOOL_EXEC", "output", "text", "output-string"),
    ("TOOL_EXEC", "output", 1.5, "output-number"),
    ("TOOL_EXEC", "error_reason", "429 rate limited", "error-reason"),
    ("TOOL_EXEC", "error_class", "terminal", "error-class-terminal"),
    ("TOOL_EXEC", "error_class", "retryable", "error-class-retryable"),
    ("TOOL_EXEC", "error_class", "replaceable", "error-class-replaceable"),
    ("TOOL_EXEC", "latency_ms", 0, "latency-0"),
    ("TOOL_EXEC", "latency_ms", 12.5, "latency-float"),
    ("TOOL_EXEC", "latency_ms", 3000, "latency-int"),
    ("TOOL_EXEC", "attempt", 1, "attempt-1"),
    ("TOOL_EXEC", "attempt", 3, "attempt-3"),
    ("TOOL_EXEC", "attempt", 2**63 - 1, "attempt-max"),
    ("CALLBACK_RESULT", "status", "failed", "status-failed"),
    ("CALLBACK_RESULT", "reason", "timeout", "reason"),
    ("CALLBACK_RESULT", "metadata", {"k": [1]}, "metadata"),
    ("CALLBACK_POLICY_RESOLVED", "rule", "retry-then-fallback", "rule"),
    ("CALLBACK_RETRY", "attempt", 2, "attempt-2"),
    ("CALLBACK_RETRY", "attempt", 7, "attempt-7"),
    ("CALLBACK_RETRY", "attempt", 2**63 - 1, "attempt-max"),
    ("CALLBACK_NEXT_ACTION", "next_action", {"tool": "x", "args": {}}, "next-action"),
    ("CALLBACK_PERMISSION", "granted", False, "granted-false"),
    ("CALLBACK_SUCCESS", "next", True, "next-true"),
    ("CALLBACK_SUCCESS", "next", False, "next-false"),
    ("EXEC_FAIL", "error_code", 500, "error-code-int"),
    ("EXEC_TERMINATED", "error_code", "E_FALLBACK", "error-code"),
]


@pytest.mark.parametrize(
    ("event", "path", "value"),
    [(e, p, v) for e, p, v, _ in VALID_OPTIONAL_VALUES],
    ids=[f"{e}-{i}" for e, _, _, i in VALID_OPTIONAL_VALUES],
)
def test_payload_field_valid_value_accepted(event: str, path: str, value: Any) -> None:
    """Each allowed value of an optional or constrained payload field is accepted."""
    payload = _at(MINIMAL_PAYLOADS[event], path, value)
    assert parse_event(_envelope(event, payload=payload)).payload == payload


def test_tool_exec_attempt_default_not_written_into_payload() -> None:
    """TOOL_EXEC without attempt is valid; the payload is stored as sent, not filled in."""
    ev = parse_event(_envelope("TOOL_EXEC"))
    assert "attempt" not in ev.payload


# --- Payloads: unknown extra fields -------------------------------------------


@pytest.mark.parametrize("event", [*NAMED_EVENTS, "CALLBACK_FOO_BAR"])
def test_unknown_payload_fields_kept_verbatim(event: str) -> None:
    """Extra payload fields survive parsing unchanged, in the event's payload."""
    extra = {"x_note": "kept", "x_nested": {"list": [1, 2.5, None, True, "s"]}, "x_null": None}
    payload = {**MINIMAL_PAYLOADS.get(event, {}), **extra}
    assert parse_event(_envelope(event, payload=copy.deepcopy(payload))).payload == payload


@pytest.mark.parametrize(
    ("event", "path"),
    [("REASONER_ACTION", "action.x_extra"), ("CALLBACK_POLICY_RESOLVED", "policy.x_extra")],
    ids=["action", "policy"],
)
def test_unknown_nested_payload_fields_kept_verbatim(event: str, path: str) -> None:
    """Extra fields inside nested payload objects are kept too."""
    payload = _at(MINIMAL_PAYLOADS[event], path, {"a": [1]})
    assert parse_event(_envelope(event, payload=copy.deepcopy(payload))).payload == payload


def test_unknown_payload_fields_kept_verbatim_on_wire() -> None:
    """A JSON line's extra payload fields come out exactly as they went in."""
    payload = {**MINIMAL_PAYLOADS["TOOL_EXEC"], "x_trace": {"span": "abc", "n": 10, "f": 1.5e-7}}
    assert parse_line(_line(_envelope("TOOL_EXEC", payload=payload))).payload == payload


@pytest.mark.parametrize(
    "literal",
    [b"100000000000000000000000000000", b"-18446744073709551617", b"9007199254740993"],
    ids=["1e29-int", "below-minus-2**64", "2**53+1"],
)
def test_big_integer_in_extra_payload_field_kept_exactly_on_wire(literal: bytes) -> None:
    """A big JSON integer in an extra payload field is kept verbatim, as that integer."""
    line = _line(_envelope("TOOL_EXEC")).replace(
        b'"success":true', b'"success":true,"x_n":' + literal
    )
    value = parse_line(line).payload["x_n"]
    assert (type(value), value) == (int, int(literal))


# --- Payloads: CALLBACK_MEMORY_WRITE ------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, 0, "", [], {}, {"a": [1, {"b": None}]}, 2**53 - 1, -(2**53 - 1), 1.5e-7, -0.0, True],
    ids=[
        "null",
        "zero",
        "empty-string",
        "empty-array",
        "empty-object",
        "nested",
        "max-safe-int",
        "min-safe-int",
        "small-float",
        "negative-zero",
        "bool",
    ],
)
def test_memory_write_with_value_accepted(value: Any) -> None:
    """A memory write sets key to any I-JSON value, null included."""
    payload = {"key": "k", "value": value}
    assert parse_event(_envelope("CALLBACK_MEMORY_WRITE", payload=payload)).payload == payload


def test_memory_write_delete_accepted() -> None:
    """A memory write with ``op: "delete"`` and no value removes the key."""
    payload = {"key": "k", "op": "delete"}
    assert parse_event(_envelope("CALLBACK_MEMORY_WRITE", payload=payload)).payload == payload


@pytest.mark.parametrize("value", [1, None], ids=["value", "null-value"])
def test_memory_write_value_and_delete_rejected(value: Any) -> None:
    """A memory write giving both value (even null) and op delete is rejected."""
    obj = _envelope("CALLBACK_MEMORY_WRITE", payload={"key": "k", "value": value, "op": "delete"})
    assert _rejected(obj).field in {"payload", "payload.value", "payload.op"}


@pytest.mark.parametrize(
    "payload", [{"key": "k"}, {"key": "k", "op": None}], ids=["key-only", "op-null"]
)
def test_memory_write_without_value_or_delete_rejected(payload: dict[str, Any]) -> None:
    """A memory write with neither value nor ``op: "delete"`` is rejected."""
    obj = _envelope("CALLBACK_MEMORY_WRITE", payload=payload)
    assert _rejected(obj).field in {"payload", "payload.value", "payload.op"}


@pytest.mark.parametrize("op", ["set", "DELETE", "remove", 1])
def test_memory_write_op_other_than_delete_rejected(op: Any) -> None:
    """``op`` has one allowed value, ``"delete"``."""
    obj = _envelope("CALLBACK_MEMORY_WRITE", payload={"key": "k", "op": op})
    assert _rejected(obj).field == "payload.op"


@pytest.mark.parametrize(
    "literal",
    [b"9007199254740992", b"-9007199254740992", b"1000000000000000000000000000000", b"1e400"],
    ids=["2**53", "-2**53", "1e30-int", "float-overflow"],
)
def test_memory_value_not_ijson_on_wire_rejected(literal: bytes) -> None:
    """A memory value outside I-JSON (big integer, infinity) is rejected at payload.value."""
    line = _line(_envelope("CALLBACK_MEMORY_WRITE", payload={"key": "k", "value": 0}))
    line = line.replace(b'"value":0', b'"value":' + literal)
    with pytest.raises(ValidationError) as info:
        parse_line(line)
    assert info.value.field == "payload.value"


def test_memory_value_max_safe_integer_on_wire_accepted() -> None:
    """2**53 - 1 in a JSON line is still I-JSON and accepted as an exact integer."""
    line = _line(_envelope("CALLBACK_MEMORY_WRITE", payload={"key": "k", "value": 2**53 - 1}))
    assert parse_line(line).payload["value"] == 2**53 - 1


def test_memory_value_nested_not_ijson_rejected_under_value() -> None:
    """An I-JSON violation deep inside the value is reported under payload.value."""
    obj = _envelope("CALLBACK_MEMORY_WRITE", payload={"key": "k", "value": {"a": [2**53]}})
    field = _rejected(obj).field
    assert field is not None and field.startswith("payload.value")


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"]
)
def test_memory_value_non_finite_rejected(value: float) -> None:
    """NaN and infinities are not I-JSON memory values (Python API)."""
    obj = _envelope("CALLBACK_MEMORY_WRITE", payload={"key": "k", "value": value})
    assert _rejected(obj).field == "payload.value"


# --- Payloads: forward-compatible and free events -----------------------------


@pytest.mark.parametrize("event", ["CALLBACK_FOO_BAR", "CALLBACK_X", "CALLBACK_V2", "CALLBACK_A_"])
def test_unknown_callback_subtype_accepted_as_free_object(event: str) -> None:
    """An unnamed ``CALLBACK_[A-Z0-9_]+`` takes any object payload, kept verbatim."""
    payload = {"anything": [1, "two"], "tool": 5, "status": "weird"}
    assert parse_event(_envelope(event, payload=payload)).payload == payload


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("CALLBACK_FOO_BAR", True),
        ("CALLBACK_X1", True),
        ("CALLBACK_RESULT", False),
        ("CALLBACK_MEMORY_WRITE", False),
        ("CALLBACK_FAIL", False),
        ("EXEC_NEXT", False),
        ("TOOL_EXEC", False),
        ("callback_x", False),
        ("CALLBACK_", False),
    ],
)
def test_is_unknown_callback(event: str, expected: bool) -> None:
    """Only unnamed ``CALLBACK_[A-Z0-9_]+`` subtypes count as unknown callbacks."""
    assert is_unknown_callback(event) is expected


@pytest.mark.parametrize("event", ["EXEC_NEXT", "EXEC_LOOP"])
@pytest.mark.parametrize(
    "payload", [{}, {"tool": 5, "success": "no", "nested": {"a": [None]}}], ids=["empty", "any"]
)
def test_free_exec_events_accept_any_object(event: str, payload: dict[str, Any]) -> None:
    """EXEC_NEXT and EXEC_LOOP take any object payload."""
    assert parse_event(_envelope(event, payload=payload)).payload == payload


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("TOOL_EXEC", {"tool": "x", "args": {}, "success": True, "output": float("nan")}),
        ("TOOL_EXEC", {"tool": "x", "args": {}, "success": True, "latency_ms": float("inf")}),
        ("EXEC_NEXT", {"x": float("-inf")}),
    ],
    ids=["output-nan", "latency-inf", "free-payload-inf"],
)
def test_python_api_rejects_non_json_numbers(event: str, payload: dict[str, Any]) -> None:
    """The Python API takes the wire's shape: NaN and infinities are not JSON."""
    _rejected(_envelope(event, payload=payload))


# --- Wire level ---------------------------------------------------------------

_GOOD = _line(_envelope())


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        (b'{"trace_id": "t", ', "JSON"),
        (_GOOD + b" x", "JSON"),
        (_GOOD[:-1], "JSON"),
        (b"", "JSON"),
        (b"\xff\xfe", "UTF-8"),
        (_GOOD.replace(b"trace-1", b"trace-\xff"), "UTF-8"),
        (_GOOD.replace(b"trace-1", b"trace-\xc0\xaf"), "UTF-8"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":NaN}'), "JSON"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":Infinity}'), "JSON"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":-Infinity}'), "JSON"),
        (b"[" + _GOOD + b"]", "object"),
        (b'"EXEC_START"', "object"),
        (b"null", "object"),
        (b"42", "object"),
        (_GOOD.replace(b"trace-1", b"trace-\\ud800"), "surrogate"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":"\\udc00"}'), "surrogate"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":1e400}'), "beyond the range"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":[-1.5E+309]}'), "beyond the range"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":1' + b"0" * 400 + b'.0}'),
         "beyond the range"),
    ],
    ids=[
        "truncated",
        "trailing-garbage",
        "missing-brace",
        "empty",
        "invalid-utf8",
        "invalid-utf8-in-string",
        "overlong-utf8",
        "nan-literal",
        "infinity-literal",
        "minus-infinity-literal",
        "array",
        "string",
        "null",
        "number",
        "lone-surrogate-in-trace-id",
        "lone-surrogate-in-payload",
        "float-beyond-a-double",
        "negative-float-beyond-a-double-in-an-array",
        "400-digit-float",
    ],
)
def test_bad_wire_line_rejected_with_reason(raw: bytes, hint: str) -> None:
    """A line that is not one UTF-8 JSON object raises ValidationError saying why."""
    with pytest.raises(ValidationError) as info:
        parse_line(raw)
    assert hint.lower() in info.value.reason.lower()


@pytest.mark.parametrize("literal", [b"1e-400", b"1.7976931348623157e308", b"5e-324", b"-0.0"])
def test_a_float_within_a_doubles_range_is_kept(literal: bytes) -> None:
    """A float a double holds, however small or large, is stored as that float."""
    line = _line(_envelope("TOOL_EXEC")).replace(
        b'"success":true', b'"success":true,"x_f":' + literal
    )
    event = parse_line(line)
    assert event.payload["x_f"] == float(literal)
    assert orjson.loads(event.wire_json)["payload"]["x_f"] == float(literal)


def test_wire_line_parses_like_python_object() -> None:
    """parse_line on a JSON line equals parse_event on the same object."""
    obj = _envelope("TOOL_EXEC", tenant="acme", memory_hash=HASH, write_scope="memory/x")
    assert parse_line(_line(obj)) == parse_event(obj)


@pytest.mark.parametrize(
    ("raw", "field", "key"),
    [
        (_GOOD.replace(b'"seq":1', b'"seq":1,"seq":1'), None, "seq"),
        (_GOOD.replace(b'"seq":1', b'"seq":2,"seq":1'), None, "seq"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"a":1,"b":2,"a":1}'), "payload", "a"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"x":[0,{"z":{},"z":{}}]}'),
         "payload.x[1]", "z"),
        # whitespace before a colon, and an escaped colon making up for the repeat's
        (_GOOD.replace(b'"payload":{}', b'"payload":{"a" : 1,"a":1,"b":"\\u003a"}'),
         "payload", "a"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"\\u0061":1,"a":1}'), "payload", "a"),
        (_GOOD.replace(b'"payload":{}', b'"payload":{"n":123456789012345678901234567890,'
                                        b'"n":1}'), "payload", "n"),
    ],
    ids=["envelope-same-value", "envelope-other-value", "payload", "nested-in-list",
         "escaped-colon-and-spaces", "escaped-key", "beyond-64-bits"],
)
def test_a_key_twice_in_one_object_is_rejected(raw: bytes, field: str | None, key: str) -> None:
    """A line that names a key twice in one object is rejected, naming the key and the
    object: a decoder would keep one value and drop the other."""
    error = _rejected_line(raw)
    assert (error.field, error.reason) == (
        field, f"key {key!r} appears twice in one object (JSON names must be unique)")


@pytest.mark.parametrize(
    "raw",
    [
        _GOOD.replace(b'"payload":{}', b'"payload":{"a:b":"c:d","x":{"a:b":1}}'),
        _GOOD.replace(b'"payload":{}', b'"payload":{"a":"\\u003a:","b":{"a":{"a":[]}}}'),
        _GOOD.replace(b'"planner"', b'"user:7"'),  # the default write_scope holds a colon
        _GOOD.replace(b'"payload":{}', b'"write_scope":null,"payload":{}'),
        _GOOD.replace(b'"seq":1', b'"seq" :\t1 ,\n "tenant" : "t:1"'),
    ],
    ids=["colons-in-keys-and-strings", "escaped-colon", "owner-with-colon",
         "null-write-scope", "spaces-and-tenant-with-colon"],
)
def test_keys_alike_in_different_objects_are_kept(raw: bytes) -> None:
    """Repeated names in different objects, and colons anywhere, are not repeats."""
    assert parse_line(raw).record() == orjson.loads(parse_line(raw).wire_json)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"tenant": "ac\x00me"}, "tenant"),
        ({"agent_owner": "\x00"}, "agent_owner"),
        ({"executed_by": "user:\x00"}, "executed_by"),
        ({"write_scope": "memory/x\x00"}, "write_scope"),
        ({"payload": {"context_id": "a\x00"}}, "payload.context_id"),
        ({"payload": {"x": [{"y": "\x00"}]}}, "payload.x[0].y"),
        ({"payload": {"x": {"\x00": 1}}}, "payload.x"),
    ],
    ids=["tenant", "agent_owner", "executed_by", "write_scope", "payload", "nested",
         "key"],
)
@pytest.mark.parametrize("route", ["wire", "api"])
def test_a_nul_character_anywhere_is_rejected(
    fields: dict[str, Any], where: str, route: str
) -> None:
    """U+0000 in any string or key is rejected with its field, by both routes in: no
    backend could index it alike (PostgreSQL text cannot hold it)."""
    obj = _envelope(**fields)
    error = _rejected_line(_line(obj)) if route == "wire" else _rejected(obj)
    assert error.field == where and "NUL character (U+0000)" in error.reason


def test_spec_example_chain_parses() -> None:
    """The orientation chain of spec section 5 is valid event by event."""
    chain: list[tuple[str, dict[str, Any]]] = [
        ("EXEC_START", {}),
        ("REASONER_ACTION", {"action": {"tool": "search", "args": {"q": "weather"}}}),
        (
            "TOOL_EXEC",
            {"tool": "search", "args": {}, "success": False, "error_reason": "429 rate limited"},
        ),
        ("CALLBACK_RESULT", {"tool": "search", "status": "failed"}),
        ("CALLBACK_RETRY", {"tool": "search", "attempt": 2}),
        ("TOOL_EXEC", {"tool": "search", "args": {}, "attempt": 2, "success": False}),
        ("CALLBACK_FALLBACK", {"original_tool": "search", "fallback_tool": "search_cache"}),
        ("TOOL_EXEC", {"tool": "search_cache", "args": {}, "success": True}),
        ("CALLBACK_RESULT", {"tool": "search_cache", "status": "success"}),
        ("CALLBACK_POLICY_RESOLVED", MINIMAL_PAYLOADS["CALLBACK_POLICY_RESOLVED"]),
        ("CALLBACK_MEMORY_WRITE", {"key": "search_cache_result", "value": {"hits": 3}}),
        ("CALLBACK_SUCCESS", {}),
    ]
    events = [
        parse_line(_line(_envelope(event, payload=payload, seq=seq)))
        for seq, (event, payload) in enumerate(chain, start=1)
    ]
    assert [ev.seq for ev in events] == list(range(1, len(chain) + 1))


# --- Failure points -----------------------------------------------------------

FAILURE_POINTS = [
    ("TOOL_EXEC", {"tool": "search", "args": {}, "success": False}),
    ("TOOL_FAIL", MINIMAL_PAYLOADS["TOOL_FAIL"]),
    ("CALLBACK_RESULT", {"tool": "search", "status": "failed"}),
    ("CALLBACK_FAIL", MINIMAL_PAYLOADS["CALLBACK_FAIL"]),
    ("EXEC_FAIL", MINIMAL_PAYLOADS["EXEC_FAIL"]),
    ("EXEC_TERMINATED", MINIMAL_PAYLOADS["EXEC_TERMINATED"]),
    ("EXEC_TERMINATED", {"reason": "fallback failed", "error_code": "E1"}),
]
NOT_FAILURE_POINTS = [
    ("TOOL_EXEC", {"tool": "search", "args": {}, "success": True}),
    ("TOOL_EXEC", {"tool": "search", "args": {}, "success": True, "error_reason": "slow"}),
    ("CALLBACK_RESULT", {"tool": "search", "status": "success", "reason": "failed once"}),
    ("CALLBACK_RETRY", MINIMAL_PAYLOADS["CALLBACK_RETRY"]),
    ("CALLBACK_FALLBACK", MINIMAL_PAYLOADS["CALLBACK_FALLBACK"]),
    ("CALLBACK_SUCCESS", {"next": False}),
    ("EXEC_START", {}),
    ("EXEC_LOOP", {"success": False}),
    ("CALLBACK_TOOL_FAIL", {"status": "failed"}),
]


@pytest.mark.parametrize(
    ("event", "payload"),
    FAILURE_POINTS,
    ids=[
        "tool-exec-unsuccessful",
        "tool-fail",
        "callback-result-failed",
        "callback-fail",
        "exec-fail",
        "exec-terminated",
        "exec-terminated-with-code",
    ],
)
def test_failure_point(event: str, payload: dict[str, Any]) -> None:
    """Each event the spec lists as recording a failure is a failure point."""
    ev = parse_event(_envelope(event, payload=payload))
    assert is_failure_point(ev.event, ev.payload) is True


@pytest.mark.parametrize(
    ("event", "payload"),
    NOT_FAILURE_POINTS,
    ids=[
        "tool-exec-success",
        "tool-exec-success-with-error-reason",
        "callback-result-success",
        "callback-retry",
        "callback-fallback",
        "callback-success",
        "exec-start",
        "exec-loop-with-success-false",
        "unknown-callback-named-fail",
    ],
)
def test_not_failure_point(event: str, payload: dict[str, Any]) -> None:
    """Events outside the spec's list are not failure points, whatever their payload says."""
    ev = parse_event(_envelope(event, payload=payload))
    assert is_failure_point(ev.event, ev.payload) is False


# --- Property: the record round-trips the submitted fields --------------------

_NO_SURROGATES = st.characters(codec="utf-8", exclude_characters="\x00")  # nor NUL
_TEXT = st.text(alphabet=_NO_SURROGATES, max_size=20)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=10,
)
_TRACE_IDS = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=200,
)
_AGENTS = st.text(alphabet=_NO_SURROGATES, min_size=1, max_size=30)


@st.composite
def _timestamps(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)))
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = (
        "." + draw(st.text(string.digits, min_size=digits, max_size=digits)) if digits else ""
    )
    minutes = draw(st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1))
    sign = "-" if minutes < 0 else "+"
    offset = draw(st.sampled_from(["Z", f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"]))
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}{fraction}{offset}"


@st.composite
def _valid_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(st.sampled_from([*NAMED_EVENTS, "CALLBACK_FOO_BAR"]))
    extras = draw(st.dictionaries(_TEXT.map(lambda k: "x_" + k), _JSON, max_size=3))
    obj: dict[str, Any] = {
        "trace_id": draw(_TRACE_IDS),
        "seq": draw(st.integers(min_value=1, max_value=2**63 - 1)),
        "event": event,
        "ts": draw(_timestamps()),
        "agent_owner": draw(_AGENTS),
        "executed_by": draw(_AGENTS),
        "payload": {**copy.deepcopy(MINIMAL_PAYLOADS.get(event, {})), **extras},
    }
    if draw(st.booleans()):
        obj["tenant"] = draw(st.text(alphabet=_NO_SURROGATES, min_size=1, max_size=100))
    if event == "CALLBACK_MEMORY_WRITE" or draw(st.booleans()):
        obj["write_scope"] = "memory/" + draw(_AGENTS.filter(lambda a: "\n" not in a))
    if draw(st.booleans()):
        obj["memory_hash"] = "sha256:" + draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    return obj


def _expected_record(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        **obj,
        "tenant": obj.get("tenant", "default"),
        "write_scope": obj.get("write_scope", f"memory/{obj['agent_owner']}"),
        "memory_hash": obj.get("memory_hash"),
    }


@settings(max_examples=300, deadline=None)
@given(_valid_envelopes())
def test_record_round_trips_submitted_fields(obj: dict[str, Any]) -> None:
    """For any valid event, record() is the submitted object with defaults filled in."""
    expected = _expected_record(copy.deepcopy(obj))
    ev = parse_event(obj)
    assert isinstance(ev, TraceEvent)
    assert ev.record() == expected


@settings(max_examples=200, deadline=None)
@given(_valid_envelopes())
def test_record_round_trips_through_wire_line(obj: dict[str, Any]) -> None:
    """For any valid event sent as a JSON line, record() equals the submitted fields."""
    assert parse_line(orjson.dumps(obj)).record() == _expected_record(obj)


def _written(value: Any, draw: Callable[[Any], Any], repeat: list[int]) -> str:
    """``value`` as JSON text with drawn spacing and escapes; the object numbered
    ``repeat[0]`` (counting from 0, depth first) names one of its keys twice, with the
    same value."""
    gap = draw(st.sampled_from(["", " ", "\t", " \n "]))
    if isinstance(value, dict):
        number, repeat[0] = repeat[0], repeat[0] - 1
        members = [(key, _written(item, draw, repeat)) for key, item in value.items()]
        if number == 0 and members:
            members.insert(draw(st.integers(0, len(members))),
                           members[draw(st.integers(0, len(members) - 1))])
        return "{" + ",".join(f"{_string(key, draw)}{gap}:{gap}{item}"
                              for key, item in members) + "}"
    if isinstance(value, list):
        return "[" + f",{gap}".join(_written(item, draw, repeat) for item in value) + "]"
    if isinstance(value, str):
        return _string(value, draw)
    return json.dumps(value)


def _string(text: str, draw: Callable[[Any], Any]) -> str:
    written = json.dumps(text, ensure_ascii=draw(st.booleans()))
    return written.replace(":", "\\u003a") if draw(st.booleans()) else written


def _object_sizes(value: Any) -> list[int]:
    """How many members each object of ``value`` has, depth first (as ``_written`` counts)."""
    if isinstance(value, dict):
        return [len(value), *(n for item in value.values() for n in _object_sizes(item))]
    if isinstance(value, list):
        return [n for item in value for n in _object_sizes(item)]
    return []


@settings(max_examples=300, deadline=None)
@given(_valid_envelopes(), st.data())
def test_a_line_is_rejected_exactly_when_an_object_repeats_a_key(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    """However a valid event is spaced and escaped, its line is stored as sent; the
    same line with one key repeated (same value) in any one of its objects is rejected."""
    objects = [number for number, size in enumerate(_object_sizes(obj)) if size]
    target = data.draw(st.sampled_from([-1, *objects]))  # -1: no repeat
    raw = _written(obj, data.draw, [target])
    if target < 0:
        assert parse_line(raw.encode()).record() == _expected_record(obj)
        if "\\u" not in raw:  # no escapes: counting colons proves the keys unique
            event = parse_line(raw.encode())
            assert _surely_unique_keys(raw.encode(), json.loads(raw), event)
    else:
        assert "appears twice" in _rejected_line(raw.encode()).reason
