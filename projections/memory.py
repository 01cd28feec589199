"""The ``memory`` projection: every memory write, so any state at any seq can be read.

Rows are the writes themselves (key, op, value) with the ledger's hash of the
scope's state after each; the state at seq N is the fold of the scope's writes
up to N (``projections.queries.memory``). Storing deltas, not whole states, keeps
the table linear in the number of writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger import chain
from projections.base import Batch, Entry, Projection, indexed, json_text, utc_ts

INSERT = (
    "INSERT INTO {memory_writes} (tenant, trace_id, seq, scope, key, op, value, memory_hash, "
    "ts, executed_by, agent_owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class MemoryProjection(Projection):
    name = "memory"
    # 2: the key a unique index, built after the rows in a rebuild; 3: the scope index holds
    # scopes of any length (``indexed``)
    version = 3
    topics = frozenset({chain.EVENT_TOPIC})
    tables = ("memory_writes",)
    description = "memory writes: state of any (trace, scope) at any seq, diffs, history"
    ddl = (
        "CREATE TABLE IF NOT EXISTS {memory_writes} (tenant TEXT NOT NULL, "
        "trace_id TEXT NOT NULL, seq {bigint} NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, "
        "op TEXT NOT NULL, value TEXT, memory_hash TEXT NOT NULL, ts TEXT NOT NULL, "
        "executed_by TEXT NOT NULL, agent_owner TEXT NOT NULL)",
    )
    query_indexes = (
        "CREATE UNIQUE INDEX IF NOT EXISTS agentledger_memory_writes_key "
        "ON {memory_writes} (tenant, trace_id, seq)",
        "CREATE INDEX IF NOT EXISTS agentledger_memory_writes_scope "
        f"ON {{memory_writes}} (tenant, trace_id, {indexed('scope')}, seq)",
    )

    def apply(self, entries: Sequence[Entry], batch: Batch) -> None:
        for entry in entries:
            r = entry.record
            if r.get("event") != "CALLBACK_MEMORY_WRITE":
                continue
            payload = r["payload"]
            deleting = payload.get("op") == "delete"
            batch.insert(INSERT, (
                r["tenant"], r["trace_id"], r["seq"], r["write_scope"], payload["key"],
                "delete" if deleting else "set",
                None if deleting else json_text(payload.get("value")),
                r["ledger_memory_hash"], utc_ts(r), r["executed_by"], r["agent_owner"]))
