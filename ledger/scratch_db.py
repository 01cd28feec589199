"""A SQLite database in a temporary file, for working state too large for memory.

Past a bound, what a command must look up again and again goes here instead of a
Python set or dict: ingest's conflict attempts of a tenant, an export's statuses of
events with problems. Only the object that made it uses it, so it keeps no journal
(nothing to roll back to) and is removed when closed or when the object goes.
"""

from __future__ import annotations

import sqlite3
import tempfile
import weakref
from typing import IO


class ScratchDB:
    """A connection (in autocommit mode: ``BEGIN`` and ``COMMIT`` as wanted) to a new
    SQLite file, readable only by this user."""

    def __init__(self, prefix: str) -> None:
        file: IO[bytes] = tempfile.NamedTemporaryFile(prefix=prefix)  # noqa: SIM115
        self.connection = sqlite3.connect(file.name, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode = OFF")
        self._gone = weakref.finalize(self, _close, self.connection, file)

    def close(self) -> None:
        self._gone()


def _close(connection: sqlite3.Connection, file: IO[bytes]) -> None:
    connection.close()
    file.close()  # and removed
