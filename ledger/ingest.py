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
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from ledger.appender import Appender, Outcome
from ledger.errors import ConcurrencyError, InputError, ValidationError
from ledger.events import TraceEvent, parse_line
from ledger.gcpause import paused_gc
from ledger.store import Store

STDIN = "-"
STDIN_LABEL = "<stdin>"  # how stdin is named in the reject file
_RETRIES = 5


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


@dataclass(frozen=True, slots=True)
class _Line:
    source: str
    number: int
    raw: bytes
    event: TraceEvent


class RejectSink:
    """Appends rejected lines to a JSONL file, created on the first rejection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def write(self, source: str, line: int, reason: str, raw: bytes,
              context: dict[str, Any] | None = None) -> None:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        entry = {"source": source, "line": line, "reason": reason, "raw": text,
                 "raw_encoding": encoding, **(context or {})}
        if self._fh is None:
            self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._fh.write(orjson.dumps(entry) + b"\n")

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def default_reject_path() -> str:
    """``rejected-<UTC time>.jsonl`` in the current directory."""
    return datetime.now(UTC).strftime("rejected-%Y%m%dT%H%M%SZ.jsonl")


def check_sources(sources: Sequence[str]) -> None:
    """Raise InputError (before anything is ingested) for an unreadable source."""
    for src in sources:
        if src == STDIN:
            continue
        if not os.path.exists(src):
            raise InputError(f"{src}: no such file")
        if os.path.isdir(src):
            raise InputError(f"{src}: is a directory")
        if not os.access(src, os.R_OK):
            raise InputError(f"{src}: permission denied")


def ingest(
    store: Store,
    sources: Sequence[str],
    *,
    reject_file: str | None = None,
    batch_size: int = 5000,
    reorder: bool = False,
    progress: Callable[[int], None] | None = None,
    appender: Appender | None = None,
) -> IngestSummary:
    """Ingest JSONL sources (paths or ``-`` for stdin) into the store."""
    check_sources(sources)
    summary = IngestSummary(sources=list(sources))
    sink = RejectSink(reject_file or default_reject_path())
    app = appender or Appender(store)
    try:
        with paused_gc():  # collected by hand after each batch (and batch of rejects)
            batch: list[_Line] = []
            for src in sources:
                label = STDIN_LABEL if src == STDIN else src
                for number, raw, event_or_error in _read(src, progress):
                    summary.lines += 1
                    if isinstance(event_or_error, ValidationError):
                        _reject(sink, summary, label, number, str(event_or_error), raw,
                                _context(raw, event_or_error))
                        if summary.rejected % batch_size == 0:
                            gc.collect(1)
                        continue
                    batch.append(_Line(label, number, raw, event_or_error))
                    if len(batch) >= batch_size:
                        _commit(app, batch, sink, summary, reorder)
                        batch = []
                        gc.collect(1)  # young objects only: the batch's cycles are garbage
            _commit(app, batch, sink, summary, reorder)
    finally:
        sink.close()
    if summary.rejected:
        summary.reject_file = sink.path
    return summary


def _read(
    src: str, progress: Callable[[int], None] | None
) -> Iterator[tuple[int, bytes, TraceEvent | ValidationError]]:
    fh: IO[bytes]
    try:
        fh = sys.stdin.buffer if src == STDIN else open(src, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{src}: {exc.strerror}") from None
    try:
        for number, line in enumerate(fh, 1):
            if progress is not None:
                progress(len(line))
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                yield number, raw, parse_line(raw)
            except ValidationError as exc:
                yield number, raw, exc
    except OSError as exc:
        raise InputError(f"{src}: read failed: {exc}") from None
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _commit(app: Appender, batch: list[_Line], sink: RejectSink, summary: IngestSummary,
            reorder: bool) -> None:
    if not batch:
        return
    if reorder:
        batch.sort(key=lambda ln: (ln.event.tenant, ln.event.trace_id, ln.event.seq))
    for attempt in range(_RETRIES):
        outcomes = app.stage([ln.event for ln in batch])
        findings = app.pending_findings
        try:
            app.flush(notify=False)  # listeners run once the rejects are safe
            break
        except ConcurrencyError:
            if attempt == _RETRIES - 1:
                raise
    summary.findings += findings
    for ln, outcome in zip(batch, outcomes, strict=True):
        _count(summary, sink, ln, outcome)
    sink.flush()
    app.store.committed()


def _count(summary: IngestSummary, sink: RejectSink, ln: _Line, outcome: Outcome) -> None:
    if outcome.status == "accepted":
        summary.accepted += 1
    elif outcome.status == "duplicate":
        summary.duplicates += 1
    else:
        context = {"tenant": ln.event.tenant, "trace_id": ln.event.trace_id, "seq": ln.event.seq}
        _reject(sink, summary, ln.source, ln.number, outcome.reason or "rejected", ln.raw, context)


def _reject(sink: RejectSink, summary: IngestSummary, src: str, number: int, reason: str,
            raw: bytes, context: dict[str, Any]) -> None:
    summary.rejected += 1
    sink.write(src, number, reason, raw, context)


def _context(raw: bytes, error: ValidationError) -> dict[str, Any]:
    """Where a rejected line belongs, as far as it can be read (tenant, trace, seq, field)."""
    context: dict[str, Any] = {"field": error.field}
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return context
    if isinstance(obj, dict):
        for key in ("tenant", "trace_id", "seq"):
            if isinstance(obj.get(key), str | int) and not isinstance(obj.get(key), bool):
                context[key] = obj[key]
    return context
