"""Ingesting JSONL trace files: streaming, batched, idempotent, lossless.

Lines are read one at a time (memory does not grow with file size), validated,
and appended in batches of ``batch_size`` events per transaction. A re-run of the
same input counts every stored line as a duplicate; a kill at any point loses
nothing that was committed and a re-run completes the rest. Every line that is
not stored goes to the reject file (``{"source", "line", "reason", "raw"}``,
raw kept byte for byte, base64 where it is not UTF-8), so nothing is ever lost.
"""

from __future__ import annotations

import base64
import gc
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from ledger import chain
from ledger.appender import Appender, Outcome
from ledger.errors import (
    ConcurrencyError,
    InputError,
    OutputError,
    StoreError,
    UsageError,
    ValidationError,
)
from ledger.events import TraceEvent
from ledger.gcpause import paused_gc
from ledger.long_lines import LongLine
from ledger.paths import file_problem
from ledger.sources import STDIN, STDIN_LABEL, Cursor, Line, Part, check_sources, read_lines
from ledger.store import Store

__all__ = ["STDIN", "STDIN_LABEL", "IngestSummary", "RejectSink", "check_sources", "ingest"]
_RETRIES = 5
DEFAULT_BATCH_SIZE = 5000  # events per transaction (10,000: 2 GB ingest peaked at 301 MB RSS)
BATCH_BYTES = 8 * 2**20  # a batch also ends once its lines hold this many bytes


@dataclass
class IngestSummary:
    """Counts of one ingest run (the ``--json`` output of ``agentledger ingest``)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reject_file: str | None = None
    findings: int = 0
    lines: int = 0
    sources: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class RejectSink:
    """Appends rejected lines to a JSONL file, created on the first rejection.

    A write the system refuses (a full disk) raises :class:`OutputError`: the ingest
    stops there, and the entry it was writing is cut off the file, so the file holds
    whole entries only. A re-run of the same input rejects the same lines again, so
    from a file nothing is lost (from stdin, what was not yet stored or saved is). A
    file that an ingest killed mid-entry left without its final line break gets one
    before the next entry, so that entry is not joined to the broken one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        self._last = ""  # the last line written, for the error if saving it fails
        self._ends: list[int] = []  # where the file ends after each entry since a flush

    def write(self, source: str, line: int, reason: str, raw: bytes | LongLine,
              context: dict[str, Any] | None = None) -> None:
        self._last = f"{source} line {line}"
        if isinstance(raw, LongLine):
            self._write_long(source, line, reason, raw, context or {})
            return
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        entry = {"source": source, "line": line, "reason": reason, "raw": text,
                 "raw_encoding": encoding, **(context or {})}
        self._put([orjson.dumps(entry) + b"\n"])

    def _write_long(self, source: str, line: int, reason: str, raw: LongLine,
                    context: dict[str, Any]) -> None:
        """The same entry as for bytes, its ``raw`` written in pieces from disk."""
        head = orjson.dumps({"source": source, "line": line, "reason": reason})[:-1]
        tail = orjson.dumps({"raw_encoding": raw.encoding, **context})[1:]
        self._put(itertools.chain([head, b',"raw":'], raw.json_string(), [b",", tail, b"\n"]))

    def _put(self, pieces: Iterable[bytes]) -> None:
        """Append one entry, given in pieces."""
        try:
            if self._fh is None:
                self._fh = self._open()
            for piece in pieces:
                self._fh.write(piece)
            if self._ends:
                self._ends.append(self._fh.tell())
        except OSError as exc:
            raise self._failed(exc) from None

    def _open(self) -> IO[bytes]:
        fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # a pipe or a device
            return fh  # written as it comes: nothing to sync, or to cut off
        end = fh.tell()
        if end and not _ends_a_line(self.path, end):  # an entry cut off by a killed ingest
            fh.write(b"\n")
            end += 1
        self._ends = [end]
        return fh

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
                if self._ends:  # a file (a pipe cannot be synced: EINVAL)
                    os.fsync(self._fh.fileno())
                    self._ends = self._ends[-1:]
            except OSError as exc:
                raise self._failed(exc) from None

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as exc:
                raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputError:
        if self._fh is not None:  # what is left in its buffer cannot be written either
            fh, self._fh = self._fh, None
            with suppress(OSError):
                if self._ends:  # a file: the entry being written may be cut short
                    written = os.fstat(fh.fileno()).st_size
                    os.ftruncate(fh.fileno(), max((e for e in self._ends if e <= written),
                                                     default=written))
            with suppress(OSError, ValueError):
                getattr(fh, "raw", fh).close()  # its buffer is dropped, not written after
                fh.close()
        return OutputError(
            f"cannot write the reject file {self.path} ({exc.strerror or exc}): the ingest "
            f"stopped while saving rejected lines (the last: {self._last or 'none'}); what "
            "it stored is kept, and running the same ingest again once the file can be "
            "written saves the rejected lines and stores the rest")


def _ends_a_line(path: str, size: int) -> bool:
    """Whether the file's ``size`` bytes end with a line break (True if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(size - 1)
            return fh.read(1) == b"\n"
    except OSError:
        return True


def check_reject_file(path: str) -> None:
    """Raise UsageError, before anything is stored, if the reject file cannot be made:
    rejected lines must have somewhere to go."""
    if (problem := file_problem(path)) is not None:
        raise UsageError(f"reject file {path}: {problem}")


def default_reject_path() -> str:
    """``rejected-<UTC time>.jsonl`` in the current directory."""
    return datetime.now(UTC).strftime("rejected-%Y%m%dT%H%M%SZ.jsonl")


def ingest(
    store: Store,
    sources: Sequence[str],
    *,
    reject_file: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reorder: bool = False,
    progress: Callable[[int], None] | None = None,
    appender: Appender | None = None,
    workers: int = 1,
) -> IngestSummary:
    """Ingest JSONL sources (paths or ``-`` for stdin) into the store.

    With ``workers`` > 1 the streams are shared out between this process and up to
    ``workers - 1`` spawned ones (``ledger.ingest_processes``: files only, and one
    process per ``BYTES_PER_PROCESS`` of input at most); the result is the same.
    """
    check_sources(sources)
    path = reject_file or default_reject_path()
    check_reject_file(path)
    try:
        if workers > 1:
            from ledger.ingest_processes import ingest_in_processes, process_count

            count = process_count(store, sources, workers)
            if count > 1:
                return ingest_in_processes(store, sources, count, reject_file=path,
                                           batch_size=batch_size, reorder=reorder,
                                           progress=progress)
        return ingest_part(store, sources, reject_file=path, batch_size=batch_size,
                           reorder=reorder, progress=progress, appender=appender)
    except StoreError as exc:  # the server went away, the disk filled: say what is kept
        exc.args = (f"{exc}; {RERUN_HINT}",)
        raise


RERUN_HINT = ("what was committed is kept, and running the same ingest again completes it "
              "(what is stored counts as duplicates)")


def ingest_part(
    store: Store,
    sources: Sequence[str],
    *,
    reject_file: str,
    batch_size: int,
    reorder: bool,
    progress: Callable[[int], None] | None = None,
    appender: Appender | None = None,
    part: Part | None = None,
    notify: bool = True,
    cursor: Cursor | None = None,
    stop: Callable[[], bool] | None = None,
) -> IngestSummary:
    """Ingest the lines of one part's streams (every line when ``part`` is None).

    After each batch the store's commit listeners run, unless ``notify`` is false
    (the caller runs them itself). With ``cursor`` the ingest starts where it points
    and leaves it after the last line taken; with ``stop`` it ends, everything taken
    committed, after the first line at which ``stop()`` is true.
    """
    summary = IngestSummary(sources=list(sources))
    sink = RejectSink(reject_file)
    app = appender or Appender(store)
    try:
        with paused_gc():  # collected by hand after each batch (and batch of rejects)
            batch: list[tuple[Line, TraceEvent]] = []
            held = 0  # bytes of the batch's lines: large events end a batch sooner
            try:
                for line in read_lines(sources, progress, part=part, cursor=cursor):
                    summary.lines += 1
                    event = line.event
                    if isinstance(event, ValidationError):
                        _reject(sink, summary, line.source, line.number, str(event), line.raw,
                                _context(line.raw, event))
                        if summary.rejected % batch_size == 0:
                            gc.collect(1)
                    else:
                        batch.append((line, event))
                        held += len(line.raw)
                        if len(batch) >= batch_size or held >= BATCH_BYTES:
                            _commit(app, batch, sink, summary, reorder, notify)
                            batch, held = [], 0
                            gc.collect(1)  # young objects only: the batch's cycles are garbage
                    if stop is not None and stop():
                        break
            except InputError as exc:  # the input broke off: keep what was read before it
                if not summary.lines:
                    raise
                _commit(app, batch, sink, summary, reorder, notify)
                raise InputError(f"{exc}; the lines before it are stored") from None
            _commit(app, batch, sink, summary, reorder, notify)
    finally:
        sink.close()
    if summary.rejected:
        summary.reject_file = sink.path
    return summary


def _commit(app: Appender, batch: list[tuple[Line, TraceEvent]], sink: RejectSink,
            summary: IngestSummary, reorder: bool, notify: bool) -> None:
    if not batch:
        return
    if reorder:
        batch.sort(key=lambda item: (item[1].tenant, item[1].trace_id, item[1].seq))
    for attempt in range(_RETRIES):
        outcomes = app.stage([event for _, event in batch])
        try:
            app.flush(notify=False)  # listeners run once the rejects are safe
            break
        except ConcurrencyError:
            if attempt == _RETRIES - 1:
                raise
    summary.findings += app.findings_written
    for item, outcome in zip(batch, outcomes, strict=True):
        _count(summary, sink, item, outcome)
    sink.flush()
    if notify:
        app.store.committed()


def _count(summary: IngestSummary, sink: RejectSink, item: tuple[Line, TraceEvent],
           outcome: Outcome) -> None:
    if outcome.status == "accepted":
        summary.accepted += 1
    elif outcome.status == "duplicate":
        summary.duplicates += 1
    else:
        ln, event = item
        context = {"tenant": event.tenant, "trace_id": event.trace_id, "seq": event.seq}
        _reject(sink, summary, ln.source, ln.number, outcome.reason or "rejected", ln.raw, context)


def _reject(sink: RejectSink, summary: IngestSummary, src: str, number: int, reason: str,
            raw: bytes | LongLine, context: dict[str, Any]) -> None:
    summary.rejected += 1
    sink.write(src, number, reason, raw, context)


def _context(raw: bytes | LongLine, error: ValidationError) -> dict[str, Any]:
    """Where a rejected line belongs, as far as it can be read (tenant, trace, seq, field)."""
    context: dict[str, Any] = {"field": error.field}
    if isinstance(raw, LongLine) or len(raw) > chain.MAX_EVENT_BYTES:  # refused unread
        return context
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return context
    if isinstance(obj, dict):
        for key in ("tenant", "trace_id", "seq"):
            if isinstance(obj.get(key), str | int) and not isinstance(obj.get(key), bool):
                context[key] = obj[key]
    return context
