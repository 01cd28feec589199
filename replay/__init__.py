"""AgentLedger's replayer: fork a chain at any point, re-run it under another policy.

Public API (see docs/REPLAY.md)::

    from replay import Replayer, load_policy
    result = Replayer(store).replay("acme", "q4-market-report", load_policy("p.yaml"))
    result.replay_status, result.first_divergence, result.memory_diff
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replay.policy import Policy, load_policy
    from replay.replayer import Replayer, ReplayResult

_EXPORTS = {
    "Policy": "replay.policy", "load_policy": "replay.policy",
    "Replayer": "replay.replayer", "ReplayResult": "replay.replayer",
}
__all__ = ["Policy", "ReplayResult", "Replayer", "load_policy"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'replay' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
