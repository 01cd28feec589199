"""The conflicts a tenant's findings stream records, as attempts, so each is recorded once.

A conflict (a resubmitted event that differs from the one stored at its seq) is
recorded as a finding once per distinct attempt: a re-run of the same file is not a
new one. So an ingest knows the attempts recorded for each tenant it meets a
conflict in. They were a set of ``(trace_id, seq, digest)`` tuples, about 270 bytes
each, read from the whole findings stream at once (each finding holding the event it
is about): a tenant with millions of conflicts, a large file resubmitted changed,
grew an ingest by gigabytes. Here an attempt is one JSON text of about 100 bytes, kept
in a set up to ``KEPT`` of them and past that in a temporary SQLite file, and the
stream is read ``PAGE`` findings at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from ledger import chain
from ledger.scratch_db import ScratchDB

KEPT = 10_000  # attempts held in memory, per tenant; past that, on disk
PAGE = 1_000  # findings read at a time

Attempt = bytes
"""``[trace_id, seq, digest of the attempted event]`` as JSON: equal texts, same attempt."""


def attempt(trace_id: Any, seq: Any, attempted: Any) -> Attempt:
    digest = sha256(chain.encode(attempted, sort_keys=True)).hexdigest()
    return chain.encode([trace_id, seq, digest])


def attempts_in(states: Iterable[bytes]) -> Iterator[Attempt]:
    """The attempts of the conflict findings among stored findings' bytes."""
    for state in states:
        try:
            record = chain.decode(state)
        except ValueError:  # altered behind the ledger's back: verify names it
            continue
        if isinstance(record, dict) and record.get("finding") == "conflict":
            yield attempt(record.get("trace_id"), record.get("seq"), record.get("evidence"))


class AttemptSet:
    """A set of attempts: in memory up to ``KEPT``, then in a temporary SQLite file
    (removed with the set)."""

    def __init__(self) -> None:
        self._held: set[Attempt] = set()
        self._scratch: ScratchDB | None = None  # removed with this set
        self._db: sqlite3.Connection | None = None

    def __contains__(self, item: Attempt) -> bool:
        if item in self._held:
            return True
        return self._db is not None and self._db.execute(
            "SELECT 1 FROM attempts WHERE attempt = ?", (item,)).fetchone() is not None

    def add(self, item: Attempt) -> None:
        if self._db is not None:
            self._db.execute("INSERT OR IGNORE INTO attempts VALUES (?)", (item,))
            return
        self._held.add(item)
        if len(self._held) > KEPT:
            self._spill()

    def update(self, items: Iterable[Attempt]) -> None:
        for item in items:
            self.add(item)

    def _spill(self) -> None:
        scratch = ScratchDB("agentledger-attempts-")
        db = scratch.connection
        db.execute("CREATE TABLE attempts (attempt BLOB PRIMARY KEY) WITHOUT ROWID")
        db.execute("BEGIN")  # one transaction, never committed: its pages go to the file
        db.executemany("INSERT INTO attempts VALUES (?)", ((a,) for a in self._held))
        # past SQLite's small page cache, and each insert after is a lookup, not a commit
        self._scratch, self._db, self._held = scratch, db, set()


@dataclass(slots=True)
class RecordedConflicts:
    """A tenant's conflict findings as attempts, and the findings stream's version
    read up to."""

    attempts: AttemptSet
    upto: int
