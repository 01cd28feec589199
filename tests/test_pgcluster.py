"""The throwaway PostgreSQL cluster used by the postgres backend tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pgcluster
import psycopg
import pytest
from pgcluster import PgCluster, find_pg_bin, pg_required_or_skip


@pytest.fixture(scope="module")
def pg_bin() -> Path:
    return pg_required_or_skip()


@pytest.fixture(scope="module")
def cluster(pg_bin: Path) -> Iterator[PgCluster]:
    with PgCluster(pg_bin) as running:
        yield running


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_cluster_accepts_psycopg_connection(cluster: PgCluster) -> None:
    """The cluster URL connects as superuser ``postgres`` without a password."""
    with psycopg.connect(cluster.url) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("postgres", "postgres")


def test_cluster_applies_test_settings(cluster: PgCluster) -> None:
    """The server runs with the durability-off settings and listens on loopback only."""
    expected = pgcluster._SETTINGS
    with psycopg.connect(cluster.url) as conn:
        query = "SELECT current_setting(%s)"
        shown = {name: conn.execute(query, (name,)).fetchone() for name in expected}
    assert shown == {name: (value,) for name, value in expected.items()}


def test_create_database_returns_url_of_new_database(cluster: PgCluster) -> None:
    """create_database returns a URL that connects to the new database."""
    url = cluster.create_database("ledger test")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("ledger test",)


def test_a_database_with_an_icu_locale_orders_text_as_most_servers_do(
        cluster: PgCluster) -> None:
    """The cluster orders text byte by byte; a database made with ``icu_locale`` (as the
    suite's is) orders it by that collation: case-insensitively first."""
    order = "SELECT string_agg(v, ' ' ORDER BY v) FROM (VALUES ('b'), ('B'), ('a'), ('_c')) t(v)"
    with psycopg.connect(cluster.create_database("bytewise")) as conn:
        assert conn.execute(order).fetchone() == ("B _c a b",)
    with psycopg.connect(cluster.create_database("icu", icu_locale="en-US")) as conn:
        assert conn.execute(order).fetchone() == ("_c a b B",)


def test_created_database_is_separate(cluster: PgCluster) -> None:
    """A table made in a created database is not visible from ``postgres``."""
    url = cluster.create_database("separate")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE only_here (id int)")
    with psycopg.connect(cluster.url) as conn:
        assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)


def test_stop_closes_port_and_removes_dir(pg_bin: Path) -> None:
    """After stop() the port refuses connections and the temp dir is gone."""
    running = PgCluster(pg_bin).start()
    port, root = running.port, running.root
    assert root is not None and root.is_dir() and _port_accepts(port)
    running.stop()
    assert not _port_accepts(port)
    assert not root.exists()


def test_stop_is_safe_to_call_twice(pg_bin: Path) -> None:
    """A second stop() is a no-op."""
    running = PgCluster(pg_bin).start()
    running.stop()
    running.stop()
    assert running.root is None


def test_context_manager_stops_on_exit(pg_bin: Path) -> None:
    """Leaving the ``with`` block stops the server."""
    with PgCluster(pg_bin) as running:
        port = running.port
    assert not _port_accepts(port)


@pytest.mark.slow
def test_crashed_process_leaves_no_server(pg_bin: Path) -> None:
    """The atexit hook stops the server when the owning process dies of an exception."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from pgcluster import PgCluster
        running = PgCluster(Path({str(pg_bin)!r})).start()
        print(running.port, running.root, flush=True)
        raise SystemExit("simulated crash")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    port, root = result.stdout.split()
    assert not _port_accepts(int(port))
    assert not Path(root).exists()


def test_startup_failure_raises_with_server_log(
    pg_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that will not start raises RuntimeError quoting its log and cleans up."""
    monkeypatch.setitem(pgcluster._SETTINGS, "max_connections", "not-a-number")
    failing = PgCluster(pg_bin, timeout=20)
    with pytest.raises(RuntimeError, match="max_connections"):
        failing.start()
    assert failing.root is None


def test_missing_binaries_raise_runtime_error(tmp_path: Path) -> None:
    """start() with a bin dir lacking initdb/pg_ctl/postgres raises RuntimeError."""
    with pytest.raises(RuntimeError, match="AGENTLEDGER_PG_BIN"):
        PgCluster(tmp_path).start()


def test_find_pg_bin_prefers_env_var(pg_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AGENTLEDGER_PG_BIN wins over other locations, and a bad value finds nothing."""
    monkeypatch.setenv("AGENTLEDGER_PG_BIN", str(pg_bin))
    assert find_pg_bin() == pg_bin
    monkeypatch.setenv("AGENTLEDGER_PG_BIN", "/nonexistent/bin")
    assert find_pg_bin() is None


def test_missing_binaries_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true, missing binaries fail the run instead of skipping."""
    monkeypatch.setenv("AGENTLEDGER_PG_BIN", "/nonexistent/bin")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        pg_required_or_skip()


def test_missing_binaries_skip_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CI=true, missing binaries skip."""
    monkeypatch.setenv("AGENTLEDGER_PG_BIN", "/nonexistent/bin")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        pg_required_or_skip()
