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
does), this process takes a smaller share of the streams (``FOLLOWING_WEIGHTS``) and
keeps the followers caught up every ``FOLLOW_INTERVAL`` seconds between its own lines,
so the views are built beside the ingest and this process's core is not left idle
between catch-ups. Its batches hold fewer events, in proportion to its share, and
do not each trigger a catch-up (each costs a transaction per projection).

A spawned process that has finished its share takes the rest of this one's (from the
line this one stopped at, everything before it committed), so neither core waits
while the other still has lines to ingest.

Rejected lines of spawned process k go to ``<reject file>.part<k>`` (written and
synced like the main file), appended to the reject file when that process ends; the
reject file thus holds this process's lines, then process 1's, and so on, each
naming its source and line. If this process is killed, a part file may remain
beside the reject file, with every line it rejected. A spawned process exits when
this one dies.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

from ledger.appender import CACHE_SIZE, Appender
from ledger.errors import LedgerError, OutputError, StoreError
from ledger.ingest import RERUN_HINT, IngestSummary, ingest_part
from ledger.sources import STDIN, Cursor, Part, input_size
from ledger.store import Store
from ledger.workers import GUARD_HINT, WorkerError, die_with_parent, shareable

BYTES_PER_PROCESS = 8_000_000  # ~25k events: a smaller share does not repay starting Python
FOLLOW_INTERVAL = 1.0
"""Seconds between catch-ups of the followers while the parts ingest.

Each catch-up's transaction takes the store's write lock from the ingesting processes,
and a SQLite one writes every page its rows dirtied to the write-ahead log: most of
them leaf pages of the views' random-key indexes, dirtied again by the next catch-up,
so fewer, larger catch-ups write far less. 1M events on SQLite, two processes, runs
alternating (2026-12-05): 28.0-29.6k/s in eight runs with 0.25 s (~160 view commits,
4.8-5.4 GB of log written) and 29.8-31.8k/s in five with 1 s (120-134 commits,
3.9-4.4 GB); 30.7, 31.9k/s with 2.5 s. 300k events: 29.9, 30.8k/s and 33.6,
32.1k/s. PostgreSQL, 1M: 31.0, 28.7k/s and 30.4, 28.8k/s. (With one ingesting process,
which took no streams while following, 0.25 s had been best at 300k.)
"""
_PROGRESS_BYTES = 1 << 20
_TICK_BYTES = 1 << 16  # how often this process, ingesting its part, sees to the others
FOLLOWING_WEIGHTS = (1, 4)
"""With projections attached: this process's weight and each spawned process's.

This one also keeps the views caught up. Taking no streams, as it did, left its core
idle half the time. Two processes, one run each, before and after (code 76e743e and
the change that brought these weights; 2026-12-05): 300k events, SQLite 26.3k/s ->
30.3k/s and PostgreSQL 24.4k/s -> 30.2k/s; 1M events, 23.3-23.9k/s -> 26.7k/s and
26.7k/s -> 29.4k/s; the CLI on 2 GB (6.8M events, SQLite), 22.1k/s -> 21.0k/s, where
keeping the views up takes most of this process's core, with peak RSS 266 -> 291 MB.
"""


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
    total = sum(input_size(src) for src in sources)
    return max(1, min(workers, total // BYTES_PER_PROCESS))


def ingest_in_processes(
    store: Store, sources: Sequence[str], count: int, *, reject_file: str, batch_size: int,
    reorder: bool, progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest with ``count`` processes, this one taking part 0; counts are summed.

    When something follows the store's commits (attached projections), this process
    takes a smaller share (``FOLLOWING_WEIGHTS``) and keeps the followers caught up
    between its own lines, so that work runs beside the ingest, not after it; once a
    spawned process has finished its share, it takes the rest of this one's.
    """
    import multiprocessing

    follow = store.has_commit_listeners
    mine, theirs = FOLLOWING_WEIGHTS if follow else (1, 1)
    weights = [mine] + [theirs] * (count - 1)
    context = multiprocessing.get_context("spawn")  # never fork a process holding connections
    children = _Children(count, progress, store.committed if follow else None)
    parts = _PartFiles(reject_file)
    try:
        for index in range(1, count):
            receiver, sender = context.Pipe(duplex=False)
            orders, order_sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_run_part, name=f"agentledger-ingest-{index}", daemon=True,
                args=(sender, orders, store.backend.url, list(sources),
                      parts.path(index), batch_size, reorder,
                      Part.of(index, weights), progress is not None))
            child.start()
            sender.close()  # the child holds the only sending end: its death ends the pipe
            orders.close()  # and this process the only end that orders it
            children.add(index, child, receiver, order_sender)
        # A smaller share gets smaller batches and stream cache: this process's memory
        # stays close to a follower's, and its commits come about as often as the others'.
        # Once a spawned process has finished its own share, it takes the rest of this one.
        cursor, own = Cursor(), Part.of(0, weights)
        summary = ingest_part(store, sources, reject_file=reject_file,
                              batch_size=max(1, batch_size * mine // theirs), reorder=reorder,
                              progress=children.tick if follow or progress else None,
                              part=own, notify=not follow,
                              appender=Appender(store, cache_size=CACHE_SIZE * mine // theirs),
                              cursor=cursor, stop=children.any_idle if follow else None)
        if follow and children.any_idle():  # it stopped early: the rest goes on
            children.hand_off(own, cursor)
        results = children.collect()
        for index in range(1, count):
            _add(summary, results[index])
            if _append_file(parts.path(index), reject_file):
                summary.reject_file = reject_file
    finally:
        children.stop()
        parts.remove_folder()
    store.committed()  # listeners (projections) catch up with every part's events
    return summary


class _PartFiles:
    """Where each spawned part saves its rejected lines until they are appended to the
    reject file: beside it (``rejects.jsonl.part1``), where they are found should the
    ingest die first, or in a temporary folder when the reject file is a pipe or a
    device (``--reject-file /dev/stderr``), beside which nothing can be made."""

    def __init__(self, reject_file: str) -> None:
        self.reject_file = reject_file
        self.folder: str | None = None
        if os.path.exists(reject_file) and not os.path.isfile(reject_file):
            self.folder = tempfile.mkdtemp(prefix="agentledger-rejects-")

    def path(self, index: int) -> str:
        if self.folder is None:
            return f"{self.reject_file}.part{index}"
        return os.path.join(self.folder, f"part{index}.jsonl")

    def remove_folder(self) -> None:
        """The temporary folder, once empty (a part file left in it is named in the
        error that left it)."""
        if self.folder is not None:
            with suppress(OSError):
                os.rmdir(self.folder)


class _Children:
    """The spawned parts: their messages and orders, and what runs every ``FOLLOW_INTERVAL``.

    ``progress`` receives how far the part furthest behind has read, in bytes, as it
    moves (every part reads all the input; the rest of a part that was handed off moves
    that part on). ``meanwhile`` (the followers' catch-up) runs every ``FOLLOW_INTERVAL``
    seconds, from :meth:`tick` while this process ingests its own part and from
    :meth:`collect` after it. A part that has sent its summary waits, idle, for an
    order: the rest of another part (:meth:`hand_off`) or, from :meth:`collect`, to exit.
    """

    def __init__(self, count: int, progress: Callable[[int], None] | None,
                 meanwhile: Callable[[], None] | None) -> None:
        self.progress = progress
        self.read = [0] * count  # bytes each part has read
        self.shown = 0  # the least of them, as progress last showed it
        self.meanwhile = meanwhile
        self.parts: dict[Connection, tuple[int, Any, Connection]] = {}
        self.waiting: set[Connection] = set()
        self.idle: list[Connection] = []
        self.results: dict[int, IngestSummary] = {}
        self.due = time.monotonic() + FOLLOW_INTERVAL
        self._unchecked = 0

    def add(self, index: int, child: Any, receiver: Connection, orders: Connection) -> None:
        self.parts[receiver] = (index, child, orders)
        self.waiting.add(receiver)

    def tick(self, nbytes: int) -> None:
        """Called as this process reads its input: every ``_TICK_BYTES``, see to the parts."""
        self._moved(0, nbytes)
        self._unchecked += nbytes
        if self._unchecked >= _TICK_BYTES:
            self._unchecked = 0
            self._poll(0.0)

    def any_idle(self) -> bool:
        """Whether a part has finished and waits for an order."""
        return bool(self.idle)

    def hand_off(self, part: Part, cursor: Cursor) -> None:
        """Order an idle part to ingest ``part``'s streams from ``cursor`` on."""
        receiver = self.idle.pop()
        self.waiting.add(receiver)  # if it has gone, collect() says so
        with suppress(OSError):
            self.parts[receiver][2].send(("more", (part, (cursor.source, cursor.offset,
                                                          cursor.line))))

    def collect(self) -> dict[int, IngestSummary]:
        """Every part's summary (the sum, for one that took more), once all are idle."""
        while self.waiting:
            self._poll(None)
        return self.results

    def stop(self) -> None:
        """Let the idle parts exit, and stop any other (this process failed first)."""
        for receiver, (_, child, orders) in self.parts.items():
            if receiver in self.idle:
                with suppress(OSError):
                    orders.send(("exit", None))
            elif child.is_alive():
                child.terminate()
            orders.close()
            receiver.close()
            child.join()

    def _poll(self, timeout: float | None) -> None:
        """Handle the messages that arrive within ``timeout`` (None: until the next
        catch-up is due, or until a message if nothing follows), then catch up if due."""
        from multiprocessing.connection import wait

        if self.meanwhile is not None and timeout is None:
            timeout = max(0.0, self.due - time.monotonic())
        if self.waiting:
            for ready in wait(list(self.waiting), timeout=timeout):
                assert isinstance(ready, Connection)
                self._receive(ready)
        if self.meanwhile is not None and time.monotonic() >= self.due:
            self.meanwhile()
            self.due = time.monotonic() + FOLLOW_INTERVAL

    def _receive(self, ready: Connection) -> None:
        index, child, _ = self.parts[ready]
        try:
            kind, value = ready.recv()
        except EOFError:
            child.join()
            raise WorkerError(
                f"ingest process {index} ended abruptly (exit code {child.exitcode}); what "
                f"it committed is kept: run the same ingest again to complete it ({GUARD_HINT})"
            ) from None
        if kind == "progress":
            self._moved(*value)
            return
        self.waiting.discard(ready)
        if kind == "error":
            exit_code, text = value
            raise PartFailed(f"ingest process {index}: {text}", exit_code)
        if kind == "crash":
            raise WorkerError(f"ingest process {index} failed: {value}")
        done = IngestSummary(**value)
        if index in self.results:
            _add(self.results[index], done)
        else:
            self.results[index] = done
        self.idle.append(ready)

    def _moved(self, part: int, nbytes: int) -> None:
        self.read[part] += nbytes
        if self.progress is not None and (least := min(self.read)) > self.shown:
            self.progress(least - self.shown)
            self.shown = least


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
    try:
        with open(part_path, "rb") as src, open(path, "ab") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            if stat.S_ISREG(os.fstat(dst.fileno()).st_mode):  # a pipe cannot be synced
                os.fsync(dst.fileno())
    except OSError as exc:
        raise OutputError(
            f"cannot append {part_path} to the reject file {path} ({exc.strerror or exc}): "
            "every line is stored or saved, those rejected by that process in "
            f"{part_path}") from None
    os.remove(part_path)
    return True


def _run_part(sender: Connection, orders: Connection, url: str, sources: list[str],
              reject_file: str, batch_size: int, reorder: bool, part: Part,
              report_progress: bool) -> None:
    """A spawned process: ingest one part and send back its summary (or its error) and,
    if asked, the bytes read as it goes (``("progress", (part index, n))`` about every
    megabyte); then take what ``orders`` ask (the rest of another part) until told to exit."""
    die_with_parent()
    unreported, reading = 0, part.index  # the rest of a part moves that part on

    def read(nbytes: int) -> None:
        nonlocal unreported
        unreported += nbytes
        if unreported >= _PROGRESS_BYTES:
            sender.send(("progress", (reading, unreported)))
            unreported = 0

    try:
        with Store.open(url) as store:
            job: tuple[Part, Cursor | None] | None = (part, None)
            while job is not None:
                reading = job[0].index
                summary = ingest_part(store, sources, reject_file=reject_file,
                                      batch_size=batch_size, reorder=reorder, part=job[0],
                                      cursor=job[1],
                                      progress=read if report_progress else None)
                if unreported:
                    sender.send(("progress", (reading, unreported)))
                    unreported = 0
                sender.send(("done", summary.as_json()))
                job = _next_job(orders)
        sender.close()
        return
    except LedgerError as exc:  # sent as exit code and text: PartFailed names the part
        text = f"{exc}; {RERUN_HINT}" if isinstance(exc, StoreError) else str(exc)
        message: tuple[str, Any] = ("error", (exc.exit_code, text))
    except Exception as exc:
        message = ("crash", f"{type(exc).__name__}: {exc}")
    try:
        sender.send(message)
    finally:
        sender.close()


def _next_job(orders: Connection) -> tuple[Part, Cursor] | None:
    """The next order: the rest of a part from a place in the input, or None (exit)."""
    try:
        kind, value = orders.recv()
    except EOFError:  # the ingesting process is gone
        return None
    if kind != "more":
        return None
    part, (source, offset, line) = value
    return part, Cursor(source, offset, line)
