"""The replay engine: a state machine over the callback control chain.

It *observes* the source's prefix to learn where the chain stands (step, tool,
attempt, tools tried, last outcome, last recorded policy), then *drives* from the
fork: reasoner actions from the plan, tool outcomes from the outcome chain, every
callback decision from the policy, emitting the grammar of docs/REPLAY.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.errors import UnwritableReplayError, ValidationError
from ledger.memory import EMPTY_MEMORY_HASH, MemoryState, apply_write
from replay.outcomes import Call, Outcome, OutcomeChain
from replay.plan import CONTROL, END, Anchor, Plan, Step
from replay.policy import Policy

IDLE, CALL, RESULT, DECIDE, WRITTEN, DONE = "idle", "call", "result", "decide", "written", "done"


@dataclass
class ChainState:
    """Where the control chain stands."""

    step: int = -1
    phase: str = IDLE
    tool: str | None = None
    attempt: int = 1
    tried: set[str] = field(default_factory=set)
    outcome: dict[str, Any] | None = None  # the last TOOL_EXEC payload
    resolved: dict[str, Any] | None = None  # the policy object of a recorded POLICY_RESOLVED
    counts: dict[str, int] = field(default_factory=dict)  # control events so far in the step
    agent: str = "system"  # who ran the latest control event (for chains without a plan step)
    args: Any = None  # the args of the latest call
    unplanned: bool = False  # the step in progress began with a call, not a reasoner action


def observe(plan: Plan, fork_seq: int) -> ChainState:
    """The chain's state after the source's events before ``fork_seq``."""
    state = ChainState()
    for r in plan.records[:fork_seq - 1]:
        _advance(state, plan, r["event"], r["payload"], r["executed_by"])
    return state


def _advance(state: ChainState, plan: Plan, event: str, payload: dict[str, Any],
             agent: str) -> None:
    """Apply one control event (emitted or observed) to the state."""
    if event in CONTROL and event != "EXEC_TERMINATED":
        state.agent = agent
    if event == "REASONER_ACTION":
        state.step += 1
        step = plan.steps[state.step] if state.step < len(plan.steps) else None
        state.tool = step.tool if step else None
        state.attempt, state.phase, state.counts = 1, CALL, {}
        state.tried = {state.tool} if state.tool else set()
        state.outcome = state.resolved = None
        state.unplanned = False
    elif event == "TOOL_EXEC":
        if state.phase == IDLE:  # a call no reasoner action planned: a step of its own
            state.unplanned, state.tried = True, set()
        state.tool, state.attempt = payload.get("tool"), int(payload.get("attempt", 1))
        state.outcome, state.phase, state.resolved = payload, RESULT, None
        state.args = payload.get("args")
        if state.tool:
            state.tried.add(state.tool)
    elif event == "CALLBACK_RESULT":
        state.phase = DECIDE
    elif event == "CALLBACK_POLICY_RESOLVED":
        state.resolved = payload.get("policy")
    elif event == "CALLBACK_RETRY":
        state.tool, state.attempt, state.phase = payload.get("tool"), int(payload["attempt"]), CALL
    elif event == "CALLBACK_FALLBACK":
        state.tool, state.attempt, state.phase = payload.get("fallback_tool"), 1, CALL
        state.tried.add(str(state.tool))
    elif event == "CALLBACK_MEMORY_WRITE":
        state.phase = WRITTEN
    elif event == "CALLBACK_SUCCESS":
        state.phase, state.resolved = IDLE, None
    elif event == "EXEC_TERMINATED":
        state.phase = DONE
    else:
        return
    state.counts[event] = state.counts.get(event, 0) + 1


def _call_at_fork(state: ChainState, record: dict[str, Any]) -> None:
    """A fork at a TOOL_EXEC that no reasoner action planned (none before it, or the
    last step had ended): the replay makes that call again, as its step's plan."""
    if record["event"] != "TOOL_EXEC":
        return
    payload = record["payload"]
    state.tool, state.args, state.agent = payload.get("tool"), payload.get("args"), \
        record["executed_by"]
    state.attempt, state.phase, state.unplanned = int(payload.get("attempt", 1)), CALL, True
    state.tried = {str(state.tool)}
    state.outcome = state.resolved = None


@dataclass
class Emitted:
    """What a drive produced."""

    events: list[dict[str, Any]] = field(default_factory=list)  # wire form, no ts yet
    calls: list[dict[str, Any]] = field(default_factory=list)
    status: str = "completed"
    missing: dict[str, Any] | None = None  # the call no source could answer
    dropped: list[int] = field(default_factory=list)  # source seqs of carried events not emitted


class Engine:
    """Drives one replay from a fork."""

    def __init__(self, plan: Plan, policy: Policy, outcomes: OutcomeChain, *, tenant: str,
                 trace_id: str, agent_owner: str, memory: dict[str, dict[str, Any]]) -> None:
        self.plan, self.policy, self.outcomes = plan, policy, outcomes
        self.tenant, self.trace_id, self.owner = tenant, trace_id, agent_owner
        self.memory = {scope: MemoryState.from_dict(m) for scope, m in memory.items()}
        self.out = Emitted()
        self.seq = 0
        self.calls_made = 0
        self.emitted_carried: set[int] = set()

    def run(self, fork_seq: int) -> Emitted:
        state = observe(self.plan, fork_seq)
        if state.phase == IDLE and fork_seq <= len(self.plan.records):
            _call_at_fork(state, self.plan.records[fork_seq - 1])
        self.seq = fork_seq
        self.fork_seq = fork_seq
        while state.phase != DONE:
            if not self._tick(state):
                break
        if self.out.status != "needs_outcome":
            self._carry(END)
            if state.phase == DONE:
                self.out.status = "terminated"
        self.out.dropped = [r["seq"] for r, a in zip(self.plan.records, self.plan.anchors,
                                                     strict=True)
                            if a is not None and r["seq"] >= fork_seq
                            and r["seq"] not in self.emitted_carried]
        return self.out

    # -- one transition -------------------------------------------------------------------

    def _tick(self, state: ChainState) -> bool:
        """Emit what comes next; False when the replay is over."""
        steps = self.plan.steps
        if state.phase == IDLE:
            if state.step + 1 >= len(steps):
                return False
            step = steps[state.step + 1]
            self._emit(state, "REASONER_ACTION", step.agent, dict(step.payload))
        elif state.phase == CALL:
            return self._call(state)
        elif state.phase == RESULT:
            out = state.outcome or {}
            payload: dict[str, Any] = {"tool": state.tool,
                                       "status": "success" if out.get("success") else "failed"}
            if not out.get("success") and out.get("error_reason") is not None:
                payload["reason"] = out["error_reason"]
            self._emit(state, "CALLBACK_RESULT", self._agent(state), payload)
        elif state.phase == DECIDE:
            if (state.outcome or {}).get("success"):
                self._succeed(state)
            else:
                self._fail(state)
        elif state.phase == WRITTEN:
            self._emit(state, "CALLBACK_SUCCESS", self._agent(state), {"next": self._more(state)})
        return True

    def _call(self, state: ChainState) -> bool:
        if self.calls_made >= self.policy.max_steps:
            self._emit(state, "EXEC_TERMINATED", "system",
                       {"reason": f"max_steps ({self.policy.max_steps}) reached"})
            return True
        step = self._step(state)
        call = Call(state.step, str(state.tool), step.args, state.attempt, step.agent)
        outcome = self.outcomes.resolve(call)
        if outcome is None:
            self.out.status = "needs_outcome"
            self.out.missing = {"seq": self.seq, "step": call.step, "tool": call.tool,
                                "args": call.args, "attempt": call.attempt}
            return False
        self.calls_made += 1
        self.out.calls.append({"seq": self.seq, "step": call.step, "tool": call.tool,
                               "attempt": call.attempt, "source": outcome.source})
        self._emit(state, "TOOL_EXEC", step.agent, outcome.tool_exec_payload(call))
        return True

    def _succeed(self, state: ChainState) -> None:
        rule = self._rule(state, success=True)
        write = self.policy.memory.write_on_success
        name = "write_memory" if write else "no_memory_write"
        if rule is not None and rule.then.write_memory is not None:
            write, name = rule.then.write_memory, self._rule_name(rule)
        nxt = self._more(state)
        policy = {"write_memory": write, "record_trace": True, "fallback_required": False,
                  "trigger_next": nxt}
        agent = self._agent(state)
        self._resolve(state, agent, policy, name)
        if write:
            key = self.policy.memory_key(str(state.tool), self._step(state).tool, agent)
            value = (state.outcome or {}).get("output")
            self._emit(state, "CALLBACK_MEMORY_WRITE", agent, {"key": key, "value": value},
                       scope=f"memory/{agent}")
        self._emit(state, "CALLBACK_SUCCESS", agent, {"next": nxt})

    def _fail(self, state: ChainState) -> None:
        decision, name, alt = self._failure_decision(state)
        agent = self._agent(state)
        policy = {"write_memory": False, "record_trace": True,
                  "fallback_required": decision == "fallback", "trigger_next": False}
        if decision == "retry":
            self._emit(state, "CALLBACK_RETRY", agent,
                       {"tool": state.tool, "attempt": state.attempt + 1})
        elif decision == "fallback":
            self._resolve(state, agent, policy, name)
            self._emit(state, "CALLBACK_FALLBACK", agent,
                       {"original_tool": state.tool, "fallback_tool": alt})
        else:
            self._resolve(state, agent, policy, name)
            reason = (state.outcome or {}).get("error_reason") or "failed"
            self._emit(state, "EXEC_TERMINATED", "system", {"reason": f"{state.tool}: {reason}"})

    def _failure_decision(self, state: ChainState) -> tuple[str, str, str | None]:
        out = state.outcome or {}
        step = self._step(state)
        tool = str(state.tool)
        alternatives = [*self.policy.fallback.get(step.tool, ()),
                        *(self.policy.fallback.get(tool, ()) if tool != step.tool else ())]
        rule = self._rule(state, success=False)
        if rule is not None:
            then, name = rule.then, self._rule_name(rule)
            if then.retry:
                return "retry", name, None
            if then.fallback:
                names = then.fallback if isinstance(then.fallback, list) else alternatives
                alt = next((t for t in names if t not in state.tried), None)
                if alt is not None:
                    return "fallback", name, alt
            if then.terminate:
                return "terminate", name, None
        may_retry = rule is None or rule.then.retry is not False
        may_fall_back = rule is None or rule.then.fallback is not False
        never = out.get("error_class") in self.policy.retry.never_retry
        if may_retry and not never and state.attempt < self.policy.max_attempts(tool):
            return "retry", "retry", None
        alt = next((t for t in alternatives if t not in state.tried), None)
        if may_fall_back and alt is not None:
            return "fallback", "fallback", alt
        return "terminate", "terminate", None

    # -- helpers -----------------------------------------------------------------------------

    def _rule(self, state: ChainState, *, success: bool) -> Any:
        step = self._step(state)
        out = state.outcome or {}
        return self.policy.matching_rule({
            "tool": state.tool, "action_tool": step.tool, "agent": step.agent,
            "success": success, "error_class": out.get("error_class"),
            "attempt": state.attempt, "confidence": step.confidence})

    def _rule_name(self, rule: Any) -> str:
        return rule.name or f"rule#{self.policy.rules.index(rule)}"

    def _resolve(self, state: ChainState, agent: str, policy: dict[str, Any], rule: str) -> None:
        if state.resolved != policy:
            self._emit(state, "CALLBACK_POLICY_RESOLVED", agent, {"policy": policy, "rule": rule})

    def _more(self, state: ChainState) -> bool:
        return state.step + 1 < len(self.plan.steps)

    def _agent(self, state: ChainState) -> str:
        return self._step(state).agent

    def _step(self, state: ChainState) -> Step:
        """The step in progress (a step begun by a call that no reasoner action planned
        gets one made from what was observed of it)."""
        if not state.unplanned and 0 <= state.step < len(self.plan.steps):
            return self.plan.steps[state.step]
        return Step(state.step, 0, state.agent, str(state.tool), state.args, None, {})

    def _carry(self, anchor: Anchor) -> None:
        for r in self.plan.carried(anchor, self.fork_seq):
            if r["seq"] not in self.emitted_carried:
                self.emitted_carried.add(r["seq"])
                self._append(r["event"], r["executed_by"], r["payload"], r["write_scope"])

    def _emit(self, state: ChainState, event: str, agent: str, payload: dict[str, Any],
              scope: str | None = None) -> None:
        step = state.step + 1 if event == "REASONER_ACTION" else state.step
        occurrence = 0 if event == "REASONER_ACTION" else state.counts.get(event, 0)
        self._carry((step, event, occurrence))
        self._append(event, agent, payload, scope or f"memory/{self.owner}")
        _advance(state, self.plan, event, payload, agent)

    def _append(self, event: str, agent: str, payload: dict[str, Any], scope: str) -> None:
        memory = self.memory.get(scope)
        if event == "CALLBACK_MEMORY_WRITE":
            memory = self.memory.setdefault(scope, MemoryState())
            try:
                apply_write(memory, payload)
            except ValidationError as exc:  # an outcome's output the contract cannot hash
                raise UnwritableReplayError(self.trace_id, self.seq, str(exc)) from None
        self.out.events.append({
            "trace_id": self.trace_id, "seq": self.seq, "event": event, "tenant": self.tenant,
            "agent_owner": self.owner, "executed_by": agent, "write_scope": scope,
            "memory_hash": memory.hash() if memory is not None else EMPTY_MEMORY_HASH,
            "payload": payload})
        self.seq += 1


__all__ = ["ChainState", "Emitted", "Engine", "Outcome", "observe"]
