"""The trace-event envelope: validation of one wire event into a :class:`TraceEvent`.

``parse_line`` (bytes of one JSONL line) and ``parse_event`` (an already decoded
object, the Python API's input) apply the whole contract of
``docs/EVENT-CONTRACT.md``: envelope fields, the payload model for the event type,
defaults (``tenant``, ``write_scope``) and the I-JSON rule for memory values. Any
violation raises :class:`ledger.errors.ValidationError` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ledger import chain
from ledger.canonical import canonicalize
from ledger.chain import DEFAULT_TENANT, MAX_NESTING, encode
from ledger.errors import ValidationError
from ledger.payloads import MAX_INTEGER, MODEL_RULES, PAYLOAD_MODELS, payload_model
from ledger.quick_check import quick_check
from ledger.strict_json import SURROGATE_REASON, check_text, decode_json, non_json
from ledger.timestamps import TS, normalize_ts

MAX_SEQ = MAX_INTEGER  # a bigint in both backends

TraceId = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f\x7f-\x9f]{1,200}$")]
Tenant = Annotated[str, StringConstraints(min_length=1, max_length=100)]
WriteScope = Annotated[str, StringConstraints(pattern=r"^memory/.+$")]
MemoryHash = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
EventType = Annotated[str, StringConstraints(min_length=1)]
AgentName = Annotated[str, StringConstraints(min_length=1)]
Timestamp = Annotated[str, StringConstraints(pattern=r"^" + TS.pattern + r"$")]


class EventEnvelope(BaseModel):
    """The fields every event carries (section 1 of the contract)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    trace_id: TraceId
    seq: int = Field(ge=1, le=MAX_SEQ)
    event: EventType
    ts: Timestamp
    tenant: Tenant = DEFAULT_TENANT
    agent_owner: AgentName
    executed_by: AgentName
    write_scope: WriteScope | None = None
    memory_hash: MemoryHash | None = None
    payload: dict[str, Any]


class TraceEvent(NamedTuple):
    """One validated event, defaults filled in; ``payload`` is kept verbatim.

    A named tuple rather than a frozen dataclass: ingest makes one per line, and a
    tuple is built several times faster.
    """

    tenant: str
    trace_id: str
    seq: int
    event: str
    ts: str
    agent_owner: str
    executed_by: str
    write_scope: str
    memory_hash: str | None
    payload: dict[str, Any]
    ts_utc: str  # ``ts`` normalised to UTC (``...ffffffZ``), so strings compare as instants
    wire_json: bytes  # ``chain.encode(self.record())``: what the stored record is built from

    def record(self) -> dict[str, Any]:
        """The event as a plain dict in wire shape, the unit of duplicate detection."""
        return dict(zip(WIRE_FIELDS, self, strict=False))


WIRE_FIELDS = TraceEvent._fields[:10]  # the wire shape: the fields up to ``payload``, in order


def parse_line(raw: bytes) -> TraceEvent:
    """Decode and validate one JSONL line (without its newline)."""
    return validate_line(raw, decode_json(raw))


def validate_line(raw: bytes, obj: Any) -> TraceEvent:
    """:func:`validate_event` of ``obj``, what ``raw`` decodes to, and the checks on
    its text (:func:`ledger.strict_json.check_text`: no key twice in one object, no
    NUL character)."""
    event = validate_event(obj)
    check_text(raw, obj, event)
    return event


def parse_event(obj: Any) -> TraceEvent:
    """Validate a Python object (the API's input) against the contract.

    The object must be JSON (no NaN, infinities, non-JSON types, NUL characters or lone
    surrogates); it is copied, so later changes to the caller's dicts do not reach the
    event. A lone surrogate is looked for only once the event's encoding meets one:
    every string of the event is encoded, and looking first cost ~30% of this check.
    """
    problem = non_json(obj, "", surrogates=False)
    if problem is None:
        copied = json.loads(json.dumps(obj))
        try:
            return validate_event(copied)
        except UnicodeEncodeError:  # no UTF-8 holds a lone surrogate
            problem = non_json(copied, "") or ("", SURROGATE_REASON)
    path, reason = problem
    raise ValidationError(reason, field=path or None)


def validate_event(obj: Any) -> TraceEvent:
    """Validate an object freshly decoded from JSON (no copy is made)."""
    if not isinstance(obj, dict):
        raise ValidationError(f"expected a JSON object, got {_json_type(obj)}")
    event: str = obj.get("event")  # type: ignore[assignment]  # a string, once validated
    quick = payload_check(event)
    if quick is None or not _quick_envelope(obj) or not quick(obj["payload"]):
        _validate_with_models(obj)  # raises what the models refuse; else it was valid
    payload, owner, write_scope = obj["payload"], obj["agent_owner"], obj.get("write_scope")
    ts = obj["ts"]
    ts_utc = _checked_timestamp(ts)
    if event == "CALLBACK_MEMORY_WRITE":
        if write_scope is None:
            raise ValidationError("required for CALLBACK_MEMORY_WRITE", field="write_scope")
        canonicalize(payload["key"], path="payload.key")
        if "value" in payload:
            canonicalize(payload["value"], path="payload.value")
    wire = (obj.get("tenant", DEFAULT_TENANT), obj["trace_id"], obj["seq"], event, ts, owner,
            obj["executed_by"], write_scope or f"memory/{owner}", obj.get("memory_hash"),
            payload)
    stored = encode(dict(zip(WIRE_FIELDS, wire, strict=True)), max_nesting=MAX_NESTING)
    if len(stored) > chain.MAX_EVENT_BYTES:
        raise ValidationError(too_large("event is", len(stored)))
    return TraceEvent(*wire, ts_utc, stored)


def too_large(what: str, size: int) -> str:
    """The reason for refusing an event or a line of ``size`` bytes."""
    return f"{what} {size:,} bytes, more than the {chain.MAX_EVENT_BYTES:,} an event may take"


def payload_check(event: Any) -> Callable[[Any], bool] | None:
    """The quick check of an event type's payload (:mod:`ledger.quick_check`): True only
    for a payload its model surely accepts. None for a ``CALLBACK_*`` subtype the
    contract does not name, or anything but a known event type."""
    return _QUICK_PAYLOADS.get(event) if type(event) is str else None


def _validate_with_models(obj: dict[str, Any]) -> None:
    """Validate with the pydantic models, raising the first problem they find."""
    try:
        env = _validate_envelope(obj)
    except pydantic.ValidationError as exc:
        raise translated(exc, prefix="") from None
    model = payload_model(env.event)
    if model is None:
        raise ValidationError(f"unknown event type {env.event!r}", field="event")
    try:
        model.__pydantic_validator__.validate_python(env.payload)  # model_validate, unwrapped
    except pydantic.ValidationError as exc:
        raise translated(exc, prefix="payload") from None


_validate_envelope = EventEnvelope.__pydantic_validator__.validate_python  # unwrapped
_quick_envelope = quick_check(EventEnvelope) or (lambda obj: False)
_QUICK_PAYLOADS = {event: check for event, model in PAYLOAD_MODELS.items()
                   if (check := quick_check(model, MODEL_RULES)) is not None}


def _checked_timestamp(ts: str) -> str:
    try:
        return normalize_ts(ts)
    except ValueError as exc:
        raise ValidationError(f"not a valid RFC 3339 timestamp ({exc})", field="ts") from None


def translated(exc: pydantic.ValidationError, *, prefix: str) -> ValidationError:
    """The first pydantic error as a ValidationError with a dotted field path."""
    err = exc.errors(include_url=False)[0]
    parts = [prefix] if prefix else []
    for loc in err["loc"]:
        if loc in _UNION_TAGS:  # pydantic names the union member it tried: not a field
            continue
        if isinstance(loc, int):
            parts[-1:] = [f"{parts[-1]}[{loc}]" if parts else f"[{loc}]"]
        else:
            parts.append(str(loc))
    field = ".".join(parts) or None
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        msg = "unknown envelope field (event-specific data belongs in payload)"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind in ("string_pattern_mismatch", "string_too_short"):
        msg = _PATTERN_HINTS.get(field or "", msg)
    return ValidationError(msg, field=field)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict[str,any]", "list[any]"})

_PATTERN_HINTS = {
    "trace_id": "must be 1-200 characters with no whitespace or control characters",
    "ts": "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-20T10:00:00.123Z",
    "agent_owner": "must not be empty",
    "executed_by": "must not be empty",
    "write_scope": "must look like memory/<agent>",
    "memory_hash": "must be sha256: followed by 64 lowercase hex digits",
}


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    return "a number"
