"""Shared fixtures: every store test runs on SQLite and on a throwaway PostgreSQL.

The PostgreSQL cluster is started once per session (initdb into a temp dir, as
the ``postgres`` user when running as root) and stopped at the end; each test gets
a fresh schema, in a database whose text is ordered by ICU's ``en-US`` collation, as
on most servers (not byte by byte, as SQLite orders it). Without PostgreSQL binaries
the postgres cases skip, except with ``CI=true``, where they fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgcluster import PgCluster, pg_required_or_skip

from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import synthetic_lines

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bin_dir = pg_required_or_skip()
    cluster = PgCluster(bin_dir).start()
    try:
        cluster.create_database("agentledger_test", icu_locale="en-US")
        yield cluster
    finally:
        cluster.stop()


def _postgres_url(request: pytest.FixtureRequest) -> str:
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    schema = "t_" + uuid.uuid4().hex[:12]
    return cluster.url_for("agentledger_test") + f"?schema={schema}"


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return _postgres_url(request)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """A URL of an empty PostgreSQL store (for behaviour specific to PostgreSQL)."""
    return _postgres_url(request)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL of an empty SQLite store (for behaviour specific to the embedded file)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, migrated store, once per backend."""
    s = Store.open(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def four_traces(store: Store, store_url: str, tmp_path: Path) -> str:
    """The store's URL, holding four synthetic traces of ten events in two tenants
    (``syn-1-00000000k``, k = 0..3; tenant-000 and tenant-001); views not yet built."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(synthetic_lines(40, events_per_trace=10, tenants=2)))
    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"))
    assert (summary.accepted, summary.rejected) == (40, 0)
    return store_url
