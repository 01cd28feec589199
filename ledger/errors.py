"""One exception hierarchy for the whole project.

Everything the library raises on purpose derives from :class:`LedgerError`; the CLI
catches that class only and maps each subclass to a documented exit code
(``docs/CLI.md``). Driver errors are translated once, in the backend modules.
"""

from __future__ import annotations

import sys


class LedgerError(Exception):
    """Base class of every expected AgentLedger error."""

    exit_code = 1

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle as class, message and attributes, never by calling ``__init__`` again.

        A worker process's error crosses to its parent pickled. The default re-calls
        ``__init__`` with the message alone, which fails for a subclass that takes
        other arguments, and the parent then sees only a broken pool.
        """
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[LedgerError], args: tuple[object, ...],
             attributes: dict[str, object]) -> LedgerError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(attributes)
    return error


class UsageError(LedgerError):
    """The caller asked for something malformed (bad URL, bad option value)."""

    exit_code = 2


class UnwritableReplayError(UsageError):
    """A replay would write to memory an outcome's output the contract cannot hash (not
    I-JSON). Names the trace, the replay's seq and the reason; a backtest leaves that
    trace out and goes on."""

    WAY_OUT = "a policy rule with `then: {write_memory: false}` for that tool leaves it out"

    def __init__(self, trace_id: str, seq: int, reason: str) -> None:
        self.trace_id, self.seq, self.reason = trace_id, seq, reason
        super().__init__(f"the replay of {trace_id!r} cannot write memory at seq {seq} "
                         f"({reason}): the output it would store is not I-JSON; {self.WAY_OUT}")


class InputError(LedgerError):
    """An input could not be read at all (missing file, unreadable stream)."""

    exit_code = 2


class StoreError(LedgerError):
    """The store failed or is unreachable; wraps the driver's error."""

    exit_code = 1

    @property
    def transient(self) -> bool:
        """Whether the store could not be reached or was busy, so the same work may
        succeed later: PostgreSQL's connection or server errors (lost connection, server
        shutting down, lock or deadlock timeouts), SQLite's "database is locked".
        Judged from the driver's error this one was raised from."""
        psycopg, sqlite3 = sys.modules.get("psycopg"), sys.modules.get("sqlite3")
        error: BaseException | None = self
        for _ in range(_CAUSES):
            if error is None:
                return False
            if psycopg is not None and isinstance(
                    error, psycopg.OperationalError | psycopg.InterfaceError):
                return True
            if sqlite3 is not None and isinstance(error, sqlite3.OperationalError):
                return any(word in str(error) for word in ("locked", "busy"))
            error = error.__cause__ or error.__context__
        return False


_CAUSES = 8  # how far down a chain of wrapped errors the driver's error is looked for


class SchemaVersionError(StoreError):
    """The store's schema is newer than this version of AgentLedger understands."""


class NotFoundError(LedgerError):
    """A named trace, stream or object does not exist (in this tenant)."""

    exit_code = 5


class ValidationError(LedgerError):
    """An event does not conform to the trace-event contract.

    ``field`` is a dotted path (``payload.action.tool``) or ``None`` when the
    problem is with the line as a whole.
    """

    exit_code = 3

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class NotIJSONError(ValidationError):
    """A memory value falls outside I-JSON (RFC 7493), so JCS cannot hash it."""


class SequenceError(ValidationError):
    """An event's seq would leave a gap in its trace (out of order)."""


class UnreadableRecordError(LedgerError):
    """A stored record can no longer be read: its bytes were altered or emptied behind
    the ledger's back. Names where: tenant, stream name (the trace id) and seq."""

    exit_code = 4

    def __init__(self, tenant: str, name: str, seq: int, reason: str) -> None:
        self.tenant, self.name, self.seq, self.reason = tenant, name, seq, reason
        super().__init__(
            f"tenant {tenant!r} trace {name!r} seq {seq}: the stored record cannot be read "
            f"({reason}); it was changed outside the ledger: run `agentledger verify`")


class MemoryDisagreementError(UnreadableRecordError):
    """A trace's memory as the memory view has it does not hash to what its stored
    record says the ledger computed: the record or the view was altered."""

    def __init__(self, tenant: str, name: str, seq: int, reason: str) -> None:
        super().__init__(tenant, name, seq, reason)
        self.args = (f"tenant {tenant!r} trace {name!r} seq {seq}: {reason}: run "
                     "`agentledger verify` and `agentledger projections check memory`",)


class ConflictError(LedgerError):
    """An event for an existing (tenant, trace_id, seq) differs from the stored one."""

    exit_code = 3


class ConcurrencyError(StoreError):
    """Another writer appended to the same stream first (optimistic concurrency)."""


class OutputError(LedgerError):
    """A file the command writes (a reject file, an audit export) could not be written:
    a full disk, an I/O error. What the store committed is kept."""

    exit_code = 1
