"""AgentLedger's read models: projections of the ledger's notification log.

Public API (see docs/PROJECTIONS.md)::

    from projections import Projector, queries
    Projector(store).attach()       # views follow every commit through `store`
    queries.failures(store, "acme", tool="search")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from projections import queries
    from projections.base import ProjectionStatus
    from projections.runner import Projector

__all__ = ["ProjectionStatus", "Projector", "queries"]


def __getattr__(name: str) -> Any:
    if name == "queries":
        return importlib.import_module("projections.queries")
    if name == "Projector":
        return importlib.import_module("projections.runner").Projector
    if name == "ProjectionStatus":
        return importlib.import_module("projections.base").ProjectionStatus
    raise AttributeError(f"module 'projections' has no attribute {name!r}")
