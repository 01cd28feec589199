"""How a SQLite store's file is opened: WAL mode, page size, checkpoints, and read-only.

A store the user may write is opened as it is, and a new one is made with
``PAGE_SIZE`` pages in WAL mode (``use_wal``). A store this process may not write
(on a read-only mount, or a file or folder it lacks write permission for: an
auditor's evidence copy) is opened read-only (``read_only_name``): reading commands
work, and writing ones stop with a usage error naming why.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from urllib.parse import quote

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool

from ledger.errors import StoreError, UsageError
from ledger.paths import not_sqlite


def read_only_name(path: str, url: str) -> tuple[str, str] | None:
    """The name (a ``file:`` URI) to open the store at ``path`` by, read-only, and why,
    when this process may not write there; None when it may, or the store is not a
    file yet.

    On a read-only file system nothing can change the file, so SQLite is told it is
    immutable (no locks; no ``-shm`` file, which could not be made there). Elsewhere a
    writer may still have it open, so SQLite reads it with its usual locks, through a
    ``-shm`` index that must exist or be made beside it.
    """
    if ":memory:" in path or path.startswith("file:") or not os.path.exists(path):
        return None
    folder = os.path.dirname(path) or "."
    if os.access(path, os.W_OK) and os.access(folder, os.W_OK):
        return None
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
    log = path + "-wal"
    unchecked = os.path.exists(log) and os.path.getsize(log) > 0
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        if not unchecked:
            return uri + "&immutable=1", "a read-only file system"
        why = "a read-only file system"
    else:
        why = "this process may not write " + (folder if os.access(path, os.W_OK) else path)
    if not os.path.exists(path + "-shm") and not os.access(folder, os.W_OK):
        raise UsageError(
            f"SQLite store {url}: cannot be read here: it is read-only to this process, "
            f"and SQLite needs to make {path}-shm beside it (its folder is not writable)"
            + (f", to read the commits in {log}" if unchecked else "")
            + ": copy the store's files to a folder you may write in")
    return uri, why


def use_wal(path: str, url: str) -> None:
    """Put the store's file in WAL mode before the library's first connection does
    (a new file is first given ``PAGE_SIZE`` pages).

    The library switches a new file to WAL as it connects, and SQLite does not wait for
    the file to be free to do so: two processes opening a new store at once could fail
    with "database is locked". Here the switch is tried again until it is done.
    """
    if ":memory:" in path or "mode=memory" in path:  # as the library tells memory stores
        return
    deadline = time.monotonic() + _WAL_WAIT
    try:
        with closing(sqlite3.connect(path, uri=True, timeout=_WAL_WAIT)) as conn:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a new file only; else a no-op
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    return
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)  # None: raised by Python, not SQLite
        if code == sqlite3.SQLITE_NOTADB and (why := not_sqlite(path)):
            raise UsageError(f"SQLite store {url}: {why}") from None
        raise StoreError(f"SQLite store {url}: {exc}") from None


_WAL_WAIT = 5.0  # seconds, as long as a writer waits for the lock
PAGE_SIZE = 16_384
"""Bytes per page of a new store file (SQLite's default: 4,096); a file keeps the page
size it was created with. An ingest commit writes each page it dirtied to the log, one
write a page, and a batch dirties the index and catalog pages of every stream it
touches: with larger pages, fewer and larger writes. 1M events, two processes, runs
alternating (2026-12-05): ingest 52.8k, 55.2k, 53.6k, 54.5k/s with 4 KiB pages and
54.0k, 56.6k, 53.1k, 56.0k/s with 16 KiB (3-5% less CPU); rebuild 123.0k, 120.1k/s
and 133.9k, 131.1k/s; verify unchanged; the file 9% smaller."""
WAL_CHECKPOINT_BYTES = 50_000 * 4_096
"""How large the write-ahead log may grow before a commit copies it into the database
file (SQLite's default: 1,000 pages, 4 MB with 4 KiB pages). An ingest batch of 5,000
events dirties about 4 MB of pages, many of them index pages written again by the next
batches; with the default every commit also paid a checkpoint. 1M events, two
processes, 4 KiB pages, runs alternating (2026-12-05): 48.4k, 48.9k, 48.6k/s with 1,000
pages; 50.2k, 50.8k with 10,000; 51.0k, 53.4k, 51.6k with 20,000; 53.4k, 54.2k, 54.9k
with 50,000; 54.0k with 100,000. The log then holds up to ~200 MB before a commit
checkpoints it, more while one copies it and the others go on writing (the CLI's
ingest of 1M events with projections: peaks of 0.4-3.2 GB, docs/ARCHITECTURE.md); it
is emptied into the file and removed when the last connection closes."""


class ConnectionPool(SQLiteConnectionPool):
    """The library's pool, each new connection set to checkpoint less often."""

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        if not self.is_sqlite_memory_mode:
            cursor = connection.cursor()
            cursor.execute("PRAGMA page_size")
            pages = WAL_CHECKPOINT_BYTES // int(cursor.fetchone()[0])
            cursor.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        return connection
