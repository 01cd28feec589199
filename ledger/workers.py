"""Work split into parts and shared between this process and spawned workers.

Workers are spawned, never forked: the parent holds open store connections, which a
forked child must not touch. A script that asks for workers must therefore start from
``if __name__ == '__main__':`` (Python's rule for spawn). Workers take parts from the
front; this process takes them from the back, cancelling each before a worker starts
it, so no part runs twice and work begins while the workers are still starting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

from ledger.errors import LedgerError

P = TypeVar("P")
R = TypeVar("R")


class WorkerError(LedgerError):
    """A worker process ended abruptly (killed, out of memory, or a script without a
    ``__main__`` guard)."""

    exit_code = 1


def spawn_pool(size: int, initializer: Callable[..., object] | None = None,
               initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """An executor of ``size`` spawned processes, each set up by ``initializer(*initargs)``;
    they die with this process (:func:`die_with_parent`), and with the ``with`` block
    that uses the pool when an error leaves it (:class:`_SpawnPool`)."""
    import multiprocessing

    return _SpawnPool(max_workers=size, mp_context=multiprocessing.get_context("spawn"),
                      initializer=_start_worker, initargs=(initializer, initargs))


class _SpawnPool(ProcessPoolExecutor):
    """A process pool whose ``with`` block, left by an error (Ctrl-C included), stops
    the workers at once instead of waiting for the parts they are running.

    The error already decides the outcome: a part left to finish would only delay it,
    by as long as the whole job at worst. Parts only read the store or write scratch
    that the caller discards, so stopping one halfway loses nothing.
    """

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if exc_type is not None:
            for process in list((self._processes or {}).values()):  # no public way in 3.11
                process.terminate()
            self.shutdown(wait=True, cancel_futures=True)  # sees them gone: returns at once
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


def share(executor: Executor, parts: Sequence[P], remote: Callable[[P], R],
          local: Callable[[P], R], *, what: str) -> Iterator[tuple[int, R, bool]]:
    """Run every part once; yield ``(index, result, ran_here)`` as each finishes.

    ``remote`` must be picklable (a module-level function or a ``functools.partial``
    of one). Parts this process runs come first (from the back), then the workers'.
    """
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    futures = [executor.submit(remote, part) for part in parts]
    try:
        for index in reversed(range(len(parts))):
            if futures[index].cancel():  # no worker has started it: run it here
                yield index, local(parts[index]), True
        started = {future: i for i, future in enumerate(futures) if not future.cancelled()}
        for future in as_completed(started):
            yield started[future], future.result(), False
    except BrokenProcessPool as exc:
        raise WorkerError(
            f"{what}: a worker process ended abruptly ({exc}); a script that asks for "
            "workers > 1 must start from `if __name__ == '__main__':`") from None
    finally:
        for future in futures:
            future.cancel()
