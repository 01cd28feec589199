"""Following the log for other writers: catch up, poll, and outlast the store going away.

``agentledger projections run`` keeps the views current for a ledger that other
processes feed. It runs for days, so a PostgreSQL restart, a failover or a lock held
too long must not end it. Each catch-up writes its view rows and tracking positions
in one transaction: when the store fails mid-way, nothing half-applied remains. The
follower then reports the error, waits (``FIRST_WAIT`` seconds, doubling up to
``MAX_WAIT`` while failures continue), has the store replace its broken pooled
connections, and goes on with a fresh :class:`~projections.runner.Projector`, which
reads positions and contexts from the store again rather than trusting what it held
in memory when the transaction failed. Errors that retrying cannot mend (a statement
the store rejects, a view table dropped behind its back) end it as before.

When it finds nothing new after having applied something (and once at start), it has
the store give back the space its write-ahead log kept (:meth:`Backend.shrink_log`):
the log of a SQLite store grows by hundreds of MB during a large ingest and, while a
connection stays open, keeps that size on disk. A store in use just then is asked
again at the next idle poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from ledger.errors import StoreError
from ledger.store import Store
from projections.runner import Progress, Projector

FIRST_WAIT = 1.0  # seconds before the first retry
MAX_WAIT = 30.0  # the longest wait between retries
_NAP = 0.2  # waits are slept in steps this long, so ``stop`` is seen promptly


def follow(store: Store, *, interval: float = 1.0, stop: Callable[[], bool] = lambda: False,
           on_batch: Callable[[int], None] | None = None,
           on_retry: Callable[[StoreError, float], None] | None = None,
           progress: Callable[[], AbstractContextManager[Progress | None]] = nullcontext,
           first_wait: float = FIRST_WAIT, max_wait: float = MAX_WAIT) -> None:
    """Catch up, then poll the log every ``interval`` seconds, until ``stop()``.

    ``on_batch(n)`` follows the first catch-up and each later one that read ``n > 0``
    log entries. ``on_retry(error, wait)`` is told of each transient store error (see
    :attr:`StoreError.transient`) before the wait of ``wait`` seconds that precedes
    the next attempt; any other error is raised. Each catch-up runs in a ``with
    progress() as callback`` block and reports to that callback (a progress bar).
    """
    projector: Projector | None = None
    wait, first, grown = 0.0, True, True
    while not stop():
        try:
            if projector is None and wait:  # after a failure: drop the broken connections
                store.backend.check_connections()
            projector = projector or Projector(store)
            with progress() as callback:
                applied = projector.catch_up(callback)
            if (applied or first) and on_batch is not None:
                on_batch(applied)
            first = False
            grown = grown or applied > 0
            if grown and not applied:  # idle: give back the log's space
                grown = not store.backend.shrink_log()
        except StoreError as exc:
            if not exc.transient:
                raise
            projector = None  # what it held in memory may be of the failed transaction
            wait = min(max_wait, wait * 2 or first_wait)
            if on_retry is not None:
                on_retry(exc, wait)
            _sleep(wait, stop)
            continue
        wait = 0.0
        if not applied:
            _sleep(interval, stop)


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(_NAP, left))
