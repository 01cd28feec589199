"""Every view table's rows in a fixed order: what tests compare views by."""

from __future__ import annotations

from typing import Any

from ledger.store import Store
from projections.sql import VIEW_TABLES, view_db

ORDER = {  # every table a projection fills, and what orders its rows
    "memory_writes": "tenant, trace_id, seq", "failures": "tenant, trace_id, seq",
    "write_attribution": "tenant, trace_id, seq", "grants": "tenant, grant_id",
    "tool_calls": "tenant, trace_id, seq", "tool_hourly": "tenant, hour, tool, executed_by",
    "failure_hourly": "tenant, hour, tool, reason, executed_by",
    "recoveries": "tenant, trace_id, seq", "findings": "tenant, finding_seq",
    "unknown_callbacks": "tenant, trace_id, seq",
    "projection_context": "projection, stream",
    "unreadable_entries": "projection, notification_id",
}


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every view table's rows, in a fixed order."""
    db = view_db(store.backend)
    return {t: db.query("SELECT * FROM {" + t + "} ORDER BY " + ORDER[t])
            for t in VIEW_TABLES if t in ORDER}
