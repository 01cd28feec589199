"""The ``findings`` projection: the ledger's integrity findings, per tenant.

The ledger records a finding in the tenant's ``$findings`` stream when a runtime's
claimed memory hash differs from what its logged writes imply, or when someone
submits a conflicting version of a stored event. This table makes them queryable
next to the unauthorized writes of the ``attribution`` projection.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger import chain
from projections.base import Batch, Entry, Projection

INSERT = (
    "INSERT INTO {findings} (tenant, finding_seq, kind, trace_id, seq, detail, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class FindingsProjection(Projection):
    name = "findings"
    version = 2  # 2: the key a unique index, built after the rows in a rebuild
    topics = frozenset({chain.FINDING_TOPIC})
    tables = ("findings",)
    description = "integrity findings recorded by the ledger (conflicts, memory-hash mismatches)"
    ddl = (
        "CREATE TABLE IF NOT EXISTS {findings} (tenant TEXT NOT NULL, finding_seq {bigint} "
        "NOT NULL, kind TEXT NOT NULL, trace_id TEXT, seq {bigint}, detail TEXT, "
        "recorded_at TEXT)",
    )
    query_indexes = (
        "CREATE UNIQUE INDEX IF NOT EXISTS agentledger_findings_key "
        "ON {findings} (tenant, finding_seq)",
        "CREATE INDEX IF NOT EXISTS agentledger_findings_trace "
        "ON {findings} (tenant, trace_id, seq)",
    )

    def apply(self, entries: Sequence[Entry], batch: Batch) -> None:
        for entry in entries:
            r = entry.record
            batch.insert(INSERT, (
                r["tenant"], entry.version, r.get("finding"), r.get("trace_id"), r.get("seq"),
                r.get("detail"), r.get("recorded_at")))
