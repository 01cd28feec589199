"""Work split into parts and shared between this process and spawned workers.

Workers are spawned, never forked: the parent holds open store connections, which a
forked child must not touch. A script that asks for workers must therefore start from
``if __name__ == '__main__':`` (Python's rule for spawn). Workers take parts from the
front; this process takes them from the back, so work begins while the workers are
still starting. Each part is claimed once, under a lock, by whichever side gets to it
first: the workers are handed one part each, and the next when one finishes, so no
part waits behind a busy worker while this process could run it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Generic, TypeVar

from ledger.errors import LedgerError

P = TypeVar("P")
R = TypeVar("R")


class WorkerError(LedgerError):
    """A worker process ended abruptly (killed, out of memory, or a script without a
    ``__main__`` guard)."""

    exit_code = 1


def spawn_pool(size: int, initializer: Callable[..., object] | None = None,
               initargs: tuple[Any, ...] = ()) -> SpawnPool:
    """An executor of ``size`` spawned processes, each set up by ``initializer(*initargs)``;
    they die with this process (:func:`die_with_parent`), and with the ``with`` block
    that uses the pool when an error leaves it (:class:`SpawnPool`)."""
    import multiprocessing

    return SpawnPool(size, mp_context=multiprocessing.get_context("spawn"),
                     initializer=_start_worker, initargs=(initializer, initargs))


class SpawnPool(ProcessPoolExecutor):
    """A process pool whose ``with`` block, left by an error (Ctrl-C included), stops
    the workers at once instead of waiting for the parts they are running.

    The error already decides the outcome: a part left to finish would only delay it,
    by as long as the whole job at worst. Parts only read the store or write scratch
    that the caller discards, so stopping one halfway loses nothing.
    """

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(max_workers=size, **kwargs)
        self.size = size

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if exc_type is not None:
            self.shutdown(wait=False, cancel_futures=True)  # no process starts after this
            for process in list((self._processes or {}).values()):  # no public way in 3.11
                process.terminate()
            self.shutdown(wait=True)  # sees them gone: returns at once
        return super().__exit__(exc_type, exc, tb)


def _start_worker(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def die_with_parent() -> None:
    """In a spawned process: ask Linux to kill it when the process that spawned it dies
    (kill -9 included), so that no part of a killed command goes on writing."""
    import multiprocessing
    import os

    parent = multiprocessing.parent_process()
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's finally still ends us
        return
    if parent is not None and os.getppid() != parent.pid:  # it died before the request
        os._exit(1)


def shareable(url: str) -> bool:
    """Whether another process can open the store at ``url`` (not an in-memory SQLite)."""
    return ":memory:" not in url and "mode=memory" not in url


def share(pool: SpawnPool, parts: Sequence[P], remote: Callable[[P], R],
          local: Callable[[P], R], *, what: str) -> Iterator[tuple[int, R, bool]]:
    """Run every part once; yield ``(index, result, ran_here)`` as each finishes.

    ``remote`` must be picklable (a module-level function or a ``functools.partial``
    of one). This process runs parts from the back; between two of them it yields
    what the workers have finished, so an error in a worker stops it there.
    """
    claims = _Claims(len(parts))
    feeder = _Feeder(pool, parts, remote, claims)
    try:
        while (index := claims.back()) is not None:
            result = local(parts[index])
            yield index, result, True
            yield from feeder.results(what, wait=False)
        yield from feeder.results(what, wait=True)
    finally:
        claims.close()


class _Claims:
    """The parts nobody has claimed yet: ``[front, back)``, taken from either end."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._front, self._back = 0, n

    def front(self) -> int | None:
        with self._lock:
            if self._front >= self._back:
                return None
            self._front += 1
            return self._front - 1

    def back(self) -> int | None:
        with self._lock:
            if self._front >= self._back:
                return None
            self._back -= 1
            return self._back

    def close(self) -> None:
        """Claim everything left, so that nothing more starts."""
        with self._lock:
            self._front = self._back


class _Feeder(Generic[P, R]):
    """A thread that keeps each worker busy with one part from the front at a time
    (never more: a part queued behind a busy worker could not be taken back)."""

    def __init__(self, pool: SpawnPool, parts: Sequence[P], remote: Callable[[P], R],
                 claims: _Claims) -> None:
        self._pool, self._parts, self._remote, self._claims = pool, parts, remote, claims
        self._finished: list[tuple[int, Future[R]] | BaseException | None] = []
        self._taken = 0
        self._ready = threading.Semaphore(0)  # released once per entry of _finished
        threading.Thread(target=self._run, name="share-feeder", daemon=True).start()

    def results(self, what: str, *, wait: bool) -> Iterator[tuple[int, R, bool]]:
        """What the workers finished, as it finishes; with ``wait``, until they are done."""
        from concurrent.futures.process import BrokenProcessPool

        while self._ready.acquire(blocking=wait):
            entry = self._finished[self._taken]
            if entry is None:  # the last entry: nothing is running or left to start
                self._ready.release()  # and it stays the last, for the next call
                return
            self._taken += 1
            try:
                if isinstance(entry, BaseException):
                    raise entry
                yield entry[0], entry[1].result(), False
            except BrokenProcessPool as exc:
                raise WorkerError(
                    f"{what}: a worker process ended abruptly ({exc}); a script that asks "
                    "for workers > 1 must start from `if __name__ == '__main__':`") from None

    def _run(self) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        running: dict[Future[R], int] = {}
        try:
            for _ in range(self._pool.size):
                self._hand_out(running)
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    self._finish((running.pop(future), future))
                    if future.exception() is None:
                        self._hand_out(running)
            self._finish(None)
        except BaseException as exc:  # the pool shut down or broke under us
            self._finish(exc)

    def _hand_out(self, running: dict[Future[R], int]) -> None:
        if (index := self._claims.front()) is not None:
            running[self._pool.submit(self._remote, self._parts[index])] = index

    def _finish(self, entry: tuple[int, Future[R]] | BaseException | None) -> None:
        self._finished.append(entry)
        self._ready.release()
