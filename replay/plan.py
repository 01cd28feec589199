"""Reading a recorded trace as a plan: its steps, carried events and tool outcomes.

A step starts at a ``REASONER_ACTION``. Control events follow the grammar in
docs/REPLAY.md; every other event is *carried*: anchored to the control event that
follows it in the source (step, that event's type, its occurrence in the step), so
a replay can re-emit it at the same place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.payloads import is_failure_point

CONTROL = frozenset({
    "REASONER_ACTION", "TOOL_EXEC", "CALLBACK_RESULT", "CALLBACK_RETRY", "CALLBACK_FALLBACK",
    "CALLBACK_POLICY_RESOLVED", "CALLBACK_MEMORY_WRITE", "CALLBACK_SUCCESS", "EXEC_TERMINATED",
})
END = (-2, "END", 0)  # the anchor of carried events after the last control event

Anchor = tuple[int, str, int]  # (step, control event type, occurrence within the step)


@dataclass(frozen=True)
class Step:
    """One planned step: the reasoner's action and who acts."""

    index: int
    seq: int
    agent: str
    tool: str
    args: Any
    confidence: float | None
    payload: dict[str, Any]


@dataclass
class Plan:
    """A source trace as the replay engine sees it."""

    records: list[dict[str, Any]]  # wire form, seq order (index = seq - 1)
    steps: list[Step] = field(default_factory=list)
    step_of: list[int] = field(default_factory=list)  # per record: its step (-1 before any)
    anchors: list[Anchor | None] = field(default_factory=list)  # per record: carried anchor
    tool_execs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (step, payload)
    by_anchor: dict[Anchor, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def terminated(self) -> bool:
        return any(r["event"] == "EXEC_TERMINATED" for r in self.records)

    def carried(self, anchor: Anchor, after_seq: int) -> list[dict[str, Any]]:
        """Carried events anchored at ``anchor`` with seq >= ``after_seq``, in order."""
        return [r for r in self.by_anchor.get(anchor, ()) if r["seq"] >= after_seq]


def read_plan(records: list[dict[str, Any]]) -> Plan:
    """Index a source trace's records (wire dicts in seq order) as a plan."""
    plan = Plan(records=records)
    step = -1
    counts: dict[str, int] = {}
    pending: list[int] = []  # carried records waiting for the next control event
    for i, r in enumerate(records):
        event = r["event"]
        if event not in CONTROL:
            plan.step_of.append(step)
            plan.anchors.append(None)
            pending.append(i)
            continue
        if event == "REASONER_ACTION":
            step += 1
            counts = {}
            action = r["payload"].get("action") or {}
            confidence = r["payload"].get("confidence")
            plan.steps.append(Step(step, r["seq"], r["executed_by"], str(action.get("tool")),
                                   action.get("args"), confidence, r["payload"]))
        occurrence = counts.get(event, 0)
        counts[event] = occurrence + 1
        for j in pending:
            plan.anchors[j] = (step, event, occurrence)
        pending = []
        plan.step_of.append(step)
        plan.anchors.append(None)
        if event == "TOOL_EXEC":
            plan.tool_execs.append((step, r["payload"]))
    for j in pending:
        plan.anchors[j] = END
    for r, anchor in zip(records, plan.anchors, strict=True):
        if anchor is not None:
            plan.by_anchor.setdefault(anchor, []).append(r)
    return plan


def default_fork(records: list[dict[str, Any]]) -> int:
    """The first failure point of the last step of a terminated trace, else its last one.

    A trace without failure points forks at its last event.
    """
    failures = [int(r["seq"]) for r in records if is_failure_point(r["event"], r["payload"])]
    if not failures:
        return int(records[-1]["seq"]) if records else 1
    if any(r["event"] == "EXEC_TERMINATED" for r in records):
        actions = [int(r["seq"]) for r in records if r["event"] == "REASONER_ACTION"]
        start = max((s for s in actions if s < failures[-1]), default=0)
        return min(s for s in failures if s > start)
    return failures[-1]
