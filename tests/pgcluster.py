"""Throwaway PostgreSQL servers for tests: initdb into a temp dir, serve on a free port."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

_REQUIRED = ("initdb", "pg_ctl", "postgres")
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "128MB",
}


def _has_binaries(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in _REQUIRED)


def _version(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


def find_pg_bin() -> Path | None:
    """Return the PostgreSQL bin dir, or None if there is none.

    Order: $AGENTLEDGER_PG_BIN (authoritative when set), ``pg_config --bindir``,
    the highest /usr/lib/postgresql/<version>/bin, then the dir of ``pg_ctl`` on PATH.
    """
    explicit = os.environ.get("AGENTLEDGER_PG_BIN")
    if explicit:
        return Path(explicit) if _has_binaries(Path(explicit)) else None
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versioned = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _version(p.parent.name)]
    candidates += sorted(versioned, key=lambda p: _version(p.parent.name), reverse=True)
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).resolve().parent)
    return next((p for p in candidates if _has_binaries(p)), None)


def pg_required_or_skip() -> Path:
    """Return the bin dir; without one, skip the caller, or fail it when CI=true."""
    import pytest

    bin_dir = find_pg_bin()
    if bin_dir is None:
        msg = "PostgreSQL binaries not found (install PostgreSQL or set AGENTLEDGER_PG_BIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}; they are required when CI=true", pytrace=False)
        pytest.skip(msg, allow_module_level=True)  # only when CI is not true
    return bin_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    """A private PostgreSQL server in a temp dir: trust auth, superuser ``postgres``.

    As root, the server runs as the ``postgres`` OS user, which owns the temp dir.
    """

    def __init__(self, bin_dir: Path | None = None, *, timeout: float = 60.0) -> None:
        self.bin_dir = bin_dir if bin_dir is not None else find_pg_bin()
        self.timeout = timeout
        self.port = 0
        self.root: Path | None = None
        self._running = False
        self._uid: int | None = None
        self._gid: int | None = None

    @property
    def url(self) -> str:
        """URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """URL of database ``dbname`` on this server (which must be running)."""
        if not self._running:
            raise RuntimeError("PostgreSQL cluster is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str, *, icu_locale: str | None = None) -> str:
        """Create database ``name`` and return its URL.

        With ``icu_locale`` (PostgreSQL 15 or later) its text is ordered by that ICU
        collation, as on most servers, instead of byte by byte (the cluster's ``C``).
        """
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        with psycopg.connect(self.url, autocommit=True) as conn:
            if conn.info.server_version >= 150000:  # FILE_COPY: ~2x faster with fsync off
                query += sql.SQL(" STRATEGY = FILE_COPY")
            if icu_locale is not None:
                query += sql.SQL(" TEMPLATE = template0 LOCALE_PROVIDER = icu "
                                 "ICU_LOCALE = {}").format(sql.Literal(icu_locale))
            conn.execute(query)
        return self.url_for(name)

    def start(self) -> PgCluster:
        """Run initdb and start the server; raise RuntimeError with the log tail on failure."""
        if self.root is not None:
            return self
        root = self._make_root()
        return self._start_in(root, lambda: self._initdb(root))

    def start_standby(self) -> PgCluster:
        """Start a hot standby of this running server: another private server, made by
        ``pg_basebackup`` and replaying this one's WAL as it comes (it only reads)."""
        if not self._running:
            raise RuntimeError("PostgreSQL cluster is not running")
        standby = PgCluster(self.bin_dir, timeout=self.timeout)
        root = standby._make_root()

        def copy() -> None:
            sock = standby._socket_dir(root)
            result = standby._run(
                self.bin_dir / "pg_basebackup", "-D", root / "data", "-R", "-X", "stream",
                "--no-sync", "--checkpoint=fast", "-h", "127.0.0.1", "-p", str(self.port),
                "-U", "postgres",
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed: {result.stderr.strip()}")
            with (root / "data" / "postgresql.conf").open("a") as conf:
                conf.write(f"unix_socket_directories = '{sock}'\n")  # not the primary's

        return standby._start_in(root, copy)

    def wait_for(self, primary: PgCluster) -> None:
        """Wait until this standby has replayed everything ``primary`` has written so far."""
        with psycopg.connect(primary.url) as conn:  # commits are asynchronous here, so
            conn.execute("SET synchronous_commit = on")  # commit one that writes to the
            conn.execute("SELECT pg_logical_emit_message(true, 'test', 'flush')")  # log
            conn.commit()  # and waits: the log is written, and sent, up to it
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        deadline = time.monotonic() + self.timeout
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                   row).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise RuntimeError("the standby did not catch up in time")
                time.sleep(0.05)

    def _make_root(self) -> Path:
        if self.bin_dir is None or not _has_binaries(self.bin_dir):
            raise RuntimeError(
                f"PostgreSQL binaries {_REQUIRED} not found (bin dir: {self.bin_dir}); "
                "install PostgreSQL or set AGENTLEDGER_PG_BIN"
            )
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs a 'postgres' OS user") from None
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self.root = Path(tempfile.mkdtemp(prefix="agentledger-pg-"))
        if self._uid is not None and self._gid is not None:
            os.chown(self.root, self._uid, self._gid)
        atexit.register(self.stop)
        return self.root

    def _start_in(self, root: Path, make_data: Callable[[], None]) -> PgCluster:
        """Make the data dir with ``make_data``, then start a server on it on a free port."""
        assert self.bin_dir is not None
        try:
            make_data()
            for attempt in range(3):  # another process may grab the port between pick and bind
                self.port = _free_port()
                result = self._run(
                    self.bin_dir / "pg_ctl", "start", "-D", root / "data", "-w",
                    "-t", str(int(self.timeout)), "-l", root / "server.log",
                    "-o", f"-p {self.port}",
                )  # fmt: skip
                if result.returncode == 0:
                    break
                if attempt == 2 or "could not bind" not in self._log_tail():
                    raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()}")
            self._running = True
            self._wait_ready()
        except Exception as exc:
            tail = self._log_tail()
            self.stop()
            raise RuntimeError(
                f"PostgreSQL failed to start: {exc}\n--- server log ---\n{tail}"
            ) from exc
        return self

    def stop(self) -> None:
        """Stop the server (immediate mode) and delete its dir; safe to call repeatedly."""
        atexit.unregister(self.stop)
        self._running = False
        root = self.root
        if root is None:
            return
        pid_file = root / "data" / "postmaster.pid"
        if pid_file.exists() and self.bin_dir is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._run(
                    self.bin_dir / "pg_ctl", "stop", "-D", root / "data", "-m", "immediate", "-w"
                )
        if pid_file.exists():  # pg_ctl failed: kill the postmaster directly
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _socket_dir(self, root: Path) -> Path:
        sock = root / "sock"
        sock.mkdir()
        if self._uid is not None and self._gid is not None:
            os.chown(sock, self._uid, self._gid)
        return sock

    def _initdb(self, root: Path) -> None:
        assert self.bin_dir is not None
        sock = self._socket_dir(root)
        result = self._run(
            self.bin_dir / "initdb", "-D", root / "data", "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        settings = {**_SETTINGS, "unix_socket_directories": str(sock)}
        with (root / "data" / "postgresql.conf").open("a") as conf:
            for key, value in settings.items():
                quoted = value.replace("'", "''")
                conf.write(f"{key} = '{quoted}'\n")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _run(self, *cmd: str | Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(
            [str(part) for part in cmd], capture_output=True, text=True, check=False, env=env,
            cwd=self.root, timeout=self.timeout + 30, user=self._uid, group=self._gid,
            extra_groups=None if self._uid is None else [],
        )  # fmt: skip

    def _log_tail(self, lines: int = 30) -> str:
        if self.root is None or not (self.root / "server.log").exists():
            return "(no server log)"
        text = (self.root / "server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
