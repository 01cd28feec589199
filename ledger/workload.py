"""Deterministic trace-event workloads: a small telling demo and a fast synthetic stream.

Events are plain dicts (or JSONL byte lines) in the wire format of the trace-event
contract, so they can be fed to the ledger exactly as a runtime would send them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from time import gmtime, strftime
from typing import Any

import orjson

from ledger.memory import MemoryState, memory_hash

Event = dict[str, Any]

DEFAULT_BASE_TS = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
"""Default end of the demo's time window, fixed so the output is deterministic."""

# failure kind -> (error_reason, error_class, error_code)
_FAILURES: dict[str, tuple[str, str, str]] = {
    "rate_limit": ("429 rate limited", "retryable", "HTTP_429"),
    "timeout": ("timeout after 30000 ms", "retryable", "TIMEOUT"),
    "not_found": ("404 not found", "replaceable", "HTTP_404"),
    "denied": ("403 permission denied", "terminal", "HTTP_403"),
}
_FALLBACKS = {"search": "search_cache", "fetch_doc": "fetch_doc_mirror",
              "summarize": "summarize_lite"}
_PIPELINE = (  # (agent, tool, memory key) in the order a filler trace runs them
    ("planner", "task_board", "plan"), ("researcher", "search", "search_result"),
    ("researcher", "fetch_doc", "doc"), ("writer", "summarize", "draft"),
    ("critic", "fact_check", "review"),
)
_TOPICS = (
    "EU battery regulation", "GPU spot prices", "Zürich office leases", "churn in Q3",
    "open-source LLM licences", "vendor SOC 2 status", "shipping delays in Rotterdam",
    "carbon credit pricing", "APAC hiring plan", "pricing page A/B test",
)
_SITES = ("arxiv.org", "reuters.com", "docs.internal", "wiki.internal", "sec.gov")
_USERS = ("dana", "li", "omar", "sofia")
_SYN_TOOLS = ("search", "fetch_doc", "summarize", "fact_check", "query_db")
_SYN_AGENTS = ("researcher", "writer", "critic")


def _rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _url(text: str, rng: random.Random) -> str:
    return f"https://{rng.choice(_SITES)}/" + "-".join(text.lower().replace("/", " ").split())


def _args(tool: str, topic: str, rng: random.Random) -> dict[str, Any]:
    """Arguments a filler stage passes to its tool."""
    by_tool: dict[str, dict[str, Any]] = {
        "task_board": {"goal": topic}, "search": {"q": topic, "limit": 10},
        "fetch_doc": {"url": _url(topic, rng)}, "fact_check": {"claims_from": "draft"},
        "summarize": {"source": "doc", "max_words": rng.choice((150, 250, 400))}}
    return by_tool[tool]


def _output(tool: str, args: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A plausible result of a successful call (also what gets written to memory)."""
    n = rng.randint(3, 40)
    by_tool: dict[str, dict[str, Any]] = {
        "search": {"hits": n, "top": _url(str(args.get("q")), rng), "cached": tool != "search"},
        "fetch": {"url": args.get("url"), "bytes": n * 2_011, "lang": "en"},
        "summarize": {"words": n * 10, "summary_id": f"sum-{rng.getrandbits(24):06x}"},
        "fact": {"claims": n, "flagged": n // 7, "score": round(rng.uniform(0.6, 0.99), 3)},
        "crm": {"rows": n * 97},
    }
    return by_tool.get(tool.split("_")[0], {"steps": ["research", "draft"], "deadline_h": n})


class _Trace:
    """Builds one trace's events, keeping each write scope's memory as a runtime would."""

    def __init__(
        self, rng: random.Random, tenant: str, trace_id: str, owner: str, start: datetime
    ) -> None:
        self.rng, self.tenant, self.trace_id, self.owner = rng, tenant, trace_id, owner
        self.events: list[Event] = []
        self._now = start
        self._memory: dict[str, MemoryState] = {}

    def _state(self, scope: str) -> MemoryState:
        return self._memory.setdefault(scope, MemoryState())

    def emit(
        self, event: str, by: str, payload: dict[str, Any], *, scope: str | None = None,
        claimed_hash: str | None = None, gap_ms: int | None = None,
    ) -> None:
        """Append an event stamped with the hash of its write scope's current memory."""
        self._now += timedelta(milliseconds=gap_ms or self.rng.randint(40, 1_800))
        ev: Event = {
            "trace_id": self.trace_id, "seq": len(self.events) + 1, "event": event,
            "ts": _rfc3339(self._now), "tenant": self.tenant,
            "agent_owner": self.owner, "executed_by": by,
        }
        if scope is not None:
            ev["write_scope"] = scope
        ev["memory_hash"] = claimed_hash or self._state(scope or f"memory/{self.owner}").hash()
        ev["payload"] = payload
        self.events.append(ev)

    def start(self, by: str, goal: str) -> None:
        self.emit("EXEC_START", by, {"context_id": f"ctx-{self.rng.getrandbits(32):08x}",
                                     "goal": goal})

    def permit(self, source: str, executing: str, scope: str, granted: bool = True) -> None:
        payload = {"source_agent": source, "executing_agent": executing, "scope": scope,
                   "granted": granted}
        self.emit("CALLBACK_PERMISSION", source, payload)

    def write(
        self, by: str, key: str, value: Any = None, *, delete: bool = False,
        scope: str | None = None, tamper: dict[str, Any] | None = None,
    ) -> None:
        """Set or delete a memory key; `tamper` adds keys the log never wrote to the claimed
        hash, as a runtime whose memory changed behind the log's back would report it."""
        scope = scope or f"memory/{by}"
        state = self._state(scope)
        if delete:
            state.delete(key)
        else:
            state.set(key, value)
        claimed = memory_hash({**state.as_dict(), **tamper}) if tamper else None
        payload = {"key": key, "op": "delete"} if delete else {"key": key, "value": value}
        self.emit("CALLBACK_MEMORY_WRITE", by, payload, scope=scope, claimed_hash=claimed)

    def terminate(self, reason: str, code: str) -> None:
        self.emit("EXEC_TERMINATED", "system", {"reason": reason, "error_code": code})

    def _policy(self, by: str, rule: str, *, write: bool, fallback: bool, nxt: bool) -> None:
        policy = {"write_memory": write, "record_trace": True, "fallback_required": fallback,
                  "trigger_next": nxt}
        self.emit("CALLBACK_POLICY_RESOLVED", by, {"policy": policy, "rule": rule})

    def _exec(
        self, by: str, tool: str, args: dict[str, Any], outcome: str, attempt: int
    ) -> dict[str, Any] | None:
        """Emit TOOL_EXEC and CALLBACK_RESULT for one attempt; return its output on success."""
        ok = outcome == "ok"
        latency = 30_000 if outcome == "timeout" else self.rng.randint(60, 2_400)
        payload: dict[str, Any] = {"tool": tool, "args": args, "success": ok,
                                   "latency_ms": latency, "attempt": attempt}
        result: dict[str, Any] = {"tool": tool, "status": "success" if ok else "failed"}
        output = _output(tool, args, self.rng) if ok else None
        if ok:
            payload["output"] = output
        else:
            payload["error_reason"], payload["error_class"], _ = _FAILURES[outcome]
            result["reason"] = payload["error_reason"]
        self.emit("TOOL_EXEC", by, payload, gap_ms=latency)
        self.emit("CALLBACK_RESULT", by, result)
        return output

    def step(
        self, by: str, tool: str, args: dict[str, Any], attempts: Sequence[str] = ("ok",),
        fallback: str | None = None, *, key: str, scope: str | None = None,
        then: str | None = None, persist: bool = True, tamper: dict[str, Any] | None = None,
    ) -> bool:
        """One reasoned tool call through retries and fallback, then the policy on its
        result, its memory write and the hand-off; False if the trace was terminated."""
        intent = f"{tool.replace('_', ' ')} for the {by}"
        self.emit("REASONER_ACTION", by, {
            "action": {"tool": tool, "args": args}, "strategy": "serial", "intent": intent,
            "confidence": round(self.rng.uniform(0.55, 0.97), 2)})
        for attempt, kind in enumerate(attempts, start=1):
            if attempt > 1:
                self.emit("CALLBACK_RETRY", by, {"tool": tool, "attempt": attempt})
            if (output := self._exec(by, tool, args, kind, attempt)) is not None:
                break
            reason, error_class, code = _FAILURES[kind]
            if error_class == "terminal":
                self._policy(by, "terminal_error", write=False, fallback=False, nxt=False)
                self.terminate(f"{tool}: {reason}", code)
                return False
        else:
            if fallback is None:
                self.terminate(f"{tool}: retries exhausted ({reason})", code)
                return False
            alt = _FALLBACKS[tool]
            self._policy(by, f"{error_class}_to_fallback", write=False, fallback=True, nxt=False)
            self.emit("CALLBACK_FALLBACK", by, {"original_tool": tool, "fallback_tool": alt,
                                                "reason": reason})
            if (output := self._exec(by, alt, args, fallback, 1)) is None:
                alt_reason, _, alt_code = _FAILURES[fallback]
                self.terminate(f"{tool} failed ({reason}); fallback {alt} failed ({alt_reason})",
                               alt_code)
                return False
        rule = "persist_tool_result" if persist else "read_only_review"
        self._policy(by, rule, write=persist, fallback=False, nxt=then is not None)
        if persist:
            self.write(by, key, output, scope=scope, tamper=tamper)
        self.emit("CALLBACK_SUCCESS", by, {"next": then is not None})
        if then is not None:
            self.emit("EXEC_NEXT", "system", {"from": by, "to": then})
        return True


def _plan(tool: str, rng: random.Random, doomed: bool) -> tuple[list[str], str | None]:
    """Attempt outcomes and fallback outcome for a stage; doomed stages never recover."""
    r, flaky = rng.random(), rng.choice(("rate_limit", "timeout"))
    if doomed:
        if r < 0.3 or tool not in _FALLBACKS:
            return (["denied"] if r < 0.3 else [flaky] * 3), None
        dead = rng.choice(("timeout", "not_found"))
        return (["not_found"] if r < 0.65 else [flaky, flaky]), dead
    if r < 0.8:
        return (["ok"] if r < 0.62 else [flaky, "ok"]), None
    if tool in _FALLBACKS:
        return ([flaky, flaky] if r < 0.9 else ["not_found"]), "ok"
    return [flaky, flaky, "ok"], None


def _filler(t: _Trace, doomed: bool) -> None:
    """A planner-led research pipeline; `doomed` makes one stage fail for good."""
    rng = t.rng
    topic = rng.choice(_TOPICS)
    t.start(rng.choice(("planner", f"user:{rng.choice(_USERS)}")), f"brief on {topic}")
    stages = [_PIPELINE[0], *sorted(rng.sample(_PIPELINE[1:], rng.randint(2, 4)),
                                    key=_PIPELINE.index)]
    fail_at = rng.randrange(1, len(stages)) if doomed else -1
    shared = rng.random() < 0.25  # researcher writes straight into the planner's memory
    if shared:
        t.permit("planner", "researcher", "memory/planner")
    for i, (agent, tool, key) in enumerate(stages):
        attempts, fallback = _plan(tool, rng, doomed=i == fail_at)
        then = stages[i + 1][0] if i + 1 < len(stages) else None
        scope = "memory/planner" if shared and agent == "researcher" else None
        persist = agent != "critic" or rng.random() < 0.5
        if not t.step(agent, tool, _args(tool, topic, rng), attempts, fallback, key=key,
                      scope=scope, then=then, persist=persist):
            return
    if rng.random() < 0.3:
        t.write("planner", "plan", delete=True)


def _showcase(new: Callable[[str, str, str], _Trace]) -> None:
    """The named traces the demo points newcomers at (see the module's tests)."""
    t = new("acme", "q4-market-report", "planner")  # retry recovers; authorized hand-off
    t.start("user:dana", "Q4 market report for the board")
    t.step("planner", "task_board", {"goal": "Q4 market report"}, key="plan", then="researcher")
    t.permit("planner", "researcher", "memory/planner")
    t.step("researcher", "search", {"q": "Q4 cloud market share", "limit": 10},
           ["rate_limit", "ok"], key="sources", scope="memory/planner", then="writer")
    t.step("writer", "summarize", {"source": "sources", "max_words": 400}, key="draft",
           then="critic")
    t.step("critic", "fact_check", {"claims_from": "draft"}, key="review")

    t = new("globex", "q4-market-report", "planner")  # same trace_id, other tenant: dies
    t.start("planner", "Q4 supplier market report")
    t.step("planner", "task_board", {"goal": "Q4 supplier report"}, key="plan",
           then="researcher")
    t.step("researcher", "search", {"q": "Q4 supplier market", "limit": 10},
           ["timeout", "timeout"], "rate_limit", key="sources")

    t = new("acme", "competitor-scan", "researcher")  # the spec's chain: fallback recovers
    t.start("researcher", "scan competitor pricing pages")
    t.step("researcher", "search", {"q": "competitor pricing 2026", "limit": 20},
           ["rate_limit", "rate_limit"], "ok", key="search_cache_result", then="writer")
    t.step("writer", "summarize", {"source": "search_cache_result", "max_words": 150},
           key="draft")

    t = new("acme", "contract-fetch", "researcher")  # 404, mirror times out: terminated
    t.start("researcher", "fetch the Initech master contract")
    t.step("researcher", "fetch_doc", {"url": "https://docs.internal/contracts/initech-msa"},
           ["not_found"], "timeout", key="doc")

    t = new("acme", "crm-export", "planner")  # permission denied is terminal
    t.start("user:omar", "export churned accounts")
    t.step("planner", "task_board", {"goal": "export churned accounts"}, key="plan",
           then="researcher")
    t.step("researcher", "crm_export", {"segment": "churned", "fields": ["email"]},
           ["denied"], key="export")

    t = new("acme", "pricing-memo", "planner")  # runtime's hash claims an unlogged key
    t.start("planner", "draft the 2027 pricing memo")
    t.step("planner", "task_board", {"goal": "2027 pricing memo"}, key="plan", then="writer")
    t.step("writer", "summarize", {"source": "pricing-notes", "max_words": 250}, key="draft",
           tamper={"discount_override_pct": 35})

    t = new("acme", "budget-review", "planner")  # grant, revoke, then write: unauthorized
    t.start("user:sofia", "review the travel budget")
    t.step("planner", "task_board", {"goal": "travel budget review"}, key="plan",
           then="researcher")
    t.permit("planner", "researcher", "memory/planner")
    t.permit("planner", "researcher", "memory/planner", granted=False)
    t.step("researcher", "search", {"q": "travel spend 2026", "limit": 10}, key="spend",
           scope="memory/planner")

    t = new("globex", "supplier-audit", "planner")  # no grant at all: unauthorized write
    t.start("planner", "audit tier-1 suppliers")
    t.step("planner", "task_board", {"goal": "supplier audit"}, key="plan", then="researcher")
    t.step("researcher", "fetch_doc", {"url": "https://sec.gov/filings/acme-supply"},
           ["not_found"], "ok", key="supplier_risk", scope="memory/planner", then="critic")
    t.step("critic", "fact_check", {"claims_from": "supplier_risk"}, key="review")
    t.write("planner", "plan", delete=True)  # clean-up: a delete, then a final set
    t.write("planner", "status", {"audited": 42, "escalated": ["T-1093", "T-1107"]})


def demo_events(seed: int = 7, *, base_ts: datetime | None = None) -> list[Event]:
    """Forty traces over two tenants in the ~3 days before `base_ts`, ordered by time."""
    rng = random.Random(seed)
    end = base_ts or DEFAULT_BASE_TS
    end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    window_start = end - timedelta(hours=72)
    traces: list[_Trace] = []

    def new(tenant: str, trace_id: str, owner: str) -> _Trace:
        start = window_start + timedelta(seconds=rng.uniform(0, 70 * 3600))
        traces.append(_Trace(rng, tenant, trace_id, owner, start))
        return traces[-1]

    _showcase(new)
    doomed = [True] * 7 + [False] * 25  # with the showcase: 10 of 40 traces terminate
    rng.shuffle(doomed)
    for i, fate in enumerate(doomed):  # the index suffix keeps the ids unique
        trace_id = f"run-{rng.getrandbits(24):06x}{i:02d}"
        _filler(new("acme" if i < 16 else "globex", trace_id, "planner"), fate)
    events = [ev for t in traces for ev in t.events]
    events.sort(key=lambda ev: (ev["ts"], ev["tenant"], ev["trace_id"], ev["seq"]))
    return events


def demo_bad_lines() -> list[bytes]:
    """Newline-terminated lines the ledger must reject: one distinct defect per line."""
    ts = _rfc3339(DEFAULT_BASE_TS)
    head = {"seq": 1, "ts": ts, "tenant": "acme", "agent_owner": "planner",
            "executed_by": "planner"}
    target = next(ev for ev in demo_events() if ev["tenant"] == "acme"
                  and ev["trace_id"] == "q4-market-report" and ev["event"] == "TOOL_EXEC"
                  and not ev["payload"]["success"])
    rewrite = {**target, "payload": {**target["payload"], "success": True,
                                     "output": {"hits": 12}}}
    del rewrite["payload"]["error_reason"], rewrite["payload"]["error_class"]
    lines = [
        b'{"trace_id": "bad-json", "seq": 1, "event": "EXEC_START", "payload": {',
        orjson.dumps({"trace_id": "bad-utf8", "event": "EXEC_START", **head,
                      "payload": {"goal": "café"}}).replace("é".encode(), b"\xe9\xff"),
        orjson.dumps({"trace_id": "bad-event", "event": "TOOL_TELEPORT", **head,
                      "payload": {"tool": "search"}}),
        orjson.dumps({"trace_id": "bad-payload", "event": "TOOL_EXEC", **head,
                      "payload": {"tool": "search", "args": {"q": "x"}}}),
        orjson.dumps(rewrite),  # rewrites acme/q4-market-report's failed call as a success
    ]
    return [line + b"\n" for line in lines]


@lru_cache(maxsize=4_096)
def _second(epoch_s: int) -> str:
    return strftime("%Y-%m-%dT%H:%M:%S.", gmtime(epoch_s))


def _synthetic_trace(
    rand: Callable[[], float], trace_no: int, n: int
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(event, executed_by, payload) for one chain of n events: action, exec, result, ..."""
    q = f"topic {trace_no % 977}"
    by, tool, attempt, failed = "planner", "search", 1, False
    yield "EXEC_START", by, {"context_id": f"ctx-{trace_no:x}", "goal": f"benchmark brief {q}"}
    for seq in range(2, n + 1):
        payload: dict[str, Any]
        if seq == n and n > 2:
            if failed and rand() < 0.6:
                yield "EXEC_TERMINATED", "system", {"reason": f"{tool}: 429 rate limited",
                                                    "error_code": "HTTP_429"}
            else:
                yield "CALLBACK_SUCCESS", by, {"next": False}
        elif seq % 3 == 2:  # the next tool call, or a retry / fallback after a failure
            if failed and attempt < 3 and rand() < 0.6:
                attempt += 1
                yield "CALLBACK_RETRY", by, {"tool": tool, "attempt": attempt}
            elif failed and tool == "search":
                tool, attempt = "search_cache", 1
                yield "CALLBACK_FALLBACK", by, {"original_tool": "search", "fallback_tool": tool}
            else:
                by, tool, attempt = _SYN_AGENTS[int(rand() * 3)], _SYN_TOOLS[int(rand() * 5)], 1
                yield "REASONER_ACTION", by, {
                    "action": {"tool": tool, "args": {"q": q, "limit": 10}}, "strategy": "serial",
                    "intent": f"gather evidence for step {seq}", "confidence": round(rand(), 2)}
        elif seq % 3 == 0:
            failed = rand() < 0.18
            payload = {"tool": tool, "args": {"q": q, "limit": 10}, "success": not failed,
                       "latency_ms": int(rand() * 2_000), "attempt": attempt}
            if failed:
                payload |= {"error_reason": "429 rate limited", "error_class": "retryable"}
            else:
                payload["output"] = {"hits": int(rand() * 40), "bytes": int(rand() * 90_000),
                                     "top": f"https://docs.example.org/d/{int(rand() * 99_991)}"}
            yield "TOOL_EXEC", by, payload
        elif not failed and rand() < 0.3:
            yield "CALLBACK_MEMORY_WRITE", by, {"key": f"{tool}_result",
                                                "value": {"hits": seq, "ok": True, "source": tool}}
        else:
            payload = {"tool": tool, "status": "failed" if failed else "success",
                       "metadata": {"attempt": attempt, "cached": tool == "search_cache"}}
            if failed:
                payload["reason"] = "429 rate limited"
            yield "CALLBACK_RESULT", by, payload


def synthetic_lines(
    n_events: int, *, seed: int = 1, events_per_trace: int = 10, tenants: int = 4
) -> Iterator[bytes]:
    """Yield exactly `n_events` valid JSONL lines (~300 bytes), trace by trace, lazily.

    Memory writes carry `write_scope` but no event carries `memory_hash`.
    """
    if n_events < 0 or events_per_trace < 1 or tenants < 1:
        raise ValueError("n_events must be >= 0; events_per_trace and tenants >= 1")
    return _synthetic(n_events, seed, events_per_trace, tenants)


def _synthetic(n_events: int, seed: int, per_trace: int, tenants: int) -> Iterator[bytes]:
    rand = random.Random(seed).random
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    names = [f"tenant-{i:03d}" for i in range(tenants)]
    t0 = int(DEFAULT_BASE_TS.timestamp()) - 3 * 86_400
    for trace_no in range(-(-n_events // per_trace)):
        n = min(per_trace, n_events - trace_no * per_trace)
        trace_id, tenant = f"syn-{seed}-{trace_no:09d}", names[trace_no % tenants]
        ms = (t0 + trace_no * 3) * 1_000 + int(rand() * 1_000)
        for seq, (event, by, payload) in enumerate(_synthetic_trace(rand, trace_no, n), 1):
            ms += 7 + int(rand() * 400)
            ev = {"trace_id": trace_id, "seq": seq, "event": event,
                  "ts": f"{_second(ms // 1_000)}{ms % 1_000:03d}Z", "tenant": tenant,
                  "agent_owner": "planner", "executed_by": by, "payload": payload}
            if event == "CALLBACK_MEMORY_WRITE":
                ev["write_scope"] = f"memory/{by}"
            yield dumps(ev, option=newline)
