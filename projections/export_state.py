"""What an audit export keeps while it writes, in memory that grows neither with the
tenant's events, problems or findings, nor with its traces.

- ``ListedTraces``: the traces of the window, in the catalog's order.
- ``EventStatuses``: each event's verification status, looked up a trace at a time.
- ``spooled_findings``: the tenant's findings as they stood when it was verified.
- ``ExportedEvents``: which events the export wrote, as runs of seqs per trace.

Past ``KEPT`` traces (or 1,000 problems) they keep the rest in temporary files.
"""

from __future__ import annotations

import pickle
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any, NamedTuple
from uuid import UUID

import orjson

from ledger import chain, problem_log
from ledger.backends.base import StreamQuery
from ledger.problem_log import ProblemLog
from ledger.scratch_db import ScratchDB
from ledger.store import Store
from projections.queries import FindingRow, stream_audit_findings

KEPT = 10_000
"""Traces whose runs of exported seqs are kept in memory; past them, a temporary file.
A tenant may have millions of traces: each took about 0.6 KB when all were held."""


class Trace(NamedTuple):
    """What the export needs of a trace it writes."""

    stream_id: UUID
    name: str
    last_seq: int


class ListedTraces:
    """The traces of a tenant active in a window, in the catalog's order (the order
    ``trace list`` gives), listed once and read back from a spooled file."""

    def __init__(self, store: Store, query: StreamQuery) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 * 2**20)  # noqa: SIM115
        self.rows = 0  # the rows the catalog gives them
        with closing(store.backend.iter_streams(query)) as listed:
            for h in listed:  # pickled: a name in an altered catalog may be any text
                self._spool.write(pickle.dumps((h.stream_id.bytes, h.name, h.last_seq)))
                self.rows += h.last_seq

    def __iter__(self) -> Iterator[Trace]:
        self._spool.seek(0)
        while True:
            try:
                key, name, last_seq = pickle.load(self._spool)  # our own file
            except EOFError:
                return
            yield Trace(UUID(bytes=key), name, last_seq)

    def close(self) -> None:
        self._spool.close()


class EventStatuses:
    """Each event's verification status: "kind,kind" of the problems verify tied to it
    (``OK`` for none), looked up a trace at a time. Held in a dict; past the problems a
    report keeps in memory (a tenant altered throughout), in a temporary SQLite file."""

    def __init__(self, problems: ProblemLog, tenant: str) -> None:
        tied = ((p.trace_id, p.seq, p.kind) for p in problems
                if p.tenant == tenant and isinstance(p.trace_id, str) and p.seq is not None)
        self._db: sqlite3.Connection | None = None
        self._kinds: dict[str, dict[int, set[str]]] = {}
        if len(problems) <= problem_log.KEPT:
            for trace, seq, kind in tied:
                self._kinds.setdefault(trace, {}).setdefault(seq, set()).add(kind)
            return
        self._scratch = ScratchDB("agentledger-statuses-")
        self._db = db = self._scratch.connection
        db.execute("BEGIN")  # one transaction
        db.execute("CREATE TABLE tied (trace TEXT, seq INTEGER, kind TEXT)")
        db.executemany("INSERT INTO tied VALUES (?, ?, ?)", tied)
        db.execute("CREATE INDEX by_trace ON tied (trace, seq, kind)")
        db.execute("COMMIT")

    def of(self, trace: str) -> dict[int, str]:
        """seq -> status of the trace's events with a problem."""
        if self._db is None:
            kinds = self._kinds.get(trace, {})
        else:
            kinds = {}
            for seq, kind in self._db.execute(
                    "SELECT seq, kind FROM tied WHERE trace = ?", (trace,)):
                kinds.setdefault(seq, set()).add(kind)
        return {seq: ",".join(sorted(k)) for seq, k in kinds.items()}

    def close(self) -> None:
        if self._db is not None:
            self._scratch.close()


@contextmanager
def spooled_findings(store: Store, tenant: str) -> Iterator[Iterator[FindingRow]]:
    """The tenant's findings as they are now, kept in a temporary file (on disk past
    8 MiB) until read back: a tenant may have a finding per event."""
    with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as spool:
        with closing(stream_audit_findings(store, tenant)) as found:
            for finding in found:
                spool.write(chain.encode(finding.as_json()) + b"\n")
        spool.seek(0)
        yield (FindingRow(**orjson.loads(line)) for line in spool)


class ExportedEvents:
    """Which (trace, seq) an export wrote, as runs of seqs per trace (a trace's events
    in a window have consecutive seqs): ``KEPT`` traces' runs in memory, then in a
    temporary SQLite file."""

    def __init__(self) -> None:
        self._runs: dict[str, list[int]] = {}  # trace -> [first, last, first, last, ...]
        self._scratch: ScratchDB | None = None

    def add(self, trace: str, seq: Any) -> None:
        if not isinstance(seq, int):
            return  # an altered record's: no finding names such a seq
        runs = self._runs.get(trace)
        if runs is None:
            if len(self._runs) >= KEPT:
                self._spill()
            runs = self._runs[trace] = []
        if runs and runs[-1] + 1 == seq:
            runs[-1] = seq
        else:
            runs += (seq, seq)

    def holds(self, trace: str | None, seq: int | None) -> bool:
        if seq is None or trace is None:
            return False
        runs = self._runs.get(trace, ())
        if any(runs[i] <= seq <= runs[i + 1] for i in range(0, len(runs), 2)):
            return True
        return self._scratch is not None and self._scratch.connection.execute(
            "SELECT 1 FROM runs WHERE trace = ? AND first <= ? AND last >= ? LIMIT 1",
            (trace, seq, seq)).fetchone() is not None

    def _spill(self) -> None:
        if self._scratch is None:
            self._scratch = ScratchDB("agentledger-exported-")
            db = self._scratch.connection
            db.execute("CREATE TABLE runs (trace TEXT, first INTEGER, last INTEGER)")
            db.execute("CREATE INDEX by_trace ON runs (trace, first)")
            db.execute("BEGIN")  # never committed: see conflict_attempts.AttemptSet
        self._scratch.connection.executemany("INSERT INTO runs VALUES (?, ?, ?)", (
            (trace, runs[i], runs[i + 1]) for trace, runs in self._runs.items()
            for i in range(0, len(runs), 2)))
        self._runs = {}

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
