"""An independent, deliberately naive fold of trace events into every query's answer.

Written from the "Definitions" of ``docs/PROJECTIONS.md`` (and, for field names,
``memory history`` without a scope and the failure rate, ``docs/CLI.md``) alone, to
check the projections against: nothing is imported from ``projections/`` (nor from
the ledger's memory code: the hash is JCS via ``rfc8785``), nothing is incremental,
and every question re-reads the whole history. Slow and obvious on purpose.

Input: every submitted trace event in wire form (plain dicts, any tenants, any
order; per trace, seq order is restored here) and the grant operations in the
order they were recorded (``GrantOp``). Answers are plain JSON values with the
documented field names, timestamps in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

JSON = Any
Row = dict[str, Any]

FAILURE_EVENTS = {"TOOL_FAIL", "CALLBACK_FAIL", "EXEC_FAIL", "EXEC_TERMINATED"}
STOPS_RECOVERY = {"REASONER_ACTION", "CALLBACK_FALLBACK", "EXEC_TERMINATED"}
NAMED_CALLBACKS = {  # the contract's callback rows; any other CALLBACK_* is an unknown subtype
    "CALLBACK_RESULT", "CALLBACK_POLICY_RESOLVED", "CALLBACK_MEMORY_WRITE", "CALLBACK_FALLBACK",
    "CALLBACK_RETRY", "CALLBACK_NEXT_ACTION", "CALLBACK_PERMISSION", "CALLBACK_SUCCESS",
    "CALLBACK_FAIL",
}


def utc(ts: str, *, end_of_day: bool = False) -> str:
    """An RFC 3339 timestamp (or a date: its first, or with ``end_of_day`` last,
    microsecond in UTC) as a fixed-width UTC string, so strings compare as instants."""
    if len(ts) == 10:
        return ts + ("T23:59:59.999999Z" if end_of_day else "T00:00:00.000000Z")
    when = datetime.fromisoformat(ts.replace("z", "Z").replace("Z", "+00:00"))
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def jcs_hash(state: dict[str, JSON]) -> str:
    """The spec's memory hash: sha256 over the RFC 8785 bytes of the state."""
    return "sha256:" + hashlib.sha256(rfc8785.dumps(state)).hexdigest()


EMPTY_HASH = jcs_hash({})


@dataclass(frozen=True)
class GrantOp:
    """One recorded grant operation: ``add`` (with its fields) or ``revoke`` (with ``at``)."""

    action: str
    tenant: str
    grant_id: str
    agent: str | None = None
    scope: str | None = None
    valid_from: str | None = None
    valid_until: str | None = None
    at: str | None = None


def is_failure(e: Row) -> bool:
    kind, p = e["event"], e["payload"]
    if kind == "TOOL_EXEC":
        return p["success"] is False
    if kind == "CALLBACK_RESULT":
        return p["status"] == "failed"  # type: ignore[no-any-return]
    return kind in FAILURE_EVENTS


def named_tool(e: Row) -> str | None:
    """The tool an event itself names (None when it names none)."""
    kind, p = e["event"], e["payload"]
    if kind in ("TOOL_EXEC", "TOOL_FAIL", "CALLBACK_RESULT", "CALLBACK_RETRY"):
        return p["tool"]  # type: ignore[no-any-return]
    if kind == "REASONER_ACTION":
        return p["action"]["tool"]  # type: ignore[no-any-return]
    if kind == "CALLBACK_FALLBACK":
        return p["fallback_tool"]  # type: ignore[no-any-return]
    return None


def scope_of(e: Row) -> str:
    return e.get("write_scope") or "memory/" + e["agent_owner"]  # type: ignore[no-any-return]


def in_window(ts: str, since: str | None, until: str | None) -> bool:
    return ((since is None or utc(since) <= ts)
            and (until is None or ts <= utc(until, end_of_day=True)))


def ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


class NaiveFold:
    """Expected answers of every query, recomputed from scratch each time."""

    def __init__(self, events: Iterable[Row], grants: Iterable[GrantOp] = (),
                 conflicts: Iterable[tuple[str, str, int]] = ()) -> None:
        by_trace: dict[tuple[str, str], dict[int, Row]] = defaultdict(dict)
        for e in events:
            by_trace[(e.get("tenant", "default"), e["trace_id"])].setdefault(e["seq"], e)
        self.traces: dict[tuple[str, str], list[Row]] = {}
        for key, seqs in by_trace.items():
            ordered = [seqs[s] for s in sorted(seqs)]
            assert [e["seq"] for e in ordered] == list(range(1, len(ordered) + 1)), key
            self.traces[key] = ordered
        self.grant_ops = list(grants)
        self.conflicts = list(conflicts)  # (tenant, trace_id, seq) of rejected conflicting sends

    # -- per-trace annotation ---------------------------------------------------------

    def trace(self, tenant: str, trace_id: str) -> list[Row]:
        return self.traces.get((tenant, trace_id), [])

    def trace_ids(self, tenant: str) -> list[str]:
        return sorted(t for (ten, t) in self.traces if ten == tenant)

    def annotated(self, tenant: str) -> list[tuple[str, Row, str | None]]:
        """Every event of the tenant with its trace id and tool in play, trace by trace."""
        out = []
        for trace_id in self.trace_ids(tenant):
            in_play: str | None = None
            for e in self.trace(tenant, trace_id):
                in_play = named_tool(e) or in_play
                out.append((trace_id, e, in_play))
        return out

    # -- memory -----------------------------------------------------------------------

    def owner(self, tenant: str, trace_id: str) -> str:
        return self.trace(tenant, trace_id)[0]["agent_owner"]  # type: ignore[no-any-return]

    def scopes(self, tenant: str, trace_id: str) -> list[str]:
        """Every scope a write of the trace touched, plus the owner's."""
        names = {scope_of(e) for e in self.trace(tenant, trace_id)
                 if e["event"] == "CALLBACK_MEMORY_WRITE"}
        return sorted(names | {"memory/" + self.owner(tenant, trace_id)})

    def state(self, tenant: str, trace_id: str, scope: str | None = None,
              at: int | None = None) -> dict[str, JSON]:
        scope = scope or "memory/" + self.owner(tenant, trace_id)
        state: dict[str, JSON] = {}
        for e in self.trace(tenant, trace_id):
            if at is not None and e["seq"] > at:
                break
            if e["event"] == "CALLBACK_MEMORY_WRITE" and scope_of(e) == scope:
                if e["payload"].get("op") == "delete":
                    state.pop(e["payload"]["key"], None)
                else:
                    state[e["payload"]["key"]] = e["payload"]["value"]
        return state

    def memory_state(self, tenant: str, trace_id: str, scope: str | None = None,
                     at: int | None = None) -> Row:
        scope = scope or "memory/" + self.owner(tenant, trace_id)
        seq = len(self.trace(tenant, trace_id)) if at is None else at
        state = self.state(tenant, trace_id, scope, seq)
        return {"tenant": tenant, "trace_id": trace_id, "scope": scope, "seq": seq,
                "state": state, "memory_hash": jcs_hash(state)}

    def memory_diff(self, tenant: str, trace_id: str, from_seq: int, to_seq: int,
                    scope: str | None = None) -> Row:
        scope = scope or "memory/" + self.owner(tenant, trace_id)
        before = self.state(tenant, trace_id, scope, from_seq)
        after = self.state(tenant, trace_id, scope, to_seq)
        return {
            "tenant": tenant, "trace_id": trace_id, "scope": scope,
            "from_seq": from_seq, "to_seq": to_seq,
            "added": {k: v for k, v in after.items() if k not in before},
            "removed": {k: v for k, v in before.items() if k not in after},
            "changed": {k: {"from": before[k], "to": after[k]} for k in after
                        if k in before and rfc8785.dumps(before[k]) != rfc8785.dumps(after[k])},
        }

    def memory_history(self, tenant: str, trace_id: str, scope: str | None = None) -> list[Row]:
        """Every write of the trace (of one scope when named), in seq order."""
        rows = []
        for e in self.trace(tenant, trace_id):
            if e["event"] != "CALLBACK_MEMORY_WRITE" or scope not in (None, scope_of(e)):
                continue
            deleting = e["payload"].get("op") == "delete"
            rows.append({
                "tenant": tenant, "trace_id": trace_id, "seq": e["seq"], "scope": scope_of(e),
                "key": e["payload"]["key"], "op": "delete" if deleting else "set",
                "value": None if deleting else e["payload"]["value"],
                "memory_hash": jcs_hash(self.state(tenant, trace_id, scope_of(e), e["seq"])),
                "ts": utc(e["ts"]), "executed_by": e["executed_by"],
                "agent_owner": e["agent_owner"],
            })
        return rows

    # -- failures ---------------------------------------------------------------------

    def failure_rows(self, tenant: str) -> list[Row]:
        rows = []
        for trace_id, e, tool in self.annotated(tenant):
            if not is_failure(e):
                continue
            p = e["payload"]
            rows.append({
                "tenant": tenant, "trace_id": trace_id, "seq": e["seq"], "event": e["event"],
                "tool": tool,
                "executed_by": e["executed_by"], "ts": utc(e["ts"]),
                "reason": p.get("error_reason") if e["event"] == "TOOL_EXEC" else p.get("reason"),
                "error_class": p.get("error_class") if e["event"] == "TOOL_EXEC" else None,
                "error_code": (p.get("error_code")
                               if e["event"] in ("EXEC_FAIL", "EXEC_TERMINATED") else None),
            })
        return rows

    def failures(self, tenant: str, tool: str | None = None, agent: str | None = None,
                 event: str | None = None, trace_id: str | None = None,
                 since: str | None = None, until: str | None = None) -> list[Row]:
        return [r for r in self.failure_rows(tenant)
                if (tool is None or r["tool"] == tool)
                and (agent is None or r["executed_by"] == agent)
                and (event is None or r["event"] == event)
                and (trace_id is None or r["trace_id"] == trace_id)
                and in_window(r["ts"], since, until)]

    # -- attribution ------------------------------------------------------------------

    def grant_table(self, tenant: str) -> list[Row]:
        """Grants of the tenant in recorded order, with their (first) revocation."""
        table: dict[str, Row] = {}
        for op in self.grant_ops:
            if op.tenant != tenant:
                continue
            if op.action == "add":
                assert op.valid_from is not None
                table[op.grant_id] = {
                    "grant_id": op.grant_id, "tenant": tenant, "agent": op.agent,
                    "scope": op.scope,
                    "valid_from": utc(op.valid_from),
                    "valid_until": utc(op.valid_until) if op.valid_until else None,
                    "revoked_at": None,
                }
            elif table[op.grant_id]["revoked_at"] is None:
                assert op.at is not None
                table[op.grant_id]["revoked_at"] = utc(op.at)
        return list(table.values())

    def grants(self, tenant: str) -> list[Row]:
        return self.grant_table(tenant)

    def covering_grant(self, tenant: str, writer: str, scope: str, ts: str) -> str | None:
        covering = [g for g in self.grant_table(tenant)
                    if g["agent"] == writer and g["scope"] == scope and g["valid_from"] <= ts
                    and (g["valid_until"] is None or ts < g["valid_until"])
                    and (g["revoked_at"] is None or ts < g["revoked_at"])]
        if not covering:
            return None
        # The earliest valid_from; of equal ones, the smallest grant_id.
        first = min(covering, key=lambda g: (g["valid_from"], g["grant_id"]))
        return first["grant_id"]  # type: ignore[no-any-return]

    def attribution_rows(self, tenant: str) -> list[Row]:
        rows = []
        for trace_id in self.trace_ids(tenant):
            events = self.trace(tenant, trace_id)
            for i, e in enumerate(events):
                if e["event"] != "CALLBACK_MEMORY_WRITE":
                    continue
                scope, writer, ts = scope_of(e), e["executed_by"], utc(e["ts"])
                cross = scope != "memory/" + writer
                basis: str | None
                if not cross:
                    basis = "own_scope"
                else:
                    basis = None
                    permissions = [p for p in events[:i] if p["event"] == "CALLBACK_PERMISSION"
                                   and p["payload"]["executing_agent"] == writer
                                   and p["payload"]["scope"] == scope]
                    if permissions and permissions[-1]["payload"]["granted"] is True:
                        basis = f"permission:{permissions[-1]['seq']}"
                    else:
                        grant = self.covering_grant(tenant, writer, scope, ts)
                        if grant is not None:
                            basis = f"grant:{grant}"
                deleting = e["payload"].get("op") == "delete"
                rows.append({
                    "tenant": tenant, "trace_id": trace_id, "seq": e["seq"], "ts": ts,
                    "scope": scope,
                    "key": e["payload"]["key"], "op": "delete" if deleting else "set",
                    "executed_by": writer, "agent_owner": e["agent_owner"],
                    "cross_agent": cross, "authorized": basis is not None, "basis": basis,
                })
        return rows

    def audit_writes(self, tenant: str, scope: str | None = None, by: str | None = None,
                     key: str | None = None, trace_id: str | None = None,
                     since: str | None = None, until: str | None = None) -> list[Row]:
        return [r for r in self.attribution_rows(tenant)
                if (scope is None or r["scope"] == scope)
                and (by is None or r["executed_by"] == by)
                and (key is None or r["key"] == key)
                and (trace_id is None or r["trace_id"] == trace_id)
                and in_window(r["ts"], since, until)]

    # -- findings ---------------------------------------------------------------------

    def hash_mismatches(self, tenant: str) -> list[Row]:
        rows = []
        for trace_id in self.trace_ids(tenant):
            for e in self.trace(tenant, trace_id):
                claimed = e.get("memory_hash")
                if claimed is None:
                    continue
                actual = jcs_hash(self.state(tenant, trace_id, scope_of(e), e["seq"]))
                if claimed != actual:
                    rows.append({"tenant": tenant, "kind": "memory_hash_mismatch",
                                 "trace_id": trace_id, "seq": e["seq"]})
        return rows

    def audit_findings(self, tenant: str, kind: str | None = None,
                       trace_id: str | None = None) -> list[Row]:
        """The ledger's findings (memory-hash mismatches, conflicts) and every
        unauthorized write."""
        rows = self.hash_mismatches(tenant)
        rows += [{"tenant": tenant, "kind": "conflict", "trace_id": t, "seq": s}
                 for ten, t, s in self.conflicts if ten == tenant]
        rows += [{"tenant": tenant, "kind": "unauthorized_write", "trace_id": r["trace_id"],
                  "seq": r["seq"]} for r in self.attribution_rows(tenant) if not r["authorized"]]
        return [r for r in rows if (kind is None or r["kind"] == kind)
                and (trace_id is None or r["trace_id"] == trace_id)]

    # -- recoveries and statistics ----------------------------------------------------

    def recovery_rows(self, tenant: str) -> list[Row]:
        """Every retry and fallback with whether it recovered (seq order, whole trace)."""
        rows = []
        for trace_id in self.trace_ids(tenant):
            events = self.trace(tenant, trace_id)
            for i, e in enumerate(events):
                later = events[i + 1:]
                if e["event"] == "CALLBACK_RETRY":
                    tool, recovered = e["payload"]["tool"], False
                    for x in later:
                        if x["event"] in STOPS_RECOVERY:
                            break
                        if x["event"] == "TOOL_EXEC" and x["payload"]["tool"] == tool:
                            recovered = x["payload"]["success"] is True
                            break
                    rows.append({"kind": "retry", "trace_id": trace_id, "seq": e["seq"],
                                 "tool": tool, "fallback_tool": None,
                                 "executed_by": e["executed_by"], "ts": utc(e["ts"]),
                                 "recovered": recovered})
                elif e["event"] == "CALLBACK_FALLBACK":
                    tool, recovered = e["payload"]["fallback_tool"], False
                    for x in later:
                        if x["event"] in STOPS_RECOVERY:
                            break
                        if (x["event"] == "TOOL_EXEC" and x["payload"]["tool"] == tool
                                and x["payload"]["success"] is True):
                            recovered = True
                            break
                    rows.append({"kind": "fallback", "trace_id": trace_id, "seq": e["seq"],
                                 "tool": e["payload"]["original_tool"], "fallback_tool": tool,
                                 "executed_by": e["executed_by"], "ts": utc(e["ts"]),
                                 "recovered": recovered})
        return rows

    def tool_execs(self, tenant: str, since: str | None, until: str | None) -> list[Row]:
        return [e for _, e, _ in self.annotated(tenant)
                if e["event"] == "TOOL_EXEC" and in_window(utc(e["ts"]), since, until)]

    def _recovery_stats(self, tenant: str, kind: str, by: str, since: str | None,
                        until: str | None) -> list[Row]:
        count_name = "fallbacks" if kind == "fallback" else "retries"
        # --by: the row's key fields, and the value TOOL_EXECs are counted by for it
        # (for a pair, the original tool's execs).
        keyers: dict[str, Callable[[Row], tuple[Row, Any]]] = {
            "tool": lambda r: ({"tool": r["tool"]}, r["tool"]),
            "pair": lambda r: ({"tool": r["tool"], "fallback_tool": r["fallback_tool"]},
                               r["tool"]),
            "agent": lambda r: ({"executed_by": r["executed_by"]}, r["executed_by"]),
            "day": lambda r: ({"day": r["ts"][:10]}, r["ts"][:10]),
        }
        exec_keyers: dict[str, Callable[[Row], Any]] = {
            "tool": lambda e: e["payload"]["tool"], "pair": lambda e: e["payload"]["tool"],
            "agent": lambda e: e["executed_by"], "day": lambda e: utc(e["ts"])[:10],
        }
        execs: dict[Any, int] = defaultdict(int)
        for e in self.tool_execs(tenant, since, until):
            execs[exec_keyers[by](e)] += 1
        groups: dict[tuple[Any, ...], Row] = {}
        for r in self.recovery_rows(tenant):
            if r["kind"] != kind or not in_window(r["ts"], since, until):
                continue
            key, exec_key = keyers[by](r)
            row = groups.setdefault(tuple(key.values()), {
                **key, count_name: 0, "recovered": 0, "tool_execs": execs[exec_key]})
            row[count_name] += 1
            row["recovered"] += r["recovered"]
        return [{**row, "rate": ratio(row[count_name], row["tool_execs"])}
                for row in groups.values()]

    def fallback_stats(self, tenant: str, by: str = "tool", since: str | None = None,
                       until: str | None = None) -> list[Row]:
        return self._recovery_stats(tenant, "fallback", by, since, until)

    def retry_stats(self, tenant: str, by: str = "tool", since: str | None = None,
                    until: str | None = None) -> list[Row]:
        assert by in ("tool", "agent", "day")
        return self._recovery_stats(tenant, "retry", by, since, until)

    def failure_stats(self, tenant: str, by: str = "tool", since: str | None = None,
                      until: str | None = None) -> list[Row]:
        """Failure points per key with their share; per tool and agent also the failed
        TOOL_EXECs over all TOOL_EXECs (docs/CLI.md, ``stats failures``)."""
        field = {"tool": "tool", "reason": "reason", "agent": "executed_by"}[by]
        rows = self.failures(tenant, since=since, until=until)
        execs: dict[Any, int] = defaultdict(int)
        for e in self.tool_execs(tenant, since, until):
            execs[e["payload"]["tool"] if by == "tool" else e["executed_by"]] += 1
        out = []
        for key in {r[field] for r in rows}:
            mine = [r for r in rows if r[field] == key]
            row: Row = {field: key, "failures": len(mine), "share": len(mine) / len(rows)}
            if by in ("tool", "agent"):
                failed = sum(1 for r in mine if r["event"] == "TOOL_EXEC")
                row |= {"failed_execs": failed, "tool_execs": execs[key],
                        "rate": ratio(failed, execs[key])}
            out.append(row)
        return out

    def unknown_callback_stats(self, tenant: str, by: str = "event", since: str | None = None,
                               until: str | None = None) -> list[Row]:
        """Events of CALLBACK_* subtypes the contract does not name, per subtype, agent or
        UTC day, with the traces they are in and first and last times (docs/CLI.md)."""
        field = {"event": "event", "agent": "executed_by", "day": "day"}[by]
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for trace_id, e, _ in self.annotated(tenant):
            ts = utc(e["ts"])
            if (e["event"].startswith("CALLBACK_") and e["event"] not in NAMED_CALLBACKS
                    and in_window(ts, since, until)):
                groups[ts[:10] if by == "day" else e[field]].append((trace_id, ts))
        return [{field: key, "events": len(seen), "traces": len({t for t, _ in seen}),
                 "first_ts": min(ts for _, ts in seen), "last_ts": max(ts for _, ts in seen)}
                for key, seen in groups.items()]
