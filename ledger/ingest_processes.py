"""One ingest shared out between processes by stream.

Validating, hashing and chaining cost far more than storing, and streams are
independent, so ``ingest --workers N`` runs N ingests of the same files side by
side: this process and N - 1 spawned ones, each with its own store connection.
Each takes the streams of its :class:`~ledger.sources.Part` (a stable hash of tenant
and trace id): every process reads all the input, decodes each line far enough to
find its stream, and validates, stages and stores only its own. A stream's events
therefore stay in input order in one process, and gaps, duplicates and conflicts
are judged exactly as in one process. Transactions still serialise on the store's
write lock (SQLite's, PostgreSQL's events-table lock), so notification ids keep
their commit order for projections.

When something follows the store's commits (projections attached, as the CLI
does), this process ingests nothing: the spawned processes share all the streams
and this one keeps the followers caught up meanwhile, so the views are built beside
the ingest instead of after each of this process's batches.

Rejected lines of part k go to ``<reject file>.part<k>`` (written and synced like
the main file), appended to the reject file when that part ends; the reject file
thus holds part 0's lines, then part 1's, and so on, each naming its source and
line. If this process is killed, a part file may remain beside the reject file,
with every line it rejected. A spawned process exits when this one dies.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ledger.errors import LedgerError
from ledger.ingest import IngestSummary, ingest_part
from ledger.sources import STDIN, Part
from ledger.store import Store
from ledger.workers import WorkerError, die_with_parent, shareable

BYTES_PER_PROCESS = 8_000_000  # ~25k events: a smaller share does not repay starting Python
FOLLOW_INTERVAL = 0.25
"""Seconds between catch-ups of the followers while the parts ingest.

Each catch-up takes the store's write lock from the ingesting processes. At 300k
events on SQLite with projections attached (one ingesting process): 22.7-24.7k/s
with 0.1 s, 25.8-26.0k/s with 0.25 s, 25.4-26.7k/s with 0.5 s, 23.9-26.2k/s with 1-2 s.
"""
_PROGRESS_BYTES = 1 << 20


class PartFailed(LedgerError):
    """A spawned ingest process stopped on an error; its exit code is that error's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def process_count(store: Store, sources: Sequence[str], workers: int) -> int:
    """How many processes to ingest with: at most ``workers``, one per
    ``BYTES_PER_PROCESS`` of input; 1 for stdin or a store only this process can open."""
    if workers <= 1 or STDIN in sources or not shareable(store.backend.url):
        return 1
    total = sum(os.path.getsize(src) for src in sources)
    return max(1, min(workers, total // BYTES_PER_PROCESS))


def ingest_in_processes(
    store: Store, sources: Sequence[str], count: int, *, reject_file: str, batch_size: int,
    reorder: bool, progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest with ``count`` processes; counts are summed.

    This process takes part 0, unless something follows the store's commits (attached
    projections): then the spawned processes share all the streams and this one keeps
    the followers caught up meanwhile, so that work runs beside the ingest, not after it.
    """
    import multiprocessing

    follow = store.has_commit_listeners
    parts = count - 1 if follow else count
    context = multiprocessing.get_context("spawn")  # never fork a process holding connections
    children: list[tuple[int, Any, Connection]] = []
    try:
        for index in range(0 if follow else 1, parts):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_run_part, name=f"agentledger-ingest-{index}", daemon=True,
                args=(sender, store.backend.url, list(sources), _part_path(reject_file, index),
                      batch_size, reorder, Part(index, parts),
                      follow and index == 0 and progress is not None))
            child.start()
            sender.close()  # the child holds the only sending end: its death ends the pipe
            children.append((index, child, receiver))
        if follow:
            summary = IngestSummary(sources=list(sources))
        else:
            summary = ingest_part(store, sources, reject_file=reject_file, batch_size=batch_size,
                                  reorder=reorder, progress=progress, part=Part(0, count))
        results = _collect(children, progress, store.committed if follow else None)
        for index, _, _ in children:
            _add(summary, results[index])
            if _append_file(_part_path(reject_file, index), reject_file):
                summary.reject_file = reject_file
    finally:
        for _, child, receiver in children:
            receiver.close()
            if child.is_alive():  # this process failed first: the others stop too
                child.terminate()
            child.join()
    store.committed()  # listeners (projections) catch up with every part's events
    return summary


def _part_path(reject_file: str, index: int) -> str:
    return f"{reject_file}.part{index}"


def _collect(children: list[tuple[int, Any, Connection]],
             progress: Callable[[int], None] | None,
             meanwhile: Callable[[], None] | None) -> dict[int, IngestSummary]:
    """Every part's summary, as each ends; ``meanwhile`` runs every ``FOLLOW_INTERVAL``
    seconds (progress messages do not make it run sooner) until the last one has."""
    from multiprocessing.connection import wait

    waiting = {receiver: (index, child) for index, child, receiver in children}
    results: dict[int, IngestSummary] = {}
    due = time.monotonic()
    while waiting:
        if meanwhile is not None and time.monotonic() >= due:
            meanwhile()
            due = time.monotonic() + FOLLOW_INTERVAL
        timeout = max(0.0, due - time.monotonic()) if meanwhile is not None else None
        for ready in wait(list(waiting), timeout=timeout):
            assert isinstance(ready, Connection)
            index, child = waiting[ready]
            try:
                kind, value = ready.recv()
            except EOFError:
                child.join()
                raise WorkerError(
                    f"ingest process {index} ended abruptly (exit code {child.exitcode}); what "
                    "it committed is kept: run the same ingest again to complete it (a script "
                    "that ingests with workers > 1 must start from `if __name__ == '__main__':`)"
                ) from None
            if kind == "progress":
                if progress is not None:
                    progress(value)
                continue
            del waiting[ready]
            if kind == "error":
                exit_code, text = value
                raise PartFailed(f"ingest process {index}: {text}", exit_code)
            if kind == "crash":
                raise WorkerError(f"ingest process {index} failed: {value}")
            results[index] = IngestSummary(**value)
    return results


def _add(total: IngestSummary, part: IngestSummary) -> None:
    total.accepted += part.accepted
    total.duplicates += part.duplicates
    total.rejected += part.rejected
    total.findings += part.findings
    total.lines += part.lines


def _append_file(part_path: str, path: str) -> bool:
    """Append a part's reject file to the reject file (synced), then remove it."""
    if not os.path.exists(part_path):
        return False
    with open(part_path, "rb") as src, open(path, "ab") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.remove(part_path)
    return True


def _run_part(sender: Connection, url: str, sources: list[str], reject_file: str,
              batch_size: int, reorder: bool, part: Part, report_progress: bool) -> None:
    """A spawned process: ingest one part, send back its summary (or its error), and,
    if asked, the bytes read as it goes (``("progress", n)`` about every megabyte)."""
    die_with_parent()
    unreported = 0

    def read(nbytes: int) -> None:
        nonlocal unreported
        unreported += nbytes
        if unreported >= _PROGRESS_BYTES:
            sender.send(("progress", unreported))
            unreported = 0

    try:
        with Store.open(url) as store:
            summary = ingest_part(store, sources, reject_file=reject_file,
                                  batch_size=batch_size, reorder=reorder, part=part,
                                  progress=read if report_progress else None)
        if unreported:
            sender.send(("progress", unreported))
        message: tuple[str, Any] = ("done", summary.as_json())
    except LedgerError as exc:  # sent as exit code and text: PartFailed names the part
        message = ("error", (exc.exit_code, str(exc)))
    except Exception as exc:
        message = ("crash", f"{type(exc).__name__}: {exc}")
    try:
        sender.send(message)
    finally:
        sender.close()
