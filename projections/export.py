"""Audit export: a tenant's events and findings in a time window, with their verification.

``export_audit`` writes one self-contained file an auditor can take away: every
stored event of the tenant's traces with ``since <= ts <= until`` (UTC), each with
its stored record fields, its ``record_hash`` (sha256 over the stored bytes) and a
``verification`` status, then every finding in the window. JSONL (a header line,
then ``{"type": "event", ...}`` and ``{"type": "finding", ...}`` lines) or CSV
(:data:`CSV_COLUMNS`, nested values as JSON text), chosen by the file's extension, and
gzip-compressed when that is followed by ``.gz``.

The export streams (its memory grows with neither the tenant's events, traces and
findings nor the problems verify finds: see ``projections/export_state.py``), writes to a
temporary file beside the target and renames it into place, so a crash never
leaves a half-written file. Findings come from the projections: bring them up to
date first (``Projector(store).catch_up()``). See docs/CLI.md (``audit export``).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any, cast

from ledger import chain
from ledger.backends.base import RowTuple, StreamQuery
from ledger.errors import OutputError, UsageError
from ledger.paths import file_problem
from ledger.reader import parse_window
from ledger.redact import redact_url
from ledger.store import Store
from ledger.timestamps import normalize_ts
from ledger.verify import VerifyReport, rows_to_check, sequential_ranges, verify_scanned
from projections.export_state import (
    EventStatuses,
    ExportedEvents,
    ListedTraces,
    Trace,
    spooled_findings,
)
from projections.queries import FindingRow

EXPORT_VERSION = 1
TRACES_AT_ONCE = 200
"""Traces whose rows one scan reads: one query for them all, not one a trace (on
PostgreSQL each cost about 1.7 ms, most of an export of short traces). They arrive by
stream id and are written in the catalog's order from a temporary file."""
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
OK = "ok"
CSV_COLUMNS = (
    "type", "tenant", "trace_id", "seq", "event", "ts", "agent_owner", "executed_by",
    "write_scope", "memory_hash", "ledger_memory_hash", "prev_hash", "record_hash",
    "verification", "payload", "kind", "detail", "at",
)
"""CSV columns, in order. The first row (``type`` = ``header``) holds the JSONL header
as JSON text in ``detail``; event rows fill the record columns, finding rows
``tenant``, ``trace_id``, ``seq``, ``kind``, ``detail`` and ``at``."""
_RESERVED = frozenset({"type", "record_hash", "verification"})


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_audit`` wrote (the ``--json`` output of ``audit export``)."""

    path: str
    format: str
    tenant: str
    since: str | None
    until: str | None
    traces: int
    events: int
    findings: int
    events_not_ok: int
    verified_ok: bool
    problems: int
    verified_streams: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def export_audit(store: Store, tenant: str, out_path: str | os.PathLike[str], *,
                 since: str | None = None, until: str | None = None, force: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Write the tenant's events and findings in [since, until] to ``out_path``.

    ``progress(done, total)`` counts stored rows read (the tenant's, to verify them,
    then the exported traces'). Refuses to replace an existing file unless ``force``.
    """
    target = Path(out_path)
    packed = target.name.lower().endswith(".gz")
    fmt = FORMATS.get(Path(target.name[:-3] if packed else target.name).suffix.lower())
    if fmt is None:
        raise UsageError(f"{target}: the export file must end in .jsonl or .csv "
                         "(or .jsonl.gz or .csv.gz, gzip-compressed)")
    if target.exists() and not force:
        raise UsageError(f"{target} exists: pass --force to replace it")
    if (problem := file_problem(str(target), "replace")) is not None:
        raise UsageError(f"export file {target}: {problem}")
    lo, hi = parse_window(since, until)
    with ExitStack() as held:  # temporary files, each removed when the export ends
        heads = held.enter_context(closing(ListedTraces(store, StreamQuery(
            tenant=tenant, since=lo, until=hi))))
        step = None
        if progress is not None:  # the tenant's rows, verified first, then the exported ones
            step = _counter(progress, rows_to_check(store, tenant=tenant) + heads.rows)
        report = VerifyReport()
        for id_range in sequential_ranges(store.backend.last_notification_id()):
            with store.backend.snapshot_scan(tenant, id_range=id_range) as (catalog, streams):
                report.add(verify_scanned(store, catalog, streams, step))
        statuses = held.enter_context(closing(EventStatuses(report.problems, tenant)))
        exported = held.enter_context(closing(ExportedEvents()))
        body, _ = held.enter_context(_temporary(target))
        findings = held.enter_context(spooled_findings(store, tenant))  # as verified
        writer = _JSONL if fmt == "jsonl" else _CSV
        traces = events = not_ok = chosen = 0
        out = writer(body)

        def write_trace(head: Trace, rows: Iterator[RowTuple], part: _JSONL) -> int:
            nonlocal not_ok
            count = 0
            found = statuses.of(head.name)
            for row in _event_rows(tenant, head.name, rows, lo, hi, found,
                                   max(head.last_seq, *found, 0)):
                part.event(row)
                count += 1
                not_ok += row["verification"] != OK
                exported.add(head.name, row.get("seq"))
            return count

        for head, count in _in_catalog_order(store, heads, writer, body, write_trace):
            events, traces = events + count, traces + (count > 0)
            if step is not None:
                step(head.last_seq)
        for finding in findings:  # in the window, or about an event exported
            if _within(finding.at, lo, hi) or exported.holds(finding.trace_id, finding.seq):
                out.finding(finding)
                chosen += 1
        body.flush()
        header = {
            "type": "header", "export": "agentledger-audit", "version": EXPORT_VERSION,
            "tenant": tenant, "since": lo, "until": hi,
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "store": redact_url(store.url),
            "counts": {"traces": traces, "events": events, "findings": chosen,
                       "events_not_ok": not_ok},
            "verification": {"ok": report.ok, "streams": report.streams,
                             "events": report.events, "problems": []},  # filled as written
        }
        _publish(target, header, map(asdict, report.problems), body, writer, force,
                 packed=packed)
    return ExportSummary(str(target), fmt, tenant, lo, hi, traces, events, chosen,
                         not_ok, report.ok, len(report.problems), report.streams)


# -- what goes in ---------------------------------------------------------------------

def _counter(progress: Callable[[int, int], None] | None,
             total: int) -> Callable[[int], None] | None:
    """``step(n)``: n more rows read, reported to ``progress`` as (done, total)."""
    if progress is None:
        return None
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress(done, max(done, total))
    return step


def _within(ts: str | None, lo: str | None, hi: str | None) -> bool:
    if ts is None:
        return lo is None and hi is None
    return (lo is None or ts >= lo) and (hi is None or ts <= hi)


def _utc(ts: Any) -> str | None:
    try:
        return normalize_ts(ts) if isinstance(ts, str) else None
    except ValueError:
        return None


def _event_rows(tenant: str, name: str, rows: Iterable[RowTuple], lo: str | None,
                hi: str | None, statuses: dict[int, str],
                upto: int) -> Iterator[dict[str, Any]]:
    """The trace's stored events (``rows``, as read) in the window and up to seq
    ``upto``, as export rows.

    ``upto`` is the trace's length as the catalog listed it before verification began
    (each of those events was there to be verified), or the last seq verification
    found a problem at if that is further (rows stored beyond what the catalog says are
    evidence): what writers append meanwhile is left for the next export.
    """
    for _, version, _, _, state in rows:
        if version > upto:
            continue
        try:
            record = chain.decode(state)
        except ValueError:
            record = {"tenant": tenant, "trace_id": name, "seq": version}
        ts = _utc(record.get("ts"))
        if ts is not None and not _within(ts, lo, hi):
            continue  # an unreadable time is exported: verification says why
        yield {"type": "event", **{k: v for k, v in record.items() if k not in _RESERVED},
               "record_hash": None if state is None else chain.record_hash(state),
               "verification": statuses.get(version, OK)}


def _in_catalog_order(
    store: Store, heads: Iterable[Trace], writer: type[_JSONL], body: IO[bytes],
    write_trace: Callable[[Trace, Iterator[RowTuple], _JSONL], int],
) -> Iterator[tuple[Trace, int]]:
    """Each of ``heads``, in their order, once ``write_trace(head, rows, out)`` has
    written its trace (and counted its events) to ``body``. The rows of TRACES_AT_ONCE
    traces are read in one scan, which gives them by stream id, so each trace is first
    written to a spooled file, then copied."""
    listed = iter(heads)
    while chunk := list(islice(listed, TRACES_AT_ONCE)):
        by_id = {h.stream_id: h for h in chunk}
        with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as spool:
            part, regions = writer(spool), {}
            for sid, rows in store.backend.scan_streams(list(by_id)):
                begin = spool.tell()
                count = write_trace(by_id[sid], rows, part)
                regions[sid] = (begin, spool.tell() - begin, count)
            for head in chunk:
                begin, size, count = regions.get(head.stream_id, (0, 0, 0))
                _copy(spool, begin, size, body)
                yield head, count


def _copy(source: IO[bytes], begin: int, size: int, target: IO[bytes]) -> None:
    """``size`` bytes of ``source`` from ``begin`` to ``target``, a MiB at a time."""
    source.seek(begin)
    while size > 0:
        piece = source.read(min(size, 1 << 20))
        if not piece:
            raise OSError(f"temporary file ended {size} bytes early")  # not expected
        target.write(piece)
        size -= len(piece)


# -- how it is written ----------------------------------------------------------------

class _JSONL:
    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh

    def header(self, header: dict[str, Any], problems: Iterable[dict[str, Any]]) -> None:
        _write_spliced(self.fh, chain.encode(header) + b"\n", problems, b'"')

    def event(self, row: dict[str, Any]) -> None:
        self.fh.write(chain.encode(row) + b"\n")

    def finding(self, finding: FindingRow) -> None:
        self.fh.write(chain.encode({"type": "finding", **finding.as_json()}) + b"\n")


class _CSV(_JSONL):
    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__(fh)
        self.text = _TextSink(fh)
        self.csv = csv.writer(self.text, lineterminator="\r\n")

    def header(self, header: dict[str, Any], problems: Iterable[dict[str, Any]]) -> None:
        self.csv.writerow(CSV_COLUMNS)
        row = io.StringIO()  # the header in the detail cell: JSON, its quotes doubled
        csv.writer(row, lineterminator="\r\n").writerow(
            [csv_cell(v) for v in self._cells({"type": "header", "tenant": header["tenant"],
                                                "detail": chain.encode(header).decode()})])
        _write_spliced(self.fh, row.getvalue().encode(), problems, b'""')

    def event(self, row: dict[str, Any]) -> None:
        self._row(row)

    def finding(self, finding: FindingRow) -> None:
        self._row({"type": "finding", **finding.as_json()})

    def _row(self, row: dict[str, Any]) -> None:
        self.csv.writerow([csv_cell(v) for v in self._cells(row)])

    @staticmethod
    def _cells(row: dict[str, Any]) -> list[Any]:
        return [row.get(c) for c in CSV_COLUMNS]


def _write_spliced(fh: IO[bytes], text: bytes, problems: Iterable[dict[str, Any]],
                   quote: bytes) -> None:
    """Write ``text``, a header whose problems are ``[]`` (its double quotes written as
    ``quote``), with ``problems`` written into that list one at a time. The list is the
    header's last value; inside a JSON string a quote always follows a backslash, so
    no string can hold the key's text."""
    at = text.rindex(quote + b"problems" + quote + b":[]") + len(quote) * 2 + 10
    fh.write(text[:at])
    for n, problem in enumerate(problems):
        encoded = chain.encode(problem)
        fh.write((b"," if n else b"") + (encoded if quote == b'"' else
                                          encoded.replace(b'"', quote)))
    fh.write(text[at:])


class _TextSink:
    """A minimal text writer over a binary file (what ``csv.writer`` needs)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh

    def write(self, text: str) -> int:
        return self.fh.write(text.encode())


def csv_cell(value: Any) -> str:
    """A value as a CSV cell: text as is, ``null`` empty, anything else as JSON text.

    Text that a spreadsheet would take for a formula (it begins with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return) gets a leading ``'``: trace ids, agent
    names and reasons come from agents and the pages their tools read, and an auditor
    opening the file must not run what they hold. The JSON outputs keep text as is.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value[:1] in _FORMULA_STARTS else value
    return chain.encode(value).decode()


_FORMULA_STARTS = frozenset("=+-@\t\r")


@contextmanager
def _temporary(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file beside ``target`` (and its path), removed whatever happens.

    A write the system refuses (a full disk) is an OutputError naming ``target``."""
    path: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".part")
        path = Path(name)
        with os.fdopen(fd, "w+b") as fh:
            yield fh, path
    except OSError as exc:
        raise OutputError(f"cannot write {target} ({exc.strerror or exc}): "
                          "no file was created or changed") from None
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def _publish(target: Path, header: dict[str, Any], problems: Iterable[dict[str, Any]],
             body: IO[bytes], writer: type[_JSONL], force: bool, *,
             packed: bool = False) -> None:
    """Write header (``problems`` in its verification) + body (``packed``:
    gzip-compressed, named inside as ``target`` without its ``.gz``) to a second
    temporary file and rename it onto ``target``."""
    with _temporary(target) as (final, path):
        out: IO[bytes] = final
        if packed:
            out = cast(IO[bytes], gzip.GzipFile(filename=target.name[:-3], fileobj=final,
                                                mode="wb"))
        writer(out).header(header, problems)
        body.seek(0)
        while chunk := body.read(1 << 20):
            out.write(chunk)
        if packed:
            out.close()  # writes gzip's trailer; ``final`` stays open
        final.flush()
        os.fsync(final.fileno())
        os.chmod(path, 0o666 & ~_umask())  # as an ordinary new file (mkstemp gives 0600)
        if force:
            os.replace(path, target)
            return
        try:
            os.link(path, target)  # no-clobber: fails if the target appeared meanwhile
        except FileExistsError:
            raise UsageError(f"{target} exists: pass --force to replace it") from None
        except OSError:  # no hard links on this file system
            if target.exists():
                raise UsageError(f"{target} exists: pass --force to replace it") from None
            os.replace(path, target)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
