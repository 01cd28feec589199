"""Opening a ledger store from a URL.

``sqlite:///path.db`` (the embedded default, ``sqlite:///agentledger.db``) or
``postgresql://user:password@host:port/dbname[?schema=name]``. Opening a store
applies pending schema migrations (``agentledger init`` does only that).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType

from ledger.backends.base import Backend
from ledger.errors import UsageError
from ledger.paths import file_problem, is_utf8, shown

DEFAULT_URL = "sqlite:///agentledger.db"
URL_ENV = "AGENTLEDGER_STORE"


def resolve_url(url: str | None) -> str:
    """The store URL to use: the argument, else ``$AGENTLEDGER_STORE``, else the default."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def open_backend(url: str) -> Backend:
    """A backend for the URL's scheme (imports the driver only when needed)."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise UsageError(f"SQLite URL {url!r} names no file: use sqlite:///path.db")
        if path != ":memory:" and not path.startswith("file:"):
            path = os.path.expanduser(path)  # a shell leaves "~" in a URL as it is
            if (problem := file_problem(path, "open")) is not None:
                raise UsageError(f"SQLite store {url}: {problem}")
        from ledger.backends.sqlite import SQLiteBackend

        return SQLiteBackend(path, url=url)
    if url.startswith(("postgresql://", "postgres://")):
        from ledger.backends.postgres import PostgresBackend

        if not is_utf8(url):  # a file name may be any bytes; a connection string may not
            raise UsageError(f"PostgreSQL URL '{shown(url)}' is not valid UTF-8")

        return PostgresBackend(url)
    raise UsageError(
        f"unsupported store URL {url!r}: use sqlite:///path.db or postgresql://..."
    )


class Store:
    """An open ledger store; use as a context manager or call :meth:`close`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._commit_listeners: list[Callable[[], None]] = []

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit of new records through this store.

        Read models (``projections``) attach here so that a query right after an
        ingest sees it; the ledger itself knows nothing about them.
        """
        self._commit_listeners.append(listener)

    @property
    def has_commit_listeners(self) -> bool:
        """Whether anything follows this store's commits (e.g. attached projections)."""
        return bool(self._commit_listeners)

    def committed(self) -> None:
        """Tell the listeners that new records were committed (writers call this)."""
        for listener in self._commit_listeners:
            listener()

    @classmethod
    def open(cls, url: str | None = None, *, migrate: bool = True) -> Store:
        """Open (and by default migrate) the store at ``url``."""
        backend = open_backend(resolve_url(url))
        if migrate:
            try:
                backend.migrate()
            except BaseException:
                backend.close()
                raise
        return cls(backend)

    @property
    def url(self) -> str:
        return self.backend.url

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
