"""A trace as a readable timeline for a terminal."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import click

from ledger.cli.common import printable
from ledger.payloads import is_failure_point
from ledger.reader import TraceSummary, TraceView


def summarize(event: str, payload: dict[str, Any]) -> str:
    """One short phrase saying what an event did."""
    p = payload
    if event == "REASONER_ACTION":
        action = p.get("action") or {}
        extra = f" ({p['intent']})" if p.get("intent") else ""
        return f"-> {action.get('tool')}{extra}"
    if event == "TOOL_EXEC":
        attempt = f" attempt {p['attempt']}" if p.get("attempt", 1) != 1 else ""
        if p.get("success"):
            return f"{p.get('tool')} ok{attempt}"
        cls = f" [{p['error_class']}]" if p.get("error_class") else ""
        return f"{p.get('tool')} FAILED{attempt}: {p.get('error_reason', '')}{cls}"
    if event == "CALLBACK_RESULT":
        reason = f": {p['reason']}" if p.get("reason") else ""
        return f"{p.get('tool')} {p.get('status')}{reason}"
    if event == "CALLBACK_FALLBACK":
        return f"{p.get('original_tool')} => {p.get('fallback_tool')}"
    if event == "CALLBACK_RETRY":
        return f"retry {p.get('tool')} (attempt {p.get('attempt')})"
    if event == "CALLBACK_MEMORY_WRITE":
        if p.get("op") == "delete":
            return f"delete {p.get('key')}"
        return f"set {p.get('key')}"
    if event == "CALLBACK_PERMISSION":
        verb = "grants" if p.get("granted") else "revokes"
        return f"{p.get('source_agent')} {verb} {p.get('executing_agent')} {p.get('scope')}"
    if event == "CALLBACK_POLICY_RESOLVED":
        flags = [k for k, v in (p.get("policy") or {}).items() if v is True]
        return "policy: " + (", ".join(flags) or "nothing")
    if event in ("EXEC_TERMINATED", "EXEC_FAIL", "CALLBACK_FAIL", "TOOL_FAIL"):
        code = f" ({p['error_code']})" if p.get("error_code") is not None else ""
        return f"{p.get('reason', '')}{code}"
    return ""


def render_timeline(view: TraceView, *, color: bool) -> str:
    """The trace header and one line per event; failures marked (red on a terminal)."""
    return "\n".join(timeline_lines(view.summary, view.records, color=color))


def timeline_lines(s: TraceSummary, records: Iterable[dict[str, Any]], *,
                   color: bool, seqs: tuple[int, int] | None = None) -> Iterator[str]:
    """:func:`render_timeline`'s lines, a record at a time (``seqs``: the records are
    those of that window, first and last seq, as the header says)."""
    status = s.status.upper()
    if color:
        status = click.style(status, fg="red" if s.status == "terminated" else "green")
    yield (printable(f"trace {s.trace_id}  tenant {s.tenant}  owner {s.agent_owner}  ")
           + f"{status}  {s.events} events  {s.first_ts or ''} .. {s.last_ts or ''}")
    if seqs is not None:
        first, last = seqs
        yield (f"seq {first}..{last} of {s.events}" if first <= last
               else f"no events from seq {first} on: the trace has {s.events}")
    yield ""
    for r in records:
        failed = is_failure_point(r["event"], r["payload"])
        scope = ""
        if r["event"] == "CALLBACK_MEMORY_WRITE":
            scope = f"  [{r['write_scope']}]"
            if r["write_scope"] != f"memory/{r['executed_by']}":
                scope += " cross-agent"
        text = printable(
            f"{r['seq']:>5}  {r['ts']:<24}  {'!' if failed else ' '} {r['event']:<26} "
            f"{r['executed_by']:<12} {summarize(r['event'], r['payload'])}{scope}")
        if color and failed:
            text = click.style(text, fg="red")
        yield text.rstrip()
