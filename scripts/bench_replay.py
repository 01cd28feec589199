"""Replay benchmarks (issue #4): one long replay, and a backtest at scale.

Run through ``scripts/bench.py --only replay,backtest`` (see docs/BENCHMARKS.md);
each function takes a store URL and returns plain figures.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from ledger import Store, TraceWriter
from ledger.ingest import ingest
from ledger.workload import synthetic_lines
from projections import Projector
from replay import Policy, Replayer

BACKTEST_POLICY = {"retry": {"max_attempts": 3}, "fallback": {"search": ["search_cache"]}}


def write_long_trace(store: Store, tenant: str, trace_id: str, n_events: int = 1000) -> int:
    """A chain of about ``n_events`` events whose first step fails once, then recovers."""
    n = 0
    with TraceWriter(store, tenant=tenant) as w:
        def rec(event: str, payload: dict[str, Any], scope: str | None = None) -> None:
            nonlocal n
            w.record(trace_id, event, payload, agent_owner="planner", executed_by="planner",
                     write_scope=scope)
            n += 1

        rec("EXEC_START", {})
        step = 0
        while n < n_events - 8:
            args = {"q": f"topic {step}"}
            rec("REASONER_ACTION", {"action": {"tool": "search", "args": args}})
            out: Any = {"hits": step}
            if step == 0:
                rec("TOOL_EXEC", {"tool": "search", "args": args, "success": False,
                                  "error_reason": "429", "error_class": "retryable",
                                  "attempt": 1})
                rec("CALLBACK_RESULT", {"tool": "search", "status": "failed", "reason": "429"})
                rec("CALLBACK_RETRY", {"tool": "search", "attempt": 2})
                rec("TOOL_EXEC", {"tool": "search", "args": args, "success": True,
                                  "output": out, "attempt": 2})
            else:
                rec("TOOL_EXEC", {"tool": "search", "args": args, "success": True,
                                  "output": out, "attempt": 1})
            rec("CALLBACK_RESULT", {"tool": "search", "status": "success"})
            rec("CALLBACK_POLICY_RESOLVED", {"policy": {
                "write_memory": True, "record_trace": True, "fallback_required": False,
                "trigger_next": True}, "rule": "write_memory"})
            rec("CALLBACK_MEMORY_WRITE", {"key": "search_result", "value": out},
                scope="memory/planner")
            rec("CALLBACK_SUCCESS", {"next": True})
            step += 1
    return n


def bench_replay(url: str, *, repeat: int = 30) -> dict[str, Any]:
    """Replay a ~1,000-event trace from its first failure, in process (dry run)."""
    with Store.open(url) as store:
        Projector(store).attach()
        events = write_long_trace(store, "bench", "long-1")
        replayer = Replayer(store)
        policy = Policy.from_obj({"retry": {"max_attempts": 2}})
        replayer.replay("bench", "long-1", policy, dry_run=True)  # warm up, views current
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = replayer.replay("bench", "long-1", policy, dry_run=True)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        return {"events": events, "replayed_events": len(result.events),
                "status": result.replay_status, "p50_ms": statistics.median(times),
                "p95_ms": times[int(len(times) * 0.95) - 1], "max_ms": times[-1]}


def bench_backtest(url: str, n_events: int) -> dict[str, Any]:
    """Backtest a policy over every terminated trace of a store of ``n_events`` events."""
    with tempfile.TemporaryDirectory() as tmp, Store.open(url) as store:
        path = os.path.join(tmp, "syn.jsonl")
        with open(path, "wb") as fh:
            fh.writelines(synthetic_lines(n_events))
        ingest(store, [path], reject_file=os.path.join(tmp, "rejected.jsonl"))
    return bench_backtest_on(url)


def bench_backtest_on(url: str, workers: int = 1) -> dict[str, Any]:
    """Backtest a policy over every terminated trace already in the store at ``url``."""
    with Store.open(url) as store:
        Projector(store).catch_up()
        replayer = Replayer(store)  # one replayer: its worker processes serve every tenant
        policy = Policy.from_obj(BACKTEST_POLICY)
        totals: dict[str, int] = {"terminated_traces": 0, "recovered": 0,
                                  "still_terminated": 0, "needs_outcome": 0}
        tenants = sorted({h.tenant for h in store.backend.iter_catalog()})  # not timed
        start = time.perf_counter()
        for tenant in tenants:
            report = replayer.backtest(tenant, policy, workers=workers)
            for key in totals:
                totals[key] += getattr(report, key)
        seconds = time.perf_counter() - start
        replayer.close()
        return {**totals, "seconds": seconds,
                "traces_per_s": totals["terminated_traces"] / seconds if seconds else 0.0}
