"""Pydantic models of every event payload in the trace-event contract (v1).

One frozen, strict model per event type. Unknown extra fields are allowed (they are
kept verbatim in the stored record; the models only check what the contract
requires). ``PAYLOAD_MODELS`` maps each event type to its model;
``CALLBACK_*`` subtypes the contract does not name use :class:`FreePayload`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(strict=True, extra="allow", frozen=True)
MAX_INTEGER = 2**63 - 1
"""The largest ``seq`` or ``attempt``: what both backends' integer columns hold. An
attempt beyond it stopped every projection of a store at its event (the views keep
attempts as integers); the contract takes integers of any size elsewhere."""

JSONObject = dict[str, Any]


class Payload(BaseModel):
    """Base of all payloads: strict types, extra fields allowed and kept."""

    model_config = _STRICT


class FreePayload(Payload):
    """Any object (EXEC_NEXT, EXEC_LOOP and unknown CALLBACK_* subtypes)."""


class ExecStart(Payload):
    context_id: str | None = None


class Action(Payload):
    tool: str
    args: JSONObject


class ReasonerAction(Payload):
    action: Action
    strategy: Literal["serial", "parallel", "fallback"] | None = None
    intent: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)


class ToolExec(Payload):
    tool: str
    args: JSONObject
    success: bool
    output: Any = None
    error_reason: str | None = None
    error_class: Literal["terminal", "retryable", "replaceable"] | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    attempt: int = Field(default=1, ge=1, le=MAX_INTEGER)


class ToolFail(Payload):
    tool: str
    reason: str


class CallbackResult(Payload):
    tool: str
    status: Literal["success", "failed"]
    reason: str | None = None
    metadata: Any = None


class ResolvedPolicy(Payload):
    write_memory: bool
    record_trace: bool
    fallback_required: bool
    trigger_next: bool


class CallbackPolicyResolved(Payload):
    policy: ResolvedPolicy
    rule: str | None = None


class CallbackMemoryWrite(Payload):
    """Sets ``key`` to ``value``, or removes it with ``op: "delete"`` (exactly one)."""

    key: str
    op: Literal["delete"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _value_xor_delete(cls, data: Any) -> Any:
        if isinstance(data, dict):
            problem = memory_write_problem(data)
            if problem is not None:
                raise ValueError(problem)
        return data


def memory_write_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a memory write's payload having ``value`` and ``op`` as it
    does, or None (:class:`CallbackMemoryWrite`'s validator)."""
    has_value = "value" in payload
    if has_value and payload.get("op") == "delete":
        return "give either 'value' or 'op: \"delete\"', not both"
    if not has_value and payload.get("op") is None:
        return "needs 'value' (to set the key) or 'op: \"delete\"'"
    return None


class CallbackFallback(Payload):
    original_tool: str
    fallback_tool: str


class CallbackRetry(Payload):
    tool: str
    attempt: int = Field(ge=2, le=MAX_INTEGER)


class CallbackNextAction(Payload):
    next_action: JSONObject


class CallbackPermission(Payload):
    source_agent: str
    executing_agent: str
    scope: str
    granted: bool


class CallbackSuccess(Payload):
    next: bool | None = None


class CallbackFail(Payload):
    reason: str


class ExecFail(Payload):
    error_code: str | int
    reason: str


class ExecTerminated(Payload):
    reason: str
    error_code: str | int | None = None


PAYLOAD_MODELS: dict[str, type[Payload]] = {
    "EXEC_START": ExecStart,
    "REASONER_ACTION": ReasonerAction,
    "TOOL_EXEC": ToolExec,
    "TOOL_FAIL": ToolFail,
    "CALLBACK_RESULT": CallbackResult,
    "CALLBACK_POLICY_RESOLVED": CallbackPolicyResolved,
    "CALLBACK_MEMORY_WRITE": CallbackMemoryWrite,
    "CALLBACK_FALLBACK": CallbackFallback,
    "CALLBACK_RETRY": CallbackRetry,
    "CALLBACK_NEXT_ACTION": CallbackNextAction,
    "CALLBACK_PERMISSION": CallbackPermission,
    "CALLBACK_SUCCESS": CallbackSuccess,
    "CALLBACK_FAIL": CallbackFail,
    "EXEC_NEXT": FreePayload,
    "EXEC_LOOP": FreePayload,
    "EXEC_FAIL": ExecFail,
    "EXEC_TERMINATED": ExecTerminated,
}

MODEL_RULES: dict[type[BaseModel], Callable[[Any], bool]] = {
    CallbackMemoryWrite: lambda payload: memory_write_problem(payload) is None,
}
"""For each model with a model validator, a plain check that passes where it does:
what :mod:`ledger.quick_check` needs to check the model without pydantic."""

KNOWN_EVENTS = frozenset(PAYLOAD_MODELS)
_CALLBACK_SUBTYPE = re.compile(r"CALLBACK_[A-Z0-9_]+")


def payload_model(event: str) -> type[Payload] | None:
    """The payload model for an event type, or ``None`` if the type is not allowed."""
    model = PAYLOAD_MODELS.get(event)
    if model is None and _CALLBACK_SUBTYPE.fullmatch(event):
        return FreePayload
    return model


def is_unknown_callback(event: str) -> bool:
    """True for a ``CALLBACK_*`` subtype the contract does not name (forward compatible)."""
    return event not in PAYLOAD_MODELS and _CALLBACK_SUBTYPE.fullmatch(event) is not None


def is_failure_point(event: str, payload: dict[str, Any]) -> bool:
    """Whether an event records a failure (the contract's definition of a failure point)."""
    if event in ("TOOL_FAIL", "CALLBACK_FAIL", "EXEC_FAIL", "EXEC_TERMINATED"):
        return True
    if event == "TOOL_EXEC":
        return payload.get("success") is False
    if event == "CALLBACK_RESULT":
        return payload.get("status") == "failed"
    return False
