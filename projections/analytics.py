"""The ``analytics`` projection: tool calls, retries and fallbacks, and their outcomes.

``tool_calls`` has a row per ``TOOL_EXEC``; ``tool_hourly`` counts them per
(tenant, UTC hour, tool, agent) so statistics over whole hours read a few rows;
``recoveries`` has a row per ``CALLBACK_RETRY`` / ``CALLBACK_FALLBACK`` with
``recovered`` set once the retried or fallback tool succeeds (docs/PROJECTIONS.md
defines exactly when). Open retries and fallbacks are per-trace context.
``unknown_callbacks`` has a row per event of a ``CALLBACK_*`` subtype the contract
does not name (accepted as forward compatible, and counted there).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

from ledger import chain
from ledger.payloads import KNOWN_EVENTS
from projections.base import Batch, Entry, Projection, group_key, utc_ts

INSERT_CALL = (
    "INSERT INTO {tool_calls} (tenant, trace_id, seq, ts, day, tool, executed_by, success, "
    "attempt, error_class, args_digest, call_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_HOURLY = (
    "INSERT INTO {tool_hourly} AS h (tenant, hour, group_key, tool, executed_by, execs, "
    "failures) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, hour, group_key) DO UPDATE "
    "SET execs = h.execs + excluded.execs, failures = h.failures + excluded.failures"
)
INSERT_RECOVERY = (
    "INSERT INTO {recoveries} (tenant, trace_id, seq, ts, day, kind, tool, fallback_tool, "
    "attempt, executed_by, recovered, recovered_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_UNKNOWN = (
    "INSERT INTO {unknown_callbacks} (tenant, trace_id, seq, ts, day, event, executed_by) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
MARK_RECOVERED = (
    "UPDATE {recoveries} SET recovered = 1, recovered_seq = ? "
    "WHERE tenant = ? AND trace_id = ? AND seq = ?"
)


def args_digest(args: Any) -> str:
    """Identity of a call's args: sha256 of their JSON with sorted keys (exact match key).

    Not JCS: ``1`` and ``1.0`` differ here, which is what a strict cassette match wants.
    """
    return "sha256:" + hashlib.sha256(chain.encode(args, sort_keys=True)).hexdigest()


def call_key(tenant: str, tool: str, digest: str) -> int:
    """Where the cassette finds the calls of ``tool`` with args ``digest`` (an
    ``args_digest``) in ``tenant``: a signed 64-bit integer, the digest's first 8 bytes
    XOR the first 8 bytes of sha256 over tenant, NUL, tool (UTF-8).

    A bucket, not an identity: the cassette compares tenant, tool and digest as well,
    so two calls that share a key by chance (about 1 in 2**64) cost a row read, never a
    wrong answer. One integer keeps the index small and cheap to build and to write: 2.5 MB
    at 1M events, against 54 MB for the covering index it replaced (docs/PROJECTIONS.md).
    """
    key = int(digest[7:23], 16) ^ _scope_key(tenant, tool)
    return key - (1 << 64) if key >= 1 << 63 else key


@functools.lru_cache(maxsize=4096)
def _scope_key(tenant: str, tool: str) -> int:
    scope = f"{tenant}\0{tool}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(scope).digest()[:8], "big")


_CLOSERS = frozenset({"REASONER_ACTION", "CALLBACK_FALLBACK", "EXEC_TERMINATED"})


class AnalyticsProjection(Projection):
    name = "analytics"
    # 2: args_digest, for replay's cassette; 3: hourly rollup; 4: covering index;
    # 5: the key a unique index, built after the rows in a rebuild; 6: unknown callbacks;
    # 7: the cassette's index on one integer (call_key); 8: the hourly key holds names of
    # any length (``group_key``)
    version = 8
    topics = frozenset({chain.EVENT_TOPIC})
    tables = ("tool_calls", "tool_hourly", "recoveries", "unknown_callbacks")
    description = ("tool calls, retries and fallbacks with their outcomes, hourly counts; "
                   "unknown callback subtypes")
    ddl = (
        "CREATE TABLE IF NOT EXISTS {tool_calls} (tenant TEXT NOT NULL, trace_id TEXT NOT NULL, "
        "seq {bigint} NOT NULL, ts TEXT NOT NULL, day TEXT NOT NULL, tool TEXT NOT NULL, "
        "executed_by TEXT NOT NULL, success INTEGER NOT NULL, attempt {bigint}, "
        "error_class TEXT, args_digest TEXT NOT NULL, call_key {bigint} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {tool_hourly} (tenant TEXT NOT NULL, hour TEXT NOT NULL, "
        "group_key TEXT NOT NULL, tool TEXT NOT NULL, executed_by TEXT NOT NULL, "
        "execs {bigint} NOT NULL, failures {bigint} NOT NULL, "
        "PRIMARY KEY (tenant, hour, group_key))",
        "CREATE TABLE IF NOT EXISTS {recoveries} (tenant TEXT NOT NULL, trace_id TEXT NOT NULL, "
        "seq {bigint} NOT NULL, ts TEXT NOT NULL, day TEXT NOT NULL, kind TEXT NOT NULL, "
        "tool TEXT NOT NULL, fallback_tool TEXT, attempt {bigint}, executed_by TEXT NOT NULL, "
        "recovered INTEGER NOT NULL, recovered_seq {bigint}, "
        "PRIMARY KEY (tenant, trace_id, seq))",
        "CREATE TABLE IF NOT EXISTS {unknown_callbacks} (tenant TEXT NOT NULL, "
        "trace_id TEXT NOT NULL, seq {bigint} NOT NULL, ts TEXT NOT NULL, day TEXT NOT NULL, "
        "event TEXT NOT NULL, executed_by TEXT NOT NULL)",
    )
    sums = {"tool_hourly": (("tenant", "hour", "group_key", "tool", "executed_by"),
                            ("execs", "failures"))}
    query_indexes = (
        "CREATE UNIQUE INDEX IF NOT EXISTS agentledger_tool_calls_key "
        "ON {tool_calls} (tenant, trace_id, seq)",
        "CREATE INDEX IF NOT EXISTS agentledger_tool_calls_ts ON {tool_calls} (tenant, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_tool_calls_call ON {tool_calls} (call_key)",
        "CREATE INDEX IF NOT EXISTS agentledger_recoveries_ts "
        "ON {recoveries} (tenant, kind, ts)",
        "CREATE UNIQUE INDEX IF NOT EXISTS agentledger_unknown_callbacks_key "
        "ON {unknown_callbacks} (tenant, trace_id, seq)",
        "CREATE INDEX IF NOT EXISTS agentledger_unknown_callbacks_ts "
        "ON {unknown_callbacks} (tenant, ts)",
    )

    def apply(self, entries: Sequence[Entry], batch: Batch) -> None:
        # counts by hour, and recoveries first seen in this batch: queued by finish
        hourly: dict[tuple[str, str, str, str], list[int]] = batch.carry.setdefault(
            "hourly", {})
        new: dict[tuple[str, str, int], list[Any]] = batch.carry.setdefault("new", {})
        for entry in entries:
            r = entry.record
            event = r["event"]
            if event == "TOOL_EXEC":
                self._tool_exec(entry, batch, hourly, new)
            elif event in _CLOSERS or event == "CALLBACK_RETRY":
                ctx = batch.context(entry.stream)
                if event in _CLOSERS and ctx.get("open"):
                    ctx["open"] = []
                    batch.touch(entry.stream)
                if event in ("CALLBACK_RETRY", "CALLBACK_FALLBACK"):
                    self._open(entry, ctx, batch, new)
            elif event not in KNOWN_EVENTS:  # stored, so a CALLBACK_* subtype (the contract)
                ts = utc_ts(r)
                batch.insert(INSERT_UNKNOWN, (r["tenant"], r["trace_id"], r["seq"], ts, ts[:10],
                                              event, r["executed_by"]))

    def finish(self, batch: Batch) -> None:
        for row in batch.carry.get("new", {}).values():
            batch.insert(INSERT_RECOVERY, tuple(row))
        for (tenant, hour, tool, agent), (execs, failures) in batch.carry.get(
                "hourly", {}).items():
            batch.insert(UPSERT_HOURLY, (tenant, hour, group_key(tool, agent), tool, agent,
                                         execs, failures))

    def _open(self, entry: Entry, ctx: dict[str, Any], batch: Batch,
              new: dict[tuple[str, str, int], list[Any]]) -> None:
        r, p = entry.record, entry.record["payload"]
        ts = utc_ts(r)
        if r["event"] == "CALLBACK_RETRY":
            kind, tool, fallback = "retry", p["tool"], None
            target, attempt = tool, p["attempt"]
        else:
            kind, tool, fallback = "fallback", p["original_tool"], p["fallback_tool"]
            target, attempt = fallback, None
        new[(r["tenant"], r["trace_id"], r["seq"])] = [
            r["tenant"], r["trace_id"], r["seq"], ts, ts[:10], kind, tool, fallback, attempt,
            r["executed_by"], 0, None]
        ctx.setdefault("open", []).append([r["seq"], kind, target])
        batch.touch(entry.stream)

    def _tool_exec(self, entry: Entry, batch: Batch, hourly: dict[tuple[str, str, str, str],
                   list[int]], new: dict[tuple[str, str, int], list[Any]]) -> None:
        r, p = entry.record, entry.record["payload"]
        tenant, trace, tool, ts = r["tenant"], r["trace_id"], p["tool"], utc_ts(r)
        success, digest = p["success"] is True, args_digest(p.get("args"))
        batch.insert(INSERT_CALL, (
            tenant, trace, r["seq"], ts, ts[:10], tool, r["executed_by"], int(success),
            p.get("attempt", 1), p.get("error_class"), digest, call_key(tenant, tool, digest)))
        counts = hourly.setdefault((tenant, ts[:13], tool, r["executed_by"]), [0, 0])
        counts[0] += 1
        counts[1] += not success
        ctx = batch.context(entry.stream)
        still_open = []
        for item in ctx.get("open", ()):
            seq, kind, target = item
            if target != tool:
                still_open.append(item)
            elif success:
                pending = new.get((tenant, trace, seq))
                if pending is not None:
                    pending[10], pending[11] = 1, r["seq"]
                else:
                    batch.run(MARK_RECOVERED, (r["seq"], tenant, trace, seq))
            elif kind == "fallback":  # a failed fallback call may still be retried
                still_open.append(item)
        if len(still_open) != len(ctx.get("open", ())):
            ctx["open"] = still_open
            batch.touch(entry.stream)
