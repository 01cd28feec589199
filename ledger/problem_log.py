"""What ``verify`` finds, in the order found, in bounded memory.

A ledger altered throughout (a bulk rewrite, a bad restore) gives a problem per
event: held as objects, about 400 bytes each, 400 MB for a million events before any
output. A :class:`ProblemLog` keeps its first ``KEPT`` problems in memory and writes the
rest to a temporary file (as tuples, pickled ``CHUNK`` at a time: a fifth of a
microsecond a problem each way; readable only by this user), which it reads back in
order when iterated. It is a sequence for reading: ``len``, ``bool``, iteration,
indexing and slicing from the front, and equality with a list.

Pickled (a worker process's report, sent back to the one that started it), a log
hands its file over: the receiving process reads it and removes it when done with it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from itertools import chain, islice
from typing import IO, Any, overload

KEPT = 1_000
"""Problems kept as objects; beyond, a file. Small: a verify shared out holds one log
per range of streams (dozens) until all are done."""
CHUNK = 1_000  # problems pickled in one go


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the stored record (or, among findings, with a runtime's claim)."""

    tenant: str | None
    trace_id: str | None
    seq: int | None
    kind: str
    detail: str


class ProblemLog:
    """Problems appended in order: the first ``KEPT`` in memory, the rest on disk."""

    def __init__(self, problems: Iterable[Problem] = ()) -> None:
        self._kept: list[Problem] = []
        self._pending: list[tuple[Any, ...]] = []  # the next chunk for the file
        self._spill: _Spill | None = None
        self._count = 0
        self.extend(problems)

    def append(self, problem: Problem) -> None:
        if self._count == len(self._kept) < KEPT:  # nothing on disk yet, and room
            self._kept.append(problem)
        else:
            p = problem
            self._pending.append((p.tenant, p.trace_id, p.seq, p.kind, p.detail))
            if len(self._pending) >= CHUNK:
                self._write_pending()
        self._count += 1

    def extend(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            self.append(problem)

    def _write_pending(self) -> None:
        if self._pending:
            if self._spill is None:
                self._spill = _Spill()
            self._spill.write(self._pending)
            self._pending = []

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Problem]:
        count, kept = self._count, len(self._kept)  # problems appended meanwhile: unread
        yield from self._kept[:kept]
        if count > kept:
            self._write_pending()
            assert self._spill is not None
            rows = chain.from_iterable(self._spill.read())
            yield from (Problem(*row) for row in islice(rows, count - kept))

    @overload
    def __getitem__(self, index: int) -> Problem: ...

    @overload
    def __getitem__(self, index: slice) -> list[Problem]: ...

    def __getitem__(self, index: int | slice) -> Problem | list[Problem]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            return list(islice(self, start, stop, step)) if step > 0 else list(self)[index]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("problem log index out of range")
        return next(islice(self, index, None))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ProblemLog | list):
            return len(self) == len(other) and all(
                a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        shown = ", ".join(repr(p) for p in self[:3])
        more = ", ..." if self._count > 3 else ""
        return f"ProblemLog([{shown}{more}], {self._count} problem(s))"

    def __reduce__(self) -> tuple[Any, ...]:
        self._write_pending()
        spill = self._spill
        return _received, (self._kept, spill.hand_over() if spill is not None else None,
                           self._count)


def _received(kept: list[Problem], path: str | None, count: int) -> ProblemLog:
    """A log another process pickled: its file (if any) is now this process's."""
    log = ProblemLog()
    log._kept, log._count = kept, count
    log._spill = None if path is None else _Spill(path)
    return log


class _Spill:
    """A temporary file of pickled chunks, removed when the log that owns it goes."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:  # mkstemp: created 0600, not there before, not a link
            fd, path = tempfile.mkstemp(prefix="agentledger-problems-")
            self._file: IO[bytes] = os.fdopen(fd, "w+b")
        else:
            self._file = open(path, "ab")  # noqa: SIM115 - closed by the finalizer
        self.path = path
        self._gone = weakref.finalize(self, _remove, self._file, path)

    def write(self, chunk: list[tuple[Any, ...]]) -> None:
        pickle.dump(chunk, self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self) -> Iterator[list[tuple[Any, ...]]]:
        self._file.flush()
        with open(self.path, "rb") as items:
            while True:
                try:
                    yield pickle.load(items)  # this user's own file (0600)
                except EOFError:
                    return

    def hand_over(self) -> str:
        """Keep the file for whoever unpickles its path; this process is done with it."""
        if self._gone.detach() is not None:
            self._file.close()  # flushed
        return self.path


def _remove(file: IO[bytes], path: str) -> None:
    file.close()
    with suppress(FileNotFoundError):
        os.unlink(path)
