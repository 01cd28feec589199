"""What a stored record must hold to be read: the fields and types its readers use.

Verify proves a record unaltered; every other reader (the views, ``trace show``,
replay, the appender folding a trace's memory, grants) takes a record as the ledger
wrote it, and tripped on one altered into valid JSON of another shape: a ``null``
event, a list for a payload, an attempt beyond 64 bits. Such a record is as
unreadable as one whose bytes are not JSON: :func:`decode` raises ValueError for it,
naming what is wrong, and the reader sets it aside or names it (docs/VERIFY.md,
"Altered records and the other commands").

A trace event's record must have every field the ledger writes, of the contract's
types and ranges, a payload its event type's model accepts, a timestamp, and for a
memory write a value JCS can hash. Whether identifiers and hashes have the contract's
form is left to verify, whose chain hash covers every byte: readers only need the
types, and a pattern per field cost more than the rest of the check. Findings and
grants are checked against their own models below. Records are checked quickly
(:mod:`ledger.quick_check`) where that is sure, by the models otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ledger import chain
from ledger.canonical import canonicalize
from ledger.chain import MAX_NESTING, may_hold_big_int
from ledger.errors import UnreadableRecordError, ValidationError
from ledger.events import payload_check, translated
from ledger.payloads import MAX_INTEGER, payload_model
from ledger.quick_check import quick_check
from ledger.strict_json import non_json
from ledger.timestamps import stored_ts_utc

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
Version = Literal[1]  # chain.RECORD_VERSION
Name = Annotated[str, StringConstraints(min_length=1)]
LINK_KIND = "replay_link"  # a replay stream's first record: its link to what it forked


def _instant(value: str) -> str:
    if stored_ts_utc(value) is None:
        raise ValueError("not a valid RFC 3339 timestamp")
    return value


Instant = Annotated[str, AfterValidator(_instant)]  # what the views normalise to UTC


class StoredEvent(BaseModel):
    """A trace event's record (``chain.event_record``): the event with its defaults
    filled in, and the ledger's fields."""

    model_config = _STRICT
    v: Version
    tenant: str
    trace_id: str
    seq: int = Field(ge=1, le=MAX_INTEGER)
    event: str
    ts: str
    agent_owner: str
    executed_by: str
    write_scope: str
    memory_hash: str | None
    payload: dict[str, Any]
    ledger_memory_hash: str
    prev_hash: str


class StoredFinding(BaseModel):
    """An integrity finding's record (``ledger.appender``)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    v: Version
    tenant: str
    finding: Name
    trace_id: str | None = None
    seq: int | None = Field(default=None, ge=1, le=MAX_INTEGER)
    detail: str | None = None
    recorded_at: Instant
    prev_hash: str


class GrantAdded(BaseModel):
    """A grant's record (``ledger.grants.add_grant``)."""

    model_config = _STRICT
    v: Version
    action: Literal["add"]
    grant_id: Name
    tenant: str
    agent: Name
    scope: Name  # memory/<agent>, which a grant's may say across lines
    valid_from: Instant
    valid_until: Instant | None
    by: Name
    reason: str | None
    recorded_at: Instant
    prev_hash: str


class GrantRevoked(BaseModel):
    """A revocation's record (``ledger.grants.revoke_grant``)."""

    model_config = _STRICT
    v: Version
    action: Literal["revoke"]
    grant_id: Name
    tenant: str
    at: Instant
    by: Name
    reason: str | None
    recorded_at: Instant
    prev_hash: str


class ReplayLink(BaseModel):
    """A stored replay's first record (``ledger.replays``): what it forked, how, and why."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    v: Version
    kind: Literal["replay_link"]  # LINK_KIND
    tenant: str
    source_trace_id: str
    fork_seq: int = Field(ge=1, le=MAX_INTEGER)
    replay_trace_id: str
    recorded_at: Instant
    prev_hash: str
    # what write_replay's caller may leave out (the replayer gives them all)
    source_prev_hash: str | None = None
    policy_digest: str | None = None
    policy: str | None = None
    outcome_sources: list[str] | None = None
    by: str | None = None
    reason: str | None = None
    replay_status: str | None = None
    original_status: str | None = None
    agent_owner: str | None = None


_quick_stored_event = quick_check(StoredEvent) or (lambda record: False)
_validate_stored_event = StoredEvent.__pydantic_validator__.validate_python
_OTHERS = {
    chain.FINDING_TOPIC: (StoredFinding,),
    chain.GRANT_TOPIC: (GrantAdded, GrantRevoked),
    chain.REPLAY_TOPIC: (ReplayLink,),
}


def decode(state: bytes | None, topic: str = chain.EVENT_TOPIC) -> dict[str, Any]:
    """:func:`ledger.chain.decode`, and ValueError for a record its readers cannot take
    as one of ``topic`` (:func:`record_problem`; the reason names the field)."""
    quick = surely_readable(state, topic)
    if quick is not None:
        return quick
    record = chain.decode(state)
    problem = record_problem(record, topic)
    if problem is not None:
        raise ValueError(problem)
    return record


def decode_stored(state: bytes | None, *, tenant: str, name: str, seq: int,
                  topic: str = chain.EVENT_TOPIC) -> dict[str, Any]:
    """:func:`decode` for a reader of one stream: an unreadable record, or one that
    names another tenant, trace or seq than where it is stored, is an
    :class:`~ledger.errors.UnreadableRecordError` naming tenant, stream name and seq."""
    try:
        record = decode(state, topic)
    except ValueError as exc:
        raise UnreadableRecordError(tenant, name, seq, str(exc)) from None
    where: tuple[Any, ...] = (tenant,)
    if topic == chain.EVENT_TOPIC:
        where = (tenant, name, seq)
    elif _is_event(record, topic):
        where = (tenant, name)  # a replayed event: its seq follows the fork, not the stream
    if _identity(record)[:len(where)] != where:
        raise UnreadableRecordError(tenant, name, seq, misplaced(record, topic))
    return record


def misplaced(record: dict[str, Any], topic: str) -> str:
    """Why a record that names another stream than where it is stored is unreadable."""
    names = ("tenant", "trace", "seq") if _is_event(record, topic) else ("tenant",)
    said = ", ".join(f"{k} {v!r}" for k, v in zip(names, _identity(record), strict=False))
    return f"it names {said}: not where it is stored"


def _is_event(record: dict[str, Any], topic: str) -> bool:
    """Whether a record is a trace event's: one of a trace, or a replayed event (a
    replay stream's records but its link)."""
    return topic == chain.EVENT_TOPIC or (
        topic == chain.REPLAY_TOPIC and record.get("kind") != LINK_KIND)


def _identity(record: dict[str, Any]) -> tuple[Any, Any, Any]:
    return record.get("tenant"), record.get("trace_id"), record.get("seq")


def record_problem(record: dict[str, Any], topic: str) -> str | None:
    """What makes a decoded ``record`` one its readers cannot take as a record of
    ``topic``, or None. Topics without a model here are only checked for values no
    store holds (infinities, lone surrogates, NUL characters)."""
    if _is_event(record, topic):
        problem = _event_problem(record)
    else:
        problem = None
        for model in _OTHERS.get(topic, ()):
            try:
                model.__pydantic_validator__.validate_python(record)
            except pydantic.ValidationError as exc:
                problem = problem or f"not a record of its kind: {translated(exc, prefix='')}"
                continue
            problem = None
            break
    if problem is None and (found := non_json(record, "")) is not None:
        path, reason = found
        problem = f"{path}: {reason}" if path else reason
    return problem


def surely_readable(state: bytes | None, topic: str) -> dict[str, Any] | None:
    """The record, if ``state`` surely decodes to one :func:`decode` would return (a
    trace event, decoded by orjson); else None, and :func:`decode` decides. About two
    microseconds."""
    if topic != chain.EVENT_TOPIC or type(state) is not bytes or may_hold_big_int(state):
        return None
    try:
        record = orjson.loads(state)
    except orjson.JSONDecodeError:
        return None
    return record if type(record) is dict and _surely_event(record, state) else None


def _surely_event(record: dict[str, Any], state: bytes) -> bool:
    """True only for a record :func:`_event_problem` and ``non_json`` find nothing
    wrong with, decoded by orjson (which reads no infinity or lone surrogate). A memory
    write passes only with no run of 16 digits (an integer I-JSON may not hold)."""
    if not _quick_stored_event(record):
        return False
    event = record["event"]
    payload_ok = payload_check(event)
    return (payload_ok is not None and payload_ok(record["payload"])
            and stored_ts_utc(record["ts"]) is not None
            and b"\\u0000" not in state and _shallow(state)
            and (event != "CALLBACK_MEMORY_WRITE" or _IJSON_RUN not in state.translate(_DIGITS)))


_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_IJSON_RUN = b"0" * 16  # no integer of fewer digits lies beyond I-JSON's 2^53 - 1


def _shallow(state: bytes) -> bool:
    """Whether a record surely nests no deeper than ``MAX_NESTING`` (each level takes
    two bytes at least; counting brackets costs half a microsecond)."""
    return (len(state) - _RECORD_TEXT <= 2 * MAX_NESTING
            or state.count(b"[") + state.count(b"{") <= MAX_NESTING)


_RECORD_TEXT = 150  # the fewest bytes the names and punctuation of a record's fields take


def _event_problem(record: dict[str, Any]) -> str | None:
    try:
        _validate_stored_event(record)
    except pydantic.ValidationError as exc:
        return f"not an event of the contract: {translated(exc, prefix='')}"
    model = payload_model(record["event"])
    if model is None:
        return f"not an event of the contract: event: unknown event type {record['event']!r}"
    try:
        model.__pydantic_validator__.validate_python(record["payload"])
    except pydantic.ValidationError as exc:
        return f"not an event of the contract: {translated(exc, prefix='payload')}"
    if stored_ts_utc(record["ts"]) is None:
        return "not an event of the contract: ts: not a valid RFC 3339 timestamp"
    try:
        if record["event"] == "CALLBACK_MEMORY_WRITE":
            canonicalize(record["payload"]["key"], path="payload.key")
            if "value" in record["payload"]:
                canonicalize(record["payload"]["value"], path="payload.value")
        if chain.nesting(record) > MAX_NESTING:
            raise ValidationError(f"nested too deeply: more than {MAX_NESTING} levels")
    except ValidationError as exc:
        return f"not an event of the contract: {exc}"
    return None
