"""Reading JSONL sources into validated events, all of them or one part's share.

:func:`read_lines` yields every non-blank line in input order as a :class:`Line`
(its source, line number, bytes and the event or validation error it gave). An
ingest spread over processes gives each a :class:`Part`: every process reads all
the input, but decodes only far enough to find a line's stream and validates only
its own streams' lines (:func:`stream_part`), so each stream's events stay in
order in one process and nothing is validated twice.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, NamedTuple

import orjson

from ledger import chain, long_lines
from ledger.chain import DEFAULT_TENANT, may_hold_big_int
from ledger.errors import InputError, ValidationError
from ledger.events import TraceEvent, too_large, validate_line
from ledger.long_lines import UTF8_BOM, LongLine
from ledger.paths import shown
from ledger.strict_json import decode_json

STDIN = "-"
GZIP_MAGIC = b"\x1f\x8b"  # how a gzip-compressed file begins
STDIN_LABEL = "<stdin>"  # how stdin is named in the reject file


class Line(NamedTuple):
    """One non-blank input line: where it came from, its bytes, and what they validate to."""

    source: str  # the path, or STDIN_LABEL
    number: int  # 1-based line number in that source
    raw: bytes | LongLine  # without the line ending; a LongLine when longer than an event may be
    event: TraceEvent | ValidationError


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
        if os.path.isfile(src):  # a pipe (``<(zcat ...)``) is checked as it is read: a
            with open(src, "rb") as fh:  # read here would take its bytes from the ingest
                _check_encoding(src, fh.read(2))


def _check_encoding(src: str, head: bytes) -> None:
    """Raise InputError when an input begins with a UTF-16 byte order mark (what
    Windows PowerShell's ``>`` writes): read as UTF-8, every line would be rejected."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"{label(src)}: is UTF-16 text (it begins with a UTF-16 byte order "
                         "mark), and JSONL is UTF-8: convert it first (iconv -f UTF-16 -t UTF-8)")


def input_size(src: str) -> int:
    """About how many bytes of lines the file at ``src`` holds: its size, or for a
    gzip-compressed file the larger of that and the size its trailer records (which
    counts modulo 4 GiB)."""
    size = os.path.getsize(src)
    if not os.path.isfile(src):  # a pipe: reading it here would take bytes from the ingest
        return size
    with open(src, "rb") as fh:
        if fh.read(2) != GZIP_MAGIC or size < 20:
            return size
        fh.seek(-4, os.SEEK_END)
        return max(size, int.from_bytes(fh.read(4), "little"))


def label(src: str) -> str:
    """How a source is named in reject files and errors."""
    return STDIN_LABEL if src == STDIN else shown(src)


def read_lines(sources: Sequence[str], progress: Callable[[int], None] | None = None, *,
               part: Part | None = None, cursor: Cursor | None = None) -> Iterator[Line]:
    """Every non-blank line of the sources in order, validated.

    With ``part`` only the lines of that part's streams (:func:`stream_part`) are
    validated and yielded; the others are skipped after decoding. A line is routed
    on orjson's reading where orjson can read it (the same strings as decode_json's)
    and on decode_json's otherwise, so every process places every line alike.
    ``progress`` is called with the bytes read, skipped lines included (of the file as
    stored: compressed bytes for a gzip-compressed source). With
    ``cursor`` reading starts where it points and moves it past each line before that
    line is yielded.
    """
    at = cursor or Cursor()
    for index in range(at.source, len(sources)):
        src = sources[index]
        name = label(src)
        if index != at.source:
            at.source, at.offset, at.line = index, 0, 0
        keep_long = part is None or part.index == 0  # the part that rejects such lines
        for number, raw, nbytes, stored in _raw_lines(src, at.offset, at.line, keep_long):
            at.offset += nbytes
            at.line = number
            if progress is not None:
                progress(stored)
            if isinstance(raw, LongLine) or len(raw) > chain.MAX_EVENT_BYTES:  # refused unread
                if part is None or part.index == 0:
                    yield Line(name, number, raw, ValidationError(too_large("line is", len(raw))))
                continue
            if part is not None:  # route on a plain decode first: most lines are others'
                try:
                    routed = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    pass  # decode_json decides, as below
                else:
                    if stream_part(routed, part.owners) == part.index:
                        yield Line(name, number, raw, _exactly(raw, routed))
                    continue
            try:
                obj = decode_json(raw)
            except ValidationError as exc:
                if part is None or part.index == 0:
                    yield Line(name, number, raw, exc)
                continue
            if part is None or stream_part(obj, part.owners) == part.index:
                yield Line(name, number, raw, _validated(raw, obj))


@dataclass(slots=True)
class Cursor:
    """A place in the sources: the index of one, and the byte offset and number of the
    last line read in it (0 and 0: its start). Files only: stdin cannot be re-read."""

    source: int = 0
    offset: int = 0
    line: int = 0


@dataclass(frozen=True, slots=True)
class Part:
    """Which share of the streams one of several ingesting processes takes.

    A stream's stable hash picks one of ``len(owners)`` buckets, and ``owners`` names
    the part that takes each bucket: ``Part.of(k, [1, 4])`` is part k of two, the
    first taking a fifth of the streams and the second the rest.
    """

    index: int
    owners: tuple[int, ...]

    @classmethod
    def of(cls, index: int, weights: Sequence[int]) -> Part:
        """Part ``index`` of ``len(weights)``, each part taking a share of its weight."""
        return cls(index, tuple(k for k, weight in enumerate(weights) for _ in range(weight)))


def stream_part(obj: Any, owners: tuple[int, ...]) -> int:
    """The part (an item of ``owners``) of the stream a decoded line belongs to.

    A stable hash of ``(tenant, trace_id)``, the same in every process, so all of a
    stream's events go to one process, in input order. A line naming no stream (not
    an object, no string trace id or tenant) goes to part 0, which rejects it.
    """
    if not isinstance(obj, dict):
        return 0
    trace_id, tenant = obj.get("trace_id"), obj.get("tenant", DEFAULT_TENANT)
    if not isinstance(trace_id, str) or not isinstance(tenant, str):
        return 0
    key = (tenant + "\x00" + trace_id).encode("utf-8", "surrogatepass")
    return owners[zlib.crc32(key) % len(owners)]


def _exactly(raw: bytes, decoded: Any) -> TraceEvent | ValidationError:
    """What ``raw`` validates to, given ``decoded = orjson.loads(raw)``: that value
    itself unless it may hold an integer beyond 64 bits (then decode_json reads it)."""
    if not may_hold_big_int(raw):
        return _validated(raw, decoded)  # decode_json would return this very value
    try:
        return _validated(raw, decode_json(raw))
    except ValidationError as exc:
        return exc


def _validated(raw: bytes, obj: Any) -> TraceEvent | ValidationError:
    try:
        return validate_line(raw, obj)
    except ValidationError as exc:
        return exc


def _raw_lines(src: str, offset: int = 0, line: int = 0, keep_long: bool = True
               ) -> Iterator[tuple[int, bytes | LongLine, int, int]]:
    """``(line number, line without its ending, bytes it took, bytes of the source as
    stored that it took)`` for each non-blank line, from byte ``offset`` (the end of line
    number ``line``) on.

    A line longer than an event may be comes as a :class:`LongLine` on disk, removed
    once the next line is asked for (its bytes are not kept unless ``keep_long``).
    A gzip-compressed source (one that begins with gzip's magic bytes) is read
    decompressed: line numbers and ``offset`` count its decompressed lines and bytes,
    and the last count its compressed bytes, in steps of the decompressor's reads.
    Elsewhere the two counts are equal. A UTF-8 byte order mark that begins a source
    (as some Windows tools write) marks its encoding: it is not part of the first line.
    """
    stored: IO[bytes]
    try:
        stored = sys.stdin.buffer if src == STDIN else open(src, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{src}: {exc.strerror}") from None
    number = line
    try:
        fh, counted = stored, False
        if _begins_gzip(stored):
            fh, counted = gzip.GzipFile(fileobj=stored, mode="rb"), stored.seekable()
        if offset:
            fh.seek(offset)
        elif hasattr(fh, "peek"):  # stdin and gzip input are checked here, as read
            _check_encoding(src, fh.peek(2))
        size = 0  # blank lines count towards the next line's bytes (progress stays exact)
        at = stored.tell() if counted else 0

        def took(nbytes: int) -> int:  # of the source as stored: compressed bytes since the last
            nonlocal at
            if not counted:
                return nbytes
            before, at = at, stored.tell()
            return at - before

        long_at = long_lines.SPILL_AT
        for number, text in enumerate(iter(partial(fh.readline, long_at), b""), line + 1):
            size += len(text)
            if len(text) == long_at and long_lines.is_long(text):  # read on to disk
                skip = len(UTF8_BOM) if number == 1 and text.startswith(UTF8_BOM) else 0
                raw, nbytes = long_lines.read_long(fh, text, limit=chain.MAX_EVENT_BYTES,
                                                   keep=keep_long, skip=skip)
                size += nbytes - len(text)
                if isinstance(raw, LongLine):
                    try:
                        if not raw.blank:
                            yield number, raw, size, took(size)
                            size = 0
                    finally:
                        raw.close()
                    continue
            else:
                raw = text.rstrip(b"\r\n")
                if number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
            if raw.strip():
                yield number, raw, size, took(size)
                size = 0
    except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib.error: a damaged gzip
        where = f" after line {number}" if number else ""
        raise InputError(f"{src}: read failed{where}: {exc}") from None
    finally:
        if stored is not sys.stdin.buffer:
            stored.close()


def _begins_gzip(fh: Any) -> bool:
    """Whether a buffered binary stream begins with gzip's magic bytes (not consumed;
    a stream that cannot be peeked at is taken as it is)."""
    return hasattr(fh, "peek") and fh.peek(2)[:2] == GZIP_MAGIC
