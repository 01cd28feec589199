"""An agent runtime, simulated from docs/REPLAY.md alone: the events a runtime emits.

Given a policy (a plain dict in the documented schema), a plan (steps: agent, tool,
args, confidence), the outcome of every call and some carried events, each anchored
to the control event it precedes, :func:`simulate` emits exactly the chain of "The
control chain" section, numbered from seq 1 with increasing timestamps, every event
carrying the memory hash a runtime would claim (its write scope's memory after it).
The decision procedure is the "Policy" section's. Nothing here imports ``replay``:
the replay determinism property checks the engine against this reading of the doc.

Readings of points the doc leaves open (each is marked READING below): a rule
decides only what it names, else the default decision and its name apply; the
fallback alternatives are the step's action tool's list, walked in order, skipping
tools tried in the step; an absent ``error_class`` matches no class and is retried;
a step without confidence matches no ``confidence_*`` condition; the default key
template is ``{tool}_result``; a control step (``max_steps``) is one tool call.
Where the doc gives no answer at all the run raises :class:`Undocumented` rather
than invent one (callers skip such examples): a fallback tool with alternatives of
its own fails, a rule falls back with no alternative left, a success has no output,
a termination has no error reason, ``max_steps`` is reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.memory import memory_hash

Event = dict[str, Any]
Outcome = dict[str, Any]  # {"success", "output"?, "error_reason"?, "error_class"?, "latency_ms"?}
OutcomeFor = Callable[[int, str, int], Outcome]  # (step, 1-based; tool; attempt) -> outcome

CONTROL_EVENTS = ("REASONER_ACTION", "TOOL_EXEC", "CALLBACK_RESULT", "CALLBACK_RETRY",
                  "CALLBACK_POLICY_RESOLVED", "CALLBACK_FALLBACK", "EXEC_TERMINATED",
                  "CALLBACK_MEMORY_WRITE", "CALLBACK_SUCCESS")
OUTCOME_FIELDS = ("output", "error_reason", "error_class", "latency_ms")
START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


class Undocumented(Exception):
    """The run reached a point docs/REPLAY.md does not decide (the message says which)."""


@dataclass(frozen=True)
class Step:
    """One planned step: ``agent`` calls ``tool`` with ``args``; ``extra`` are further
    ``REASONER_ACTION`` payload fields (``intent``, ``strategy``) kept as recorded."""

    agent: str
    tool: str
    args: dict[str, Any]
    confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Carried:
    """A carried event, emitted just before the control event ``anchor`` =
    (step, event type, occurrence of that type in the step), or at the end of a run
    that did not terminate when ``anchor`` is None. Never emitted if its anchor is not."""

    anchor: tuple[int, str, int] | None
    event: str
    payload: dict[str, Any]
    executed_by: str
    write_scope: str | None = None  # default memory/<agent_owner>


@dataclass(frozen=True)
class Situation:
    """What the policy's conditions look at."""

    tool: str
    action_tool: str
    agent: str
    success: bool
    error_class: str | None
    attempt: int
    confidence: float | None


@dataclass
class Run:
    """A simulated trace: its events in wire form and how it ended."""

    events: list[Event]
    terminated: bool
    calls: int


# -- the policy --------------------------------------------------------------------------

def _retry(policy: Mapping[str, Any]) -> Mapping[str, Any]:
    return policy.get("retry") or {}


def max_attempts(policy: Mapping[str, Any], tool: str) -> int:
    retry = _retry(policy)
    return int((retry.get("per_tool") or {}).get(tool, retry.get("max_attempts", 1)))


def never_retry(policy: Mapping[str, Any]) -> list[str]:
    return list(_retry(policy).get("never_retry", ["terminal"]))


def _holds(when: Mapping[str, Any], s: Situation) -> bool:
    for name, want in when.items():
        if name in ("tool", "action_tool", "agent", "success", "error_class"):
            if getattr(s, name) != want:  # READING: an absent error_class matches no class
                return False
        elif name == "attempt_gte":
            if s.attempt < want:
                return False
        elif name in ("confidence_lt", "confidence_gte"):
            if s.confidence is None:  # READING: no confidence matches neither bound
                return False
            if (s.confidence >= want) if name == "confidence_lt" else (s.confidence < want):
                return False
        else:
            raise ValueError(f"unknown condition {name!r}")
    return True


def matching_rule(policy: Mapping[str, Any], s: Situation) -> Mapping[str, Any] | None:
    """The first rule whose ``when`` holds (first match wins), or None."""
    rules: list[Mapping[str, Any]] = policy.get("rules") or []
    return next((rule for rule in rules if _holds(rule.get("when") or {}, s)), None)


def decide_failure(policy: Mapping[str, Any], s: Situation,
                   tried: Sequence[str]) -> tuple[str, str, str | None]:
    """(``retry`` | ``fallback`` | ``terminate``, the deciding rule's name, fallback tool)."""

    def alternatives(listed: Sequence[str] | None = None) -> list[str]:
        fallback = policy.get("fallback") or {}
        if listed is None:
            if s.tool != s.action_tool and s.tool in fallback:
                raise Undocumented(f"a fallback tool ({s.tool}) failed and has alternatives "
                                   f"of its own: are they tried, and before or after "
                                   f"{s.action_tool}'s?")
            listed = fallback.get(s.action_tool, [])  # READING: the step's ordered list
        return [t for t in listed if t not in tried]

    rule = matching_rule(policy, s) or {}
    then, name = rule.get("then") or {}, str(rule.get("name"))
    if then.get("retry"):
        return "retry", name, None
    if then.get("fallback"):
        chosen = then["fallback"]
        left = alternatives(chosen if isinstance(chosen, list) else None)
        if not left:
            raise Undocumented("a rule falls back but no alternative is left")
        return "fallback", name, left[0]
    if then.get("terminate"):
        return "terminate", name, None
    # READING: a rule naming none of the three does not decide a failure.
    if s.attempt < max_attempts(policy, s.tool) and s.error_class not in never_retry(policy):
        return "retry", "retry", None
    left = alternatives()
    if left:
        return "fallback", "fallback", left[0]
    return "terminate", "terminate", None


def decide_success(policy: Mapping[str, Any], s: Situation) -> tuple[bool, str]:
    """(write memory?, the deciding rule's name)."""
    rule = matching_rule(policy, s)
    if rule is not None and "write_memory" in (rule.get("then") or {}):
        return bool(rule["then"]["write_memory"]), rule["name"]
    write = bool((policy.get("memory") or {}).get("write_on_success", True))
    return write, "write_memory" if write else "no_memory_write"


def memory_key(policy: Mapping[str, Any], *, tool: str, action_tool: str, agent: str) -> str:
    template = (policy.get("memory") or {}).get("key", "{tool}_result")  # READING: default
    return str(template).format(tool=tool, action_tool=action_tool, agent=agent)


def resolved(*, write_memory: bool, fallback_required: bool, trigger_next: bool,
             rule: str) -> dict[str, Any]:
    """The payload of a ``CALLBACK_POLICY_RESOLVED``."""
    return {"policy": {"write_memory": write_memory, "record_trace": True,
                       "fallback_required": fallback_required, "trigger_next": trigger_next},
            "rule": rule}


# -- the runtime -------------------------------------------------------------------------

class _Emitter:
    def __init__(self, *, tenant: str, trace_id: str, agent_owner: str, start: datetime,
                 carried: Iterable[Carried]) -> None:
        self.tenant, self.trace_id, self.owner = tenant, trace_id, agent_owner
        self.start = start
        self.events: list[Event] = []
        self.memory: dict[str, dict[str, Any]] = {}
        self.carried: dict[tuple[int, str, int] | None, list[Carried]] = {}
        for c in carried:
            self.carried.setdefault(c.anchor, []).append(c)
        self.step = 0
        self.seen: dict[str, int] = {}
        self.calls = 0

    def emit(self, event: str, payload: dict[str, Any], *, by: str,
             scope: str | None = None) -> None:
        scope = scope or "memory/" + self.owner
        state = self.memory.setdefault(scope, {})
        if event == "CALLBACK_MEMORY_WRITE":
            if payload.get("op") == "delete":
                state.pop(payload["key"], None)
            else:
                state[payload["key"]] = payload["value"]
        seq = len(self.events) + 1
        ts = self.start + timedelta(milliseconds=250 * seq)
        self.events.append({
            "trace_id": self.trace_id, "seq": seq, "event": event,
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "tenant": self.tenant, "agent_owner": self.owner, "executed_by": by,
            "write_scope": scope, "memory_hash": memory_hash(state), "payload": payload,
        })

    def emit_carried(self, anchor: tuple[int, str, int] | None) -> None:
        for c in self.carried.get(anchor, []):
            self.emit(c.event, dict(c.payload), by=c.executed_by, scope=c.write_scope)

    def begin_step(self) -> None:
        self.step += 1
        self.seen = {}

    def control(self, event: str, payload: dict[str, Any], *, by: str,
                scope: str | None = None) -> None:
        assert event in CONTROL_EVENTS, event
        self.seen[event] = self.seen.get(event, 0) + 1
        self.emit_carried((self.step, event, self.seen[event]))
        self.emit(event, payload, by=by, scope=scope)


def simulate(policy: Mapping[str, Any], plan: Sequence[Step], outcome_for: OutcomeFor, *,
             carried: Iterable[Carried] = (), tenant: str = "default", trace_id: str = "t",
             agent_owner: str = "planner", start: datetime = START) -> Run:
    """The events a runtime following ``policy`` emits for ``plan`` (see the module doc)."""
    out = _Emitter(tenant=tenant, trace_id=trace_id, agent_owner=agent_owner, start=start,
                   carried=carried)
    for k, step in enumerate(plan, start=1):
        out.begin_step()
        if not _run_step(out, policy, step, outcome_for, k, has_next=k < len(plan)):
            return Run(out.events, True, out.calls)
    out.emit_carried(None)
    return Run(out.events, False, out.calls)


def _run_step(out: _Emitter, policy: Mapping[str, Any], step: Step, outcome_for: OutcomeFor,
              k: int, *, has_next: bool) -> bool:
    """Emit step ``k``; return False when it terminated the chain."""
    x = step.agent
    action: dict[str, Any] = {"action": {"tool": step.tool, "args": step.args}, **step.extra}
    if step.confidence is not None:
        action["confidence"] = step.confidence
    out.control("REASONER_ACTION", action, by=x)
    tool, attempt, tried = step.tool, 1, [step.tool]
    max_steps = int(policy.get("max_steps", 200))
    while True:
        if out.calls >= max_steps:  # READING: a control step is one call and its decision
            raise Undocumented(f"max_steps ({max_steps}) reached: the doc names no event "
                               "(nor whether EXEC_TERMINATED is emitted)")
        out.calls += 1
        outcome = outcome_for(k, tool, attempt)
        ok = bool(outcome["success"])
        call: dict[str, Any] = {"tool": tool, "args": step.args, "success": ok,
                                "attempt": attempt}
        call.update({f: outcome[f] for f in OUTCOME_FIELDS if f in outcome})
        out.control("TOOL_EXEC", call, by=x)
        result: dict[str, Any] = {"tool": tool, "status": "success" if ok else "failed"}
        if not ok and "error_reason" in outcome:
            result["reason"] = outcome["error_reason"]
        out.control("CALLBACK_RESULT", result, by=x)
        s = Situation(tool, step.tool, x, ok, outcome.get("error_class"), attempt,
                      step.confidence)
        if ok:
            if "output" not in outcome:
                raise Undocumented("a success without output: is the memory value null?")
            write, rule = decide_success(policy, s)
            out.control("CALLBACK_POLICY_RESOLVED", resolved(
                write_memory=write, fallback_required=False, trigger_next=has_next, rule=rule),
                by=x)
            if write:
                key = memory_key(policy, tool=tool, action_tool=step.tool, agent=x)
                out.control("CALLBACK_MEMORY_WRITE", {"key": key, "value": outcome.get("output")},
                            by=x, scope="memory/" + x)
            out.control("CALLBACK_SUCCESS", {"next": has_next}, by=x)
            return True
        decision, rule, fallback = decide_failure(policy, s, tried)
        if decision == "retry":
            attempt += 1
            out.control("CALLBACK_RETRY", {"tool": tool, "attempt": attempt}, by=x)
            continue
        if decision == "fallback":
            assert fallback is not None
            out.control("CALLBACK_POLICY_RESOLVED", resolved(
                write_memory=False, fallback_required=True, trigger_next=False, rule=rule), by=x)
            out.control("CALLBACK_FALLBACK", {"original_tool": tool, "fallback_tool": fallback},
                        by=x)
            tried.append(fallback)
            tool, attempt = fallback, 1
            continue
        out.control("CALLBACK_POLICY_RESOLVED", resolved(
            write_memory=False, fallback_required=False, trigger_next=False, rule=rule), by=x)
        if "error_reason" not in outcome:
            raise Undocumented('terminating without error_reason: "<tool>: <error_reason>"?')
        out.control("EXEC_TERMINATED", {"reason": f"{tool}: {outcome['error_reason']}"},
                    by="system")
        return False


def scripted(table: Mapping[tuple[int, str], Sequence[Outcome]],
             default: Outcome | None = None) -> OutcomeFor:
    """Outcomes by (step, tool), one per attempt; ``default`` (else a success) after."""
    def outcome_for(step: int, tool: str, attempt: int) -> Outcome:
        outcomes = table.get((step, tool), ())
        if attempt <= len(outcomes):
            return dict(outcomes[attempt - 1])
        return dict(default or {"success": True, "output": {"tool": tool, "step": step}})
    return outcome_for
