"""Lines of any length are read in bounded memory, and those too long are saved whole.

A line longer than ``SPILL_AT`` goes to a temporary file as it is read; these tests
make that small (and the pieces an odd size, to split characters) so the path is
taken by lines of a few hundred bytes.
"""

from __future__ import annotations

import base64
import gzip
import io
import tempfile
import tracemalloc
from pathlib import Path
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ingest import ev, rejects, run, stored, tool, write_lines

from ledger import chain, long_lines
from ledger.ingest import RejectSink
from ledger.long_lines import LongLine, read_long
from ledger.sources import Part, _raw_lines, read_lines
from ledger.store import Store

BOM = b"\xef\xbb\xbf"


def small_pieces(spill_at: int = 16, piece: int = 5) -> mock._patch_default_new:
    """Lines of more than ``spill_at`` bytes spilled, read ``piece`` bytes at a time."""
    return mock.patch.multiple(long_lines, SPILL_AT=spill_at, PIECE=piece)


def reference(data: bytes, limit: int) -> list[tuple[int, bytes, int, bool]]:
    """Every non-blank line of ``data`` read whole: ``(number, bytes without the ending,
    bytes taken (blank lines before it included), whether it is long and beyond the
    limit)``; lines split at ``\\n`` only, as binary readline splits them."""
    parts = data.split(b"\n")
    texts = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    found, size = [], 0
    for number, text in enumerate(texts, 1):
        size += len(text)
        raw = text.rstrip(b"\r\n")
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if raw.strip():
            spilled = len(text) > long_lines.SPILL_AT or (
                len(text) == long_lines.SPILL_AT and not text.endswith(b"\n"))
            found.append((number, raw, size, spilled and len(raw) > limit))
            size = 0
    return found


def read_pieces(data: bytes, limit: int, *, keep: bool = True
                ) -> list[tuple[int, bytes | None, int, bool]]:
    """What the ingest's reader gives for ``data``, as :func:`reference` shows it (the
    bytes of a long line read back from disk; None where they were not kept)."""
    with tempfile.NamedTemporaryFile() as fh, mock.patch.object(chain, "MAX_EVENT_BYTES", limit):
        fh.write(data)
        fh.flush()
        found: list[tuple[int, bytes | None, int, bool]] = []
        for number, raw, size, took in _raw_lines(fh.name, keep_long=keep):
            assert took == size
            if isinstance(raw, LongLine):
                found.append((number, b"".join(raw.pieces(3)) if keep else None, size, True))
            else:
                found.append((number, raw, size, False))
        return found


line_bytes = st.lists(st.sampled_from([b"a", b" ", b"\r", b"\xc3\xa9", b"\xf0\x9f\x98\x80",
                                       b"\xc3", b"\xff", b'"', b"\\", b"\x01", BOM,
                                       b"\r" * 17, b" " * 17]),
                      max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(line_bytes, st.sampled_from([b"\n", b"\r\n", b"\r\r\n", b""])),
                min_size=1, max_size=6), st.integers(0, 70))
def test_a_line_read_in_pieces_is_the_line_read_whole(
    lines: list[tuple[bytes, bytes]], limit: int
) -> None:
    """Whatever the bytes and endings, reading in pieces gives each line as a whole read
    does: the same bytes without the ending, the same count of bytes taken; a line comes
    on disk exactly when it is long and beyond the limit, and its JSON string is what
    orjson writes for its text (or its base64 where it is not UTF-8)."""
    data = b"".join(body + (end or b"\n") for body, end in lines[:-1]) + b"".join(lines[-1])
    with small_pieces():
        assert read_pieces(data, limit) == reference(data, limit)
        with tempfile.NamedTemporaryFile() as fh, mock.patch.object(chain, "MAX_EVENT_BYTES",
                                                                   limit):
            fh.write(data)
            fh.flush()
            for _, raw, _, _ in _raw_lines(fh.name):
                if isinstance(raw, LongLine):
                    whole = b"".join(raw.pieces(7))
                    try:
                        want, encoding = orjson.dumps(whole.decode("utf-8")), "utf-8"
                    except UnicodeDecodeError:
                        want, encoding = b'"' + base64.b64encode(whole) + b'"', "base64"
                    assert (b"".join(raw.json_string()), raw.encoding) == (want, encoding)


def test_the_bytes_of_a_line_beyond_the_limit_are_dropped_when_not_kept() -> None:
    """A process that does not reject such lines learns only their length."""
    data = b"x" * 100 + b"\r\n" + b"y" * 30 + b"\n"
    with small_pieces():
        assert read_pieces(data, 50, keep=False) == [(1, None, 102, True),
                                                      (2, b"y" * 30, 31, False)]
        assert read_pieces(data, 120, keep=False) == [(1, b"x" * 100, 102, False),
                                                       (2, b"y" * 30, 31, False)]


@pytest.mark.parametrize("keep", [True, False])
def test_a_long_line_of_nothing_but_line_endings_is_blank(keep: bool) -> None:
    """A long run of carriage returns is all ending: blank, skipped, its bytes counted
    towards the next line (it once had no bytes to read back)."""
    data = b"\r" * 40 + b"\n" + b"\r" * 40 + b"\r\n" + b"y" * 3 + b"\n"
    with small_pieces():
        assert read_pieces(data, 50, keep=keep) == [(3, b"yyy", len(data), False)]
        assert reference(data, 50) == [(3, b"yyy", len(data), False)]


def test_a_reject_entry_for_a_long_line_is_the_entry_for_its_bytes(tmp_path: Path) -> None:
    """Written in pieces from disk, it is byte for byte what the whole line would give."""
    for body in (b'{"x":"' + "é😀\\\"\u2028".encode() * 40 + b'"}', b"\xff" * 301 + b"a" * 7):
        whole, pieces = tmp_path / "whole.jsonl", tmp_path / "pieces.jsonl"
        for path in (whole, pieces):
            path.unlink(missing_ok=True)
        with small_pieces(piece=7):
            text = body[:long_lines.SPILL_AT]
            line, _ = read_long(io.BytesIO(body[len(text):] + b"\n"), text, limit=10)
            assert isinstance(line, LongLine)
            sinks = RejectSink(str(whole)), RejectSink(str(pieces))
            context = {"field": None, "trace_id": "t"}
            sinks[0].write("in.jsonl", 3, "too long", body, context)
            sinks[1].write("in.jsonl", 3, "too long", line, context)
            line.close()
        for sink in sinks:
            sink.close()
        assert pieces.read_bytes() == whole.read_bytes()


def test_lines_longer_than_an_event_may_be_are_saved_whole_and_the_rest_stored(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long lines within the limit are stored; beyond it, UTF-8 or not, with CRLF or a
    run of carriage returns, each is rejected and saved byte for byte; a long line of
    spaces is blank; a source of gzip or with a byte order mark reads the same."""
    monkeypatch.setattr(chain, "MAX_EVENT_BYTES", 600)
    big = orjson.dumps(tool(payload={"tool": "t", "args": {}, "success": True,
                                     "output": "é😀\\" * 100}))
    fits = orjson.dumps(tool("t3", 1, payload={"tool": "t", "args": {}, "success": True,
                                               "output": "a" * 300}))
    lines: list[dict | bytes] = [ev(), big, b"\xff" * 700, b" " * 900, fits,
                                 b"\r" * 650 + b"x" * 10 + b"\r\r", ev("t4")]
    plain = write_lines(tmp_path / "in.jsonl", lines)
    crlf = tmp_path / "crlf.jsonl.gz"
    crlf.write_bytes(gzip.compress(BOM + Path(plain).read_bytes().replace(b"\n", b"\r\n")))
    for src, reject_path in ((plain, tmp_path / "r1.jsonl"), (str(crlf), tmp_path / "r2.jsonl")):
        with small_pieces(spill_at=64, piece=7):
            summary = run(store, [src], reject_path)
        assert (summary.accepted, summary.duplicates, summary.rejected) == (
            (3, 0, 3) if src == plain else (0, 3, 3))
        found = rejects(reject_path)
        assert [(r["line"], r["raw_encoding"], r["field"]) for r in found] == [
            (2, "utf-8", None), (3, "base64", None), (6, "utf-8", None)]
        assert found[0]["raw"].encode() == big
        assert base64.b64decode(found[1]["raw"]) == b"\xff" * 700
        assert found[2]["raw"] == "\r" * 650 + "x" * 10
        assert found[0]["reason"] == (f"line is {len(big):,} bytes, more than the 600 an event "
                                      "may take")
    assert [r["payload"]["output"] for r in stored(store, "default", "t3")] == ["a" * 300]
    assert [r["trace_id"] for r in (*stored(store, "default", "t1"),
                                    *stored(store, "default", "t4"))] == ["t1", "t4"]


def test_a_long_line_is_kept_by_part_0_alone(tmp_path: Path) -> None:
    """Every process reads every line; only the first keeps a long line's bytes."""
    with mock.patch.object(chain, "MAX_EVENT_BYTES", 200), small_pieces(spill_at=32, piece=9):
        src = write_lines(tmp_path / "in.jsonl", [ev("a"), b"z" * 500, ev("b")])
        seen = [[(line.number, len(line.raw), str(line.event)) for line in
                 read_lines([src], part=Part.of(k, [1, 1])) if isinstance(line.raw, LongLine)]
                for k in range(2)]
    assert seen == [[(2, 500, "line is 500 bytes, more than the 200 an event may take")], []]


def test_a_line_of_many_megabytes_is_never_held_in_memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real piece sizes, a 48 MiB line (over a limit of 1 MiB) is rejected and
    saved whole while the ingest allocates a fraction of it. Read whole, as before, it
    took several times its size."""
    monkeypatch.setattr(chain, "MAX_EVENT_BYTES", 2**20)
    size = 48 * 2**20
    src = tmp_path / "in.jsonl"
    with src.open("wb") as fh:
        fh.write(orjson.dumps(ev()) + b"\n" + b'{"x":"')
        for _ in range(size // 2**20):
            fh.write("é".encode() * 2**19)
        fh.write(b'"}\n' + orjson.dumps(ev("t2")) + b"\n")
    reject_path = tmp_path / "rejected.jsonl"
    tracemalloc.start()
    try:
        summary = run(store, [str(src)], reject_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (summary.accepted, summary.rejected) == (2, 1)
    assert peak < size // 4, f"peak {peak:,} bytes of Python allocations"
    with reject_path.open("rb") as fh:
        entry = orjson.loads(fh.readline())
    assert entry["line"] == 2 and len(entry["raw"]) == 6 + size // 2 + 2
