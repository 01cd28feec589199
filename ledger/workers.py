"""Work split into parts and shared between this process and spawned workers.

Workers are spawned, never forked: the parent holds open store connections, which a
forked child must not touch. A script that asks for workers must therefore start from
``if __name__ == '__main__':`` (Python's rule for spawn). Workers take parts from the
front; this process takes them from the back, so work begins while the workers are
still starting. A part is claimed when it starts, in memory the processes share, by
whichever side gets to it first: every part is queued for the workers at once (so a
worker goes from one part to the next without waiting), and a worker passes over a
part this process has already taken, so no part runs twice or waits behind a busy
worker while this process could run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from ledger.errors import LedgerError

P = TypeVar("P")
R = TypeVar("R")


class WorkerError(LedgerError):
    """A worker process ended abruptly (killed, out of memory, or a script without a
    ``__main__`` guard)."""

    exit_code = 1


GUARD_HINT = "a script that asks for workers > 1 must start from `if __name__ == '__main__':`"


def refuse_while_spawning(what: str) -> None:
    """Raise WorkerError when this is a spawned process still importing the main module
    of a script without the ``__main__`` guard, which is about to start the same job.

    Python raises for such a process only when it spawns in turn; a job that first
    waits for a lock the parent holds (a PostgreSQL rebuild's scratch lock) would wait
    forever, and the parent with it.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise WorkerError(f"{what}: started in a spawned process as it imports the main "
                          f"module; {GUARD_HINT}")


def spawn_pool(size: int, initializer: Callable[..., object] | None = None,
               initargs: tuple[Any, ...] = ()) -> SpawnPool:
    """An executor of ``size`` spawned processes, each set up by ``initializer(*initargs)``;
    they die with this process (:func:`die_with_parent`), and with the ``with`` block
    that uses the pool when an error leaves it (:class:`SpawnPool`)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    claims = context.Array("q", 3)  # generation, front, back: see share()
    return SpawnPool(size, claims, mp_context=context, initializer=_start_worker,
                     initargs=(claims, initializer, initargs))


class SpawnPool(ProcessPoolExecutor):
    """A process pool whose ``with`` block, left by an error (Ctrl-C included), stops
    the workers at once instead of waiting for the parts they are running.

    The error already decides the outcome: a part left to finish would only delay it,
    by as long as the whole job at worst. Parts only read the store or write scratch
    that the caller discards, so stopping one halfway loses nothing.
    """

    def __init__(self, size: int, claims: Any, **kwargs: Any) -> None:
        super().__init__(max_workers=size, **kwargs)
        self.size = size
        self.claims = claims  # which parts of the current share() are taken

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if exc_type is not None:
            for process in list((self._processes or {}).values()):  # no public way in 3.11
                process.terminate()
            self.shutdown(wait=True, cancel_futures=True)  # sees them gone: returns at once
        return super().__exit__(exc_type, exc, tb)


_claims: list[Any] = []  # in a worker: the pool's claims (set up at its start)


def _start_worker(claims: Any, initializer: Callable[..., object] | None,
                  initargs: tuple[Any, ...]) -> None:
    die_with_parent()
    _claims.append(claims)
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
    what the workers have finished, so an error in a worker stops it there. One
    ``share`` at a time per pool.
    """
    from concurrent.futures import as_completed

    claims = pool.claims
    with claims.get_lock():  # generation, front, back; parts queued before are void
        claims[0] += 1
        claims[1], claims[2] = 0, len(parts)
        generation = claims[0]
    futures = {pool.submit(_claimed, generation, index, remote, part): index
               for index, part in enumerate(parts)}
    unseen = dict(futures)
    try:
        while (index := _claim_back(claims)) is not None:
            result = local(parts[index])
            yield index, result, True
            for future in [f for f in unseen if f.done()]:
                yield from _finished(future, unseen.pop(future), what)
        for future in as_completed(unseen):
            yield from _finished(future, unseen[future], what)
    finally:  # this share is over: whatever is left, nobody starts
        lock = claims.get_lock()
        if lock.acquire(timeout=5):  # (a worker killed holding it must not hang us)
            claims[0] += 1
            lock.release()
        for future in futures:
            future.cancel()


class _Passed:
    """What a worker returns for a part it did not run (this process took it)."""


def _claimed(generation: int, index: int, remote: Callable[[P], R], part: P) -> R | _Passed:
    """In a worker: run ``part`` unless this process has taken it (or the share ended).

    ``front`` is one past the highest part a worker has taken, ``back`` the lowest this
    process has: a worker takes any part below ``back``, this process only parts at or
    above ``front``, so no part is taken twice, and none is left (every part below
    ``back`` is queued for the workers).
    """
    claims = _claims[0]
    with claims.get_lock():
        if claims[0] != generation or index >= claims[2]:
            return _Passed()
        claims[1] = max(claims[1], index + 1)
    return remote(part)


def _claim_back(claims: Any) -> int | None:
    with claims.get_lock():
        if claims[1] >= claims[2]:
            return None
        claims[2] -= 1
        return int(claims[2])


def _finished(future: Future[Any], index: int, what: str) -> Iterator[tuple[int, Any, bool]]:
    """A worker's result for part ``index``, if it ran the part."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        result = future.result()
    except BrokenProcessPool as exc:
        raise WorkerError(
            f"{what}: a worker process ended abruptly ({exc}); {GUARD_HINT}") from None
    if not isinstance(result, _Passed):
        yield index, result, False
