"""The ``failures`` projection: every failure point, indexed for the auditor's filters.

A failure point is the spec's (``ledger.payloads.is_failure_point``). Each row
names the *tool in play*: the event's own tool, or for events that name none
(``EXEC_TERMINATED``, ``EXEC_FAIL``, ``CALLBACK_FAIL``) the tool the trace was
last about, which the projection keeps as per-trace context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger import chain
from ledger.payloads import is_failure_point
from projections.base import Batch, Entry, Projection, group_key, indexed, json_text, utc_ts

INSERT = (
    "INSERT INTO {failures} (tenant, trace_id, seq, ts, event, tool, executed_by, reason, "
    "error_class, error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Keys are JSON text (``null`` for none), so a missing tool or reason stays distinct.
UPSERT_HOURLY = (
    "INSERT INTO {failure_hourly} AS h (tenant, hour, group_key, tool, reason, executed_by, "
    "failures, failed_execs) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, hour, "
    "group_key) DO UPDATE SET failures = h.failures + excluded.failures, "
    "failed_execs = h.failed_execs + excluded.failed_execs"
)


def named_tool(event: str, payload: dict[str, Any]) -> str | None:
    """The tool an event itself names (``None`` when it names none)."""
    if event in ("TOOL_EXEC", "TOOL_FAIL", "CALLBACK_RESULT", "CALLBACK_RETRY"):
        tool = payload.get("tool")
    elif event == "REASONER_ACTION":
        action = payload.get("action")
        tool = action.get("tool") if isinstance(action, dict) else None
    elif event == "CALLBACK_FALLBACK":
        tool = payload.get("fallback_tool")
    else:
        return None
    return tool if isinstance(tool, str) else None


def failure_reason(event: str, payload: dict[str, Any]) -> str | None:
    """``error_reason`` of a failed TOOL_EXEC, else the payload's ``reason``."""
    reason = payload.get("error_reason" if event == "TOOL_EXEC" else "reason")
    return reason if isinstance(reason, str) else None


class FailureProjection(Projection):
    name = "failures"
    # 2: error_code kept as JSON (a string or an integer, as given); 3: hourly;
    # 4: the key a unique index, built after the rows in a rebuild; 5: indexes and the
    # hourly key hold names of any length (``indexed``, ``group_key``)
    version = 5
    topics = frozenset({chain.EVENT_TOPIC})
    tables = ("failures", "failure_hourly")
    description = "failure index: every failure point with tool, agent and reason"
    ddl = (
        "CREATE TABLE IF NOT EXISTS {failures} (tenant TEXT NOT NULL, trace_id TEXT NOT NULL, "
        "seq {bigint} NOT NULL, ts TEXT NOT NULL, event TEXT NOT NULL, tool TEXT, "
        "executed_by TEXT NOT NULL, reason TEXT, error_class TEXT, error_code TEXT)",
        "CREATE TABLE IF NOT EXISTS {failure_hourly} (tenant TEXT NOT NULL, hour TEXT NOT NULL, "
        "group_key TEXT NOT NULL, tool TEXT NOT NULL, reason TEXT NOT NULL, "
        "executed_by TEXT NOT NULL, failures {bigint} NOT NULL, failed_execs {bigint} NOT NULL, "
        "PRIMARY KEY (tenant, hour, group_key))",
    )
    sums = {"failure_hourly": (("tenant", "hour", "group_key", "tool", "reason", "executed_by"),
                               ("failures", "failed_execs"))}
    query_indexes = (
        "CREATE UNIQUE INDEX IF NOT EXISTS agentledger_failures_key "
        "ON {failures} (tenant, trace_id, seq)",
        "CREATE INDEX IF NOT EXISTS agentledger_failures_ts ON {failures} (tenant, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_failures_tool "
        f"ON {{failures}} (tenant, {indexed('tool')}, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_failures_agent "
        f"ON {{failures}} (tenant, {indexed('executed_by')}, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_failures_event "
        f"ON {{failures}} (tenant, {indexed('event')}, ts)",
    )

    def apply(self, entries: Sequence[Entry], batch: Batch) -> None:
        # stream -> tool in play, as of this batch; counts by hour, for finish
        last: dict[str, str] = batch.carry.setdefault("last", {})
        hourly: dict[tuple[str, str, str, str, str], list[int]] = batch.carry.setdefault(
            "hourly", {})
        for entry in entries:
            r = entry.record
            event, payload = r["event"], r["payload"]
            tool = named_tool(event, payload)
            if tool is not None:
                last[entry.stream] = tool
            if not is_failure_point(event, payload):
                continue
            if tool is None:
                tool = last.get(entry.stream) or batch.context(entry.stream).get("tool")
            code, ts, reason = payload.get("error_code"), utc_ts(r), failure_reason(event, payload)
            batch.insert(INSERT, (
                r["tenant"], r["trace_id"], r["seq"], ts, event, tool, r["executed_by"],
                reason, payload.get("error_class"), None if code is None else json_text(code)))
            counts = hourly.setdefault(
                (r["tenant"], ts[:13], json_text(tool), json_text(reason), r["executed_by"]),
                [0, 0])
            counts[0] += 1
            counts[1] += event == "TOOL_EXEC"

    def finish(self, batch: Batch) -> None:
        for (tenant, hour, *names), (failures, failed_execs) in batch.carry.get(
                "hourly", {}).items():
            batch.insert(UPSERT_HOURLY, (tenant, hour, group_key(*names), *names, failures,
                                         failed_execs))
        for stream, tool in batch.carry.get("last", {}).items():
            ctx = batch.context(stream)
            if ctx.get("tool") != tool:
                ctx["tool"] = tool
                batch.touch(stream)
