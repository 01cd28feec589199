"""eventsourcing's own recorder suites, run against our SQLite and PostgreSQL recorders.

Each class below subclasses one abstract suite from ``eventsourcing.tests.persistence``
and supplies only ``create_recorder()`` (plus a fresh database file or schema per
test). The module is imported, not its classes, so that neither pytest nor unittest
collects the abstract bases.

``AggregateRecorderTestCase`` is not run: it asserts that ``insert_events()``
returns ``None``, which is the aggregate-recorder contract; an application recorder
must return notification ids (the library runs that suite only on its aggregate
recorders too).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.tests import persistence as es_suites
from pgcluster import PgCluster
from psycopg import sql

from ledger.backends import catalog
from ledger.backends.postgres_recorder import LedgerPostgresRecorder
from ledger.backends.sqlite_recorder import LedgerSQLiteRecorder

_DATABASE = "agentledger_test"  # created by the session fixture ``pg_cluster``
# One connection per thread the suites start (10 writers and 2 readers at most), so
# their inserts really race; with the library's default of one pooled connection they
# would take turns and the non-interleaving test could not fail.
_PG_POOL_SIZE = 12


def _join_threads_started_since(before: set[threading.Thread]) -> None:
    """Wait for threads a library test left running (its readers are stopped, not joined).

    Closing a datastore while such a thread is still inside a query can crash the
    interpreter (seen as a segfault in sqlite3), so tearDown waits for them first.
    """
    for thread in set(threading.enumerate()) - before:
        # The suites' readers are plain threads; daemon ones (psycopg's pool workers)
        # live until their pool is closed, so they are not waited for.
        if not thread.daemon and thread is not threading.current_thread():
            thread.join(timeout=10)


class _SQLiteRecorderFactory:
    """A ``LedgerSQLiteRecorder`` on a fresh database file for each test."""

    def setUp(self) -> None:
        self._threads = set(threading.enumerate())
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="agentledger-es-suite-"))
        self._datastores: list[SQLiteDatastore] = []

    def tearDown(self) -> None:
        _join_threads_started_since(self._threads)
        for datastore in self._datastores:
            datastore.close()
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def create_recorder(self) -> LedgerSQLiteRecorder:
        datastore = SQLiteDatastore(
            db_name=str(self._tmp_dir / "ledger.db"), originator_id_type="uuid"
        )
        self._datastores.append(datastore)
        recorder = LedgerSQLiteRecorder(datastore, events_table_name=catalog.EVENTS_TABLE)
        recorder.create_table()
        return recorder


class _PostgresRecorderFactory:
    """A ``LedgerPostgresRecorder`` in a fresh schema of the session cluster for each test."""

    _cluster: PgCluster

    @pytest.fixture(autouse=True)
    def _use_pg_cluster(self, pg_cluster: PgCluster) -> None:
        self._cluster = pg_cluster

    def setUp(self) -> None:
        self._threads = set(threading.enumerate())
        self._url = self._cluster.url_for(_DATABASE)
        self._schema = "es_suite_" + uuid.uuid4().hex[:12]
        self._datastores: list[PostgresDatastore] = []
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self._schema)))

    def tearDown(self) -> None:
        _join_threads_started_since(self._threads)
        for datastore in self._datastores:
            datastore.close()
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self._schema)))

    def create_recorder(self) -> LedgerPostgresRecorder:
        parts = urlsplit(self._url)
        assert parts.hostname is not None and parts.port is not None
        datastore = PostgresDatastore(
            _DATABASE, parts.hostname, parts.port, "postgres", "",
            schema=self._schema, originator_id_type="uuid", pool_size=_PG_POOL_SIZE,
        )  # fmt: skip
        self._datastores.append(datastore)
        recorder = LedgerPostgresRecorder(datastore, events_table_name=catalog.EVENTS_TABLE)
        recorder.create_table()
        return recorder


class TestSQLiteApplicationRecorder(
    _SQLiteRecorderFactory, es_suites.ApplicationRecorderTestCase[LedgerSQLiteRecorder]
):
    pass


class TestSQLiteNonInterleavingNotificationIDs(
    _SQLiteRecorderFactory, es_suites.NonInterleavingNotificationIDsBaseCase
):
    pass


class TestPostgresApplicationRecorder(
    _PostgresRecorderFactory, es_suites.ApplicationRecorderTestCase[LedgerPostgresRecorder]
):
    pass


class TestPostgresNonInterleavingNotificationIDs(
    _PostgresRecorderFactory, es_suites.NonInterleavingNotificationIDsBaseCase
):
    pass
