"""AgentLedger's ledger: immutable, hash-chained per-trace streams.

Public API (imported lazily so the CLI starts fast)::

    from ledger import Store, TraceWriter, ingest, verify
    with Store.open("sqlite:///agentledger.db") as store:
        ingest(store, ["traces.jsonl"])
        assert verify(store).ok
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.appender import Appender, Outcome
    from ledger.errors import LedgerError
    from ledger.events import TraceEvent, parse_event, parse_line
    from ledger.ingest import IngestSummary, ingest
    from ledger.store import Store
    from ledger.verify import VerifyReport, verify
    from ledger.writer import Recorded, TraceWriter

_EXPORTS = {
    "Appender": "ledger.appender", "Outcome": "ledger.appender",
    "LedgerError": "ledger.errors",
    "TraceEvent": "ledger.events", "parse_event": "ledger.events", "parse_line": "ledger.events",
    "IngestSummary": "ledger.ingest", "ingest": "ledger.ingest",
    "Store": "ledger.store",
    "VerifyReport": "ledger.verify", "verify": "ledger.verify",
    "Recorded": "ledger.writer", "TraceWriter": "ledger.writer",
}
__all__ = [
    "Appender", "IngestSummary", "LedgerError", "Outcome", "Recorded", "Store", "TraceEvent",
    "TraceWriter", "VerifyReport", "ingest", "parse_event", "parse_line", "verify",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
