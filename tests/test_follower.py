"""The follower (``agentledger projections run``, ``projections.follower.follow``):
it outlasts a store that cannot be reached or is busy, catching up once the store is
back, and stops on an error that retrying cannot mend. Both backends, each made
unavailable its own way: SQLite by another connection holding the write lock past
the wait, PostgreSQL by the server ending the store's connections."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
import rawdb

from ledger.errors import StoreError
from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import synthetic_lines
from projections import Projector
from projections.follower import follow

N_EVENTS = 400
DEADLINE_S = 60.0


@pytest.fixture
def fed(store_url: str, tmp_path: Path) -> str:
    """A store holding N_EVENTS events that no projection has read yet."""
    return feed(store_url, tmp_path)


def feed(store_url: str, tmp_path: Path) -> str:
    """Ingest N_EVENTS events into the store, and create the views at position 0."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(synthetic_lines(N_EVENTS)))
    with Store.open(store_url) as store:
        ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
        Projector(store).status()  # the view tables exist, every projection at 0
    return store_url


def _outage(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(begin, end)``: make the store's next transaction fail as an outage would, and
    let it work again."""
    if rawdb.is_postgres(url):
        conninfo, _ = rawdb._pg_target(url)

        def end_connections() -> None:
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")

        return end_connections, lambda: None
    holder = sqlite3.connect(rawdb._sqlite_path(url), isolation_level=None)

    def release() -> None:
        with contextlib.suppress(sqlite3.ProgrammingError):  # closed already
            if holder.in_transaction:
                holder.execute("ROLLBACK")
        holder.close()

    return lambda: holder.execute("BEGIN IMMEDIATE"), release


def test_the_follower_outlasts_an_outage_and_catches_up(fed: str) -> None:
    """The first catch-up fails as the store goes away: the follower reports it (a
    transient StoreError; waits from the first asked, doubling), tries again once the
    store is back, and brings every projection to the log's head, each entry once."""
    begin, end = _outage(fed)
    retries: list[tuple[StoreError, float]] = []
    applied: list[int] = []
    started = time.monotonic()

    def retrying(error: StoreError, wait: float) -> None:
        retries.append((error, wait))
        end()

    def stop() -> bool:
        if not retries and not applied:
            begin()  # once the store has been opened and used: its connections exist
        return sum(applied) >= N_EVENTS or time.monotonic() - started > DEADLINE_S

    with Store.open(fed) as store:
        store.backend.last_notification_id()
        try:
            follow(store, interval=0.05, stop=stop, on_batch=applied.append,
                   on_retry=retrying, first_wait=0.05)
        finally:
            end()
        assert len(retries) == 1 and all(error.transient for error, _ in retries)
        assert [wait for _, wait in retries] == [0.05 * 2**i for i in range(len(retries))]
        assert sum(applied) == N_EVENTS
        assert {(s.position, s.lag) for s in Projector(store).status()} == {(N_EVENTS, 0)}


def test_the_follower_stops_on_an_error_retrying_cannot_mend(fed: str) -> None:
    """A view table that refuses rows (a trigger put there behind the follower's back)
    is not an outage: the error is raised, not retried, and nothing is applied."""
    if rawdb.is_postgres(fed):
        _, schema = rawdb._pg_target(fed)
        rawdb.execute(fed, f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger '
                           "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'refused'; END$$")
        rawdb.execute(fed, f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".agentledger_'
                           f'failures FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()')
    else:
        rawdb.execute(fed, "CREATE TRIGGER refuse BEFORE INSERT ON agentledger_failures "
                           "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    retries: list[float] = []
    with Store.open(fed) as store:
        with pytest.raises(StoreError, match="refused") as caught:
            follow(store, interval=0.05, on_retry=lambda _e, wait: retries.append(wait),
                   first_wait=0.05)
        assert not caught.value.transient and retries == []
        assert {s.position for s in Projector(store).status()} == {0}


def test_the_follower_gives_back_the_sqlite_logs_space_once_idle(
        sqlite_url: str, tmp_path: Path) -> None:
    """Another connection stays open (as another writer's would), so no close removes the
    write-ahead log: the follower's own view writes grow it, and once the follower finds
    nothing new it is emptied. The views are complete and the events all there."""
    path = rawdb._sqlite_path(sqlite_url)
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        feed(sqlite_url, tmp_path)
        applied: list[int] = []
        started = time.monotonic()

        def stop() -> bool:
            done = sum(applied) >= N_EVENTS and os.path.getsize(path + "-wal") == 0
            return done or time.monotonic() - started > DEADLINE_S

        with Store.open(sqlite_url) as store:
            follow(store, interval=0.05, stop=stop, on_batch=applied.append)
            assert sum(applied) == N_EVENTS and os.path.getsize(path + "-wal") == 0
            assert {(s.position, s.lag) for s in Projector(store).status()} == {(N_EVENTS, 0)}
        assert other.execute("SELECT COUNT(*) FROM agentledger_events").fetchone() == (N_EVENTS,)


def _sigint_by_default() -> None:
    """Let the child take Ctrl-C even when this suite was started with SIGINT ignored
    (a background job of a script, as `nohup cmd &` is): Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _json_line(proc: subprocess.Popen[str], timeout: float = DEADLINE_S) -> dict[str, Any]:
    """The next line the process prints, as JSON, within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the follower printed nothing in time"
    return dict(json.loads(proc.stdout.readline()))


@pytest.mark.parametrize("stop, code, said", [
    (signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")],
    ids=["ctrl-c", "sigterm"])
def test_projections_run_follows_what_other_writers_append(
        fed: str, tmp_path: Path, stop: int, code: int, said: str) -> None:
    """`agentledger projections run --json`: a line once caught up, a line for what
    another writer appends later; Ctrl-C ends it with exit 130, SIGTERM (a service
    manager stopping it) with 143, each saying what is kept."""
    entry = "from ledger.cli.main import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", entry, "--store", fed, "projections", "run", "--interval",
         "0.05", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_by_default)
    try:
        assert _json_line(proc) == {"entries_read": N_EVENTS, "log_head": N_EVENTS}
        more = tmp_path / "more.jsonl"  # the first N_EVENTS lines again, then as many new
        more.write_bytes(b"".join(synthetic_lines(2 * N_EVENTS)))
        with Store.open(fed) as store:
            ingest(store, [str(more)], reject_file=str(tmp_path / "r.jsonl"))
        assert _json_line(proc) == {"entries_read": N_EVENTS, "log_head": 2 * N_EVENTS}
        proc.send_signal(stop)
        assert proc.wait(timeout=DEADLINE_S) == code
        _, err = proc.communicate()
        assert err.endswith(f"{said}: committed batches are kept; re-run to resume.\n")
    finally:
        proc.kill()
        proc.communicate()
