"""``TraceWriter``: the Python API a runtime calls instead of writing trace files.

``record`` assigns the next seq of the trace, computes the memory hash, validates
the event against the contract and stages it. With ``batch_size=1`` (the default)
every call is durable when it returns; with a larger ``batch_size`` events are
written when that many are staged, on :meth:`flush`, and on ``close`` / leaving the
``with`` block. Until then they are in memory only: a crash loses staged events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ledger.appender import Appender
from ledger.chain import DEFAULT_TENANT
from ledger.errors import ConflictError, SequenceError
from ledger.events import parse_event
from ledger.store import Store


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record`` did: the event's seq, memory hash and record hash."""

    trace_id: str
    seq: int
    memory_hash: str
    record_hash: str


class TraceWriter:
    """Records events of one tenant's traces into a store."""

    def __init__(self, store: Store, *, tenant: str = DEFAULT_TENANT, batch_size: int = 1) -> None:
        self.store = store
        self.tenant = tenant
        self.batch_size = max(1, batch_size)
        self._appender = Appender(store)

    def record(
        self,
        trace_id: str,
        event: str,
        payload: dict[str, Any],
        *,
        agent_owner: str,
        executed_by: str,
        write_scope: str | None = None,
        ts: datetime | str | None = None,
    ) -> Recorded:
        """Validate and stage one event at the trace's next seq; see the module doc."""
        seq = self._appender.next_seq(self.tenant, trace_id)
        when = ts or datetime.now(UTC)
        wire: dict[str, Any] = {
            "tenant": self.tenant, "trace_id": trace_id, "seq": seq, "event": event,
            "ts": when if isinstance(when, str) else _rfc3339(when),
            "agent_owner": agent_owner, "executed_by": executed_by, "payload": payload,
        }
        if write_scope is not None:
            wire["write_scope"] = write_scope
        parsed = parse_event(wire)
        [outcome] = self._appender.stage([parsed], fill_memory_hash=True)
        if outcome.status != "accepted":
            if outcome.error is not None:
                raise outcome.error
            if outcome.kind == "gap":
                raise SequenceError(outcome.reason or "out of order", field="seq")
            raise ConflictError(outcome.reason or f"seq {seq} of {trace_id} is already stored")
        assert outcome.memory_hash is not None and outcome.record_hash is not None
        if self._appender.staged >= self.batch_size:
            self.flush()
        return Recorded(trace_id, seq, outcome.memory_hash, outcome.record_hash)

    def flush(self) -> int:
        """Write staged events now; return how many were written.

        If another writer appended to one of the traces first, this raises
        ``ConcurrencyError``, drops what was staged, and rereads those traces' heads
        on the next ``record``.
        """
        return self._appender.flush()

    def close(self) -> None:
        """Flush what is staged."""
        self.flush()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _rfc3339(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
