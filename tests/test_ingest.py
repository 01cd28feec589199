"""Conformance tests for ``ingest``: counts, idempotence, rejects, tenants and stdin.

Every test runs on SQLite and PostgreSQL (the ``store`` / ``store_url`` fixtures).
"""

from __future__ import annotations

import base64
import gzip
import io
import sys
import types
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb

from ledger import chain
from ledger.appender import Appender
from ledger.backends.base import StreamQuery
from ledger.errors import InputError, ValidationError
from ledger.events import TraceEvent, parse_event
from ledger.ingest import ingest
from ledger.memory import memory_hash
from ledger.store import Store
from ledger.verify import verify

Event = dict[str, Any]
WRONG_HASH = "sha256:" + "0" * 64


def ev(trace_id: str = "t1", seq: int = 1, event: str = "EXEC_START",
       payload: dict[str, Any] | None = None, **fields: Any) -> Event:
    """A valid wire event (override any field by keyword)."""
    return {"trace_id": trace_id, "seq": seq, "event": event,
            "ts": f"2026-11-20T10:00:{seq % 60:02d}.000Z", "agent_owner": "planner",
            "executed_by": "planner", "payload": {} if payload is None else payload, **fields}


def tool(trace_id: str = "t1", seq: int = 2, payload: dict[str, Any] | None = None,
         **fields: Any) -> Event:
    """A valid TOOL_EXEC event."""
    default = {"tool": "search", "args": {"q": "x"}, "success": True}
    return ev(trace_id, seq, "TOOL_EXEC", default if payload is None else payload, **fields)


def write_lines(path: Path, items: list[Event | bytes]) -> str:
    """Write JSONL: dicts are serialised, bytes written as they are; return the path."""
    with path.open("wb") as fh:
        for item in items:
            fh.write((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n")
    return str(path)


def rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def stored(store: Store, tenant: str, trace_id: str) -> list[dict[str, Any]]:
    """The decoded records of one trace stream, in seq order."""
    sid = chain.trace_stream_id(tenant, trace_id)
    return [chain.decode(state) for _, state in store.backend.read_stream(sid)]


def findings(store: Store, tenant: str) -> list[dict[str, Any]]:
    sid = chain.findings_stream_id(tenant)
    return [chain.decode(state) for _, state in store.backend.read_stream(sid)]


@pytest.fixture
def reject_path(tmp_path: Path) -> Path:
    return tmp_path / "rejected.jsonl"


def run(store: Store, sources: list[str], reject_path: Path, **kwargs: Any) -> Any:
    return ingest(store, sources, reject_file=str(reject_path), **kwargs)


def test_counts_accepted_events(store: Store, tmp_path: Path, reject_path: Path) -> None:
    """Every valid line is accepted and counted; nothing is rejected."""
    src = write_lines(tmp_path / "in.jsonl", [ev(), tool(), ev("t2"), tool("t2")])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.duplicates, summary.rejected, summary.lines) == (4, 0, 0, 4)
    assert summary.reject_file is None and not reject_path.exists()
    assert [r["seq"] for r in stored(store, "default", "t1")] == [1, 2]


def test_reingest_is_all_duplicates_and_changes_nothing(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path
) -> None:
    """Ingesting the same file twice counts every line as a duplicate and writes nothing."""
    src = write_lines(tmp_path / "in.jsonl", [ev(), tool(), ev("t2")])
    run(store, [src], reject_path)
    before = rawdb.dump(store_url)
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (0, 3, 0)
    assert rawdb.dump(store_url) == before


def test_conflicting_event_is_rejected_and_stored_event_untouched(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path
) -> None:
    """A different event at an existing (tenant, trace, seq) is rejected; the stored one stays."""
    run(store, [write_lines(tmp_path / "a.jsonl", [ev(), tool()])], reject_path)
    sid = chain.trace_stream_id("default", "t1")
    before = rawdb.rows(store_url, sid)
    changed = tool(payload={"tool": "search", "args": {"q": "other"}, "success": False})
    summary = run(store, [write_lines(tmp_path / "b.jsonl", [changed])], reject_path)
    assert (summary.accepted, summary.rejected) == (0, 1)
    assert rawdb.rows(store_url, sid) == before
    [entry] = rejects(reject_path)
    assert "conflict" in entry["reason"] and (entry["trace_id"], entry["seq"]) == ("t1", 2)


def test_conflict_is_recorded_as_finding(store: Store, tmp_path: Path, reject_path: Path) -> None:
    """A conflict is written to the tenant's findings stream with the rejected event as evidence."""
    run(store, [write_lines(tmp_path / "a.jsonl", [ev(), tool()])], reject_path)
    changed = tool(payload={"tool": "search", "args": {"q": "other"}, "success": False})
    summary = run(store, [write_lines(tmp_path / "b.jsonl", [changed])], reject_path)
    assert summary.findings == 1
    [finding] = findings(store, "default")
    assert (finding["finding"], finding["trace_id"], finding["seq"]) == ("conflict", "t1", 2)
    assert finding["evidence"]["payload"] == changed["payload"]


def test_the_same_attempted_rewrite_is_recorded_once(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """Re-ingesting the file that carried a conflict (as after a crash) rejects the
    line again but records no second finding; another content for the same seq is
    another attempt, recorded, even in the same run."""
    run(store, [write_lines(tmp_path / "a.jsonl", [ev(), tool()])], reject_path)
    changed = tool(payload={"tool": "search", "args": {"q": "other"}, "success": False})
    src = write_lines(tmp_path / "b.jsonl", [changed])
    first = run(store, [src], reject_path)
    again = run(store, [src], reject_path)
    assert (first.rejected, first.findings) == (1, 1) and (again.rejected, again.findings) == (1, 0)
    other = tool(payload={"tool": "search", "args": {"q": "third"}, "success": True})
    both = run(store, [write_lines(tmp_path / "c.jsonl", [changed, other, other])], reject_path)
    assert (both.rejected, both.findings) == (3, 1)
    assert [f["evidence"]["payload"]["args"] for f in findings(store, "default")] == [
        {"q": "other"}, {"q": "third"}]
    assert len(rejects(reject_path)) == 5


def test_seq_gap_is_rejected(store: Store, tmp_path: Path, reject_path: Path) -> None:
    """An event whose seq would leave a gap is rejected as out of order."""
    src = write_lines(tmp_path / "in.jsonl", [ev(), tool(seq=3)])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (1, 1)
    [entry] = rejects(reject_path)
    assert (entry["line"], entry["seq"]) == (2, 3) and "out of order" in entry["reason"]
    assert [r["seq"] for r in stored(store, "default", "t1")] == [1]


def test_reorder_accepts_out_of_order_seqs_within_a_batch(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """With reorder=True, seqs that arrive out of order within one batch are all accepted."""
    src = write_lines(tmp_path / "in.jsonl", [tool(seq=3), ev(), tool(seq=2)])
    summary = run(store, [src], reject_path, reorder=True)
    assert (summary.accepted, summary.rejected) == (3, 0)
    assert [r["seq"] for r in stored(store, "default", "t1")] == [1, 2, 3]
    assert verify(store).ok


def test_non_utf8_line_is_rejected_as_base64(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """A line that is not UTF-8 goes to the reject file base64-encoded, byte for byte."""
    bad = orjson.dumps(ev("t2")).replace(b'"t2"', b'"t\xff\xfe2"')
    src = write_lines(tmp_path / "in.jsonl", [ev(), bad])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (1, 1)
    [entry] = rejects(reject_path)
    assert entry["raw_encoding"] == "base64" and entry["line"] == 2
    assert base64.b64decode(entry["raw"]) == bad


def test_malformed_json_is_rejected_and_neighbours_stored(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """A malformed JSON line is rejected with its line number; the lines around it are stored."""
    src = write_lines(tmp_path / "in.jsonl", [ev(), b'{"trace_id": "t1", "seq": ', tool()])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 1)
    [entry] = rejects(reject_path)
    assert entry["line"] == 2 and "JSON" in entry["reason"]
    assert [r["seq"] for r in stored(store, "default", "t1")] == [1, 2]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (orjson.dumps(ev("t9", tenant="acme\x00")), "tenant"),
        (orjson.dumps(ev("t9", agent_owner="plan\x00ner")), "agent_owner"),
        (orjson.dumps(tool("t9", 1, {"tool": "se\x00arch", "args": {}, "success": False})),
         "payload.tool"),
        (orjson.dumps(ev("t9", event="CALLBACK_MEMORY_WRITE", write_scope="memory/planner",
                         payload={"key": "k\x00", "value": 1})), "payload.key"),
        (orjson.dumps(tool("t9", 1, {"tool": "t", "args": {"\x00": 1}, "success": True})),
         "payload.args"),
    ],
    ids=["tenant", "agent", "tool", "memory-key", "key-in-args"],
)
def test_a_nul_character_is_rejected_and_its_batch_stored(
    store: Store, tmp_path: Path, reject_path: Path, line: bytes, field: str
) -> None:
    """A line holding U+0000 (which PostgreSQL text cannot hold) is rejected, naming the
    field, on every backend; the lines of its batch are stored."""
    src = write_lines(tmp_path / "in.jsonl", [ev(), line, tool()])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 1)
    [entry] = rejects(reject_path)
    assert (entry["line"], entry["field"]) == (2, field)
    assert "NUL character (U+0000)" in entry["reason"]
    assert [r["seq"] for r in stored(store, "default", "t1")] == [1, 2]


def test_an_escaped_backslash_before_u0000_is_text(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """``"\\\\u0000"`` in JSON is a backslash and five characters, not a NUL: stored."""
    line = orjson.dumps(tool(payload={"tool": "t", "args": {}, "success": True, "x": "\\u0000"}))
    assert b'"\\\\u0000"' in line
    summary = run(store, [write_lines(tmp_path / "in.jsonl", [ev(), line])], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 0)
    assert stored(store, "default", "t1")[1]["payload"]["x"] == "\\u0000"


def test_sql_looking_identifiers_are_stored_verbatim(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path
) -> None:
    """A trace id and tenant that look like SQL injection are stored and read back verbatim."""
    trace = "x');DROP/**/TABLE/**/agentledger_events;--"
    tenant = "acme'; DROP TABLE agentledger_streams;--"
    src = write_lines(tmp_path / "in.jsonl", [ev(trace, tenant=tenant), tool(trace, tenant=tenant)])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 0)
    records = stored(store, tenant, trace)
    assert [(r["tenant"], r["trace_id"], r["seq"]) for r in records] == [
        (tenant, trace, 1), (tenant, trace, 2)]
    [head] = store.backend.list_streams(StreamQuery(tenant=tenant))
    assert (head.tenant, head.name, head.last_seq) == (tenant, trace, 2)
    assert rawdb.count(store_url) == 2


def test_same_trace_id_in_two_tenants_is_two_streams(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """One trace_id under two tenants is two independent streams, each seen by its tenant only."""
    src = write_lines(tmp_path / "in.jsonl", [
        ev("shared", tenant="acme"), ev("shared", tenant="globex", executed_by="globex-bot"),
        tool("shared", tenant="acme"),
    ])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (3, 0)
    assert [r["seq"] for r in stored(store, "acme", "shared")] == [1, 2]
    [globex] = stored(store, "globex", "shared")
    assert (globex["tenant"], globex["executed_by"]) == ("globex", "globex-bot")
    assert chain.trace_stream_id("acme", "shared") != chain.trace_stream_id("globex", "shared")
    for tenant, length in (("acme", 2), ("globex", 1)):
        [head] = store.backend.list_streams(StreamQuery(tenant=tenant))
        assert (head.tenant, head.name, head.last_seq) == (tenant, "shared", length)


def test_blank_lines_are_ignored(store: Store, tmp_path: Path, reject_path: Path) -> None:
    """Empty and whitespace-only lines are skipped, not counted and not rejected."""
    src = write_lines(tmp_path / "in.jsonl", [b"", ev(), b"   ", b"\t", tool(), b""])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected, summary.lines) == (2, 0, 2)
    assert not reject_path.exists()


def test_reject_line_numbers_count_blank_lines(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """A rejected line is reported at its physical line number, blank lines included."""
    src = write_lines(tmp_path / "in.jsonl", [b"", ev(), b"", b"not json"])
    run(store, [src], reject_path)
    [entry] = rejects(reject_path)
    assert entry["line"] == 4


def test_stdin_dash_is_read(
    store: Store, reject_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source ``-`` reads JSONL bytes from standard input."""
    data = orjson.dumps(ev()) + b"\n" + orjson.dumps(tool()) + b"\n"
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    summary = run(store, ["-"], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 0)
    assert [r["seq"] for r in stored(store, "default", "t1")] == [1, 2]


def test_a_byte_order_mark_that_begins_a_file_is_not_part_of_its_first_line(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """Windows tools may begin a UTF-8 file with a byte order mark. Taken as part of the
    first line it would reject that event, then every later event of its trace as a
    gap. Anywhere else it is the line's own bytes, rejected as such."""
    bom = b"\xef\xbb\xbf"
    src = tmp_path / "bom.jsonl"
    src.write_bytes(bom + orjson.dumps(ev()) + b"\r\n" + orjson.dumps(tool()) + b"\r\n"
                    + bom + orjson.dumps(ev("t2")) + b"\r\n")
    summary = run(store, [str(src)], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 1)
    assert [r["line"] for r in rejects(reject_path)] == [3]
    packed = tmp_path / "bom.jsonl.gz"
    packed.write_bytes(gzip.compress(bom + orjson.dumps(ev("t3")) + b"\n"))
    assert run(store, [str(packed)], tmp_path / "r2.jsonl").accepted == 1


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
def test_a_pipe_named_as_a_file_is_read_once_whole(
    store: Store, tmp_path: Path, reject_path: Path, packed: bool
) -> None:
    """``ingest <(zcat traces.jsonl.gz)`` names a pipe: nothing may read from it before
    the ingest does (checking its encoding or size there would take its first bytes)."""
    import os
    import threading

    data = b"".join(orjson.dumps(ev(f"t{n}")) + b"\n" for n in range(2000))
    read_end, write_end = os.pipe()  # named /dev/fd/N, as a shell names <(...)

    def feed() -> None:
        with os.fdopen(write_end, "wb") as fh:
            fh.write(gzip.compress(data) if packed else data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        summary = run(store, [f"/dev/fd/{read_end}"], reject_path, workers=2)
    finally:
        writer.join(timeout=10)
        os.close(read_end)
    assert (summary.accepted, summary.rejected) == (2000, 0)


def test_utf16_input_is_refused_before_anything_is_stored(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Windows PowerShell's ``>`` writes (UTF-16 with its byte order mark) would
    have every line rejected as UTF-8: it is refused up front, saying what to do."""
    good = write_lines(tmp_path / "good.jsonl", [ev()])
    wide = tmp_path / "wide.jsonl"
    wide.write_bytes((orjson.dumps(tool()).decode() + "\n").encode("utf-16"))
    with pytest.raises(InputError) as raised:
        run(store, [good, str(wide)], reject_path)
    assert str(raised.value) == (f"{wide}: is UTF-16 text (it begins with a UTF-16 byte "
                                 "order mark), and JSONL is UTF-8: convert it first "
                                 "(iconv -f UTF-16 -t UTF-8)")
    assert rawdb.count(store_url) == 0 and not reject_path.exists()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BufferedReader(
        io.BytesIO(wide.read_bytes()))))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^<stdin>: is UTF-16 text"):
        run(store, ["-"], reject_path)


def test_gzip_compressed_input_is_read_decompressed(
    store: Store, tmp_path: Path, reject_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file or stdin that begins with gzip's magic bytes is read decompressed; its
    rejects name the file and the line of the decompressed text, raw bytes as they were."""
    plain = write_lines(tmp_path / "in.jsonl", [ev(), tool(), b"{bad", ev("t2")])
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(Path(plain).read_bytes()))
    summary = run(store, [str(packed)], reject_path)
    assert (summary.accepted, summary.rejected) == (3, 1)
    assert [(r["source"], r["line"], r["raw"]) for r in rejects(reject_path)] == [
        (str(packed), 3, "{bad")]
    again = run(store, [plain], tmp_path / "r2.jsonl")
    assert (again.accepted, again.duplicates) == (0, 3)  # the very same events
    piped = gzip.compress(orjson.dumps(ev("t3")) + b"\n")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BufferedReader(
        io.BytesIO(piped))))  # type: ignore[arg-type]
    assert run(store, ["-"], tmp_path / "r3.jsonl").accepted == 1


def test_a_gzip_stream_that_breaks_off_keeps_the_lines_before_it(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path
) -> None:
    """A truncated download: the lines decompressed before the break are stored, then
    the ingest stops naming the file and line; the whole file later completes it."""
    events = [ev(f"t{n}", seq) for n in range(300) for seq in (1,)]
    whole = gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError) as raised:
        run(store, [str(cut)], reject_path, batch_size=1000)
    message = str(raised.value)
    assert message.startswith(f"{cut}: read failed after line ")
    assert message.endswith("; the lines before it are stored")
    kept = int(message.split("after line ")[1].split(":")[0])
    assert 0 < kept < 300 and rawdb.count(store_url) == kept
    full = tmp_path / "full.jsonl.gz"
    full.write_bytes(whole)
    summary = run(store, [str(full)], reject_path)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (300 - kept, kept, 0)


def test_missing_input_file_raises_before_anything_is_stored(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path
) -> None:
    """A missing source raises InputError and no line of any source is stored."""
    good = write_lines(tmp_path / "good.jsonl", [ev(), tool()])
    with pytest.raises(InputError, match="no such file"):
        run(store, [good, str(tmp_path / "missing.jsonl")], reject_path)
    assert rawdb.count(store_url) == 0
    assert rawdb.catalog(store_url) == []


def test_memory_hash_mismatch_is_stored_as_submitted_with_finding(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """A runtime memory_hash that the logged writes do not explain is stored and flagged."""
    write = ev("t1", 2, "CALLBACK_MEMORY_WRITE", {"key": "plan", "value": ["a", "b"]},
               write_scope="memory/planner", memory_hash=WRONG_HASH)
    summary = run(store, [write_lines(tmp_path / "in.jsonl", [ev(), write])], reject_path)
    assert (summary.accepted, summary.rejected, summary.findings) == (2, 0, 1)
    record = stored(store, "default", "t1")[1]
    assert record["memory_hash"] == WRONG_HASH
    assert record["ledger_memory_hash"] == memory_hash({"plan": ["a", "b"]})
    [finding] = findings(store, "default")
    assert (finding["finding"], finding["trace_id"], finding["seq"]) == (
        "memory_hash_mismatch", "t1", 2)
    report = verify(store)
    assert report.ok
    assert [(f.kind, f.trace_id, f.seq) for f in report.findings] == [
        ("memory_hash_mismatch", "t1", 2)]


def test_every_rejected_line_is_in_the_reject_file(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """Each rejected line is reported with source, line, reason and its raw bytes."""
    run(store, [write_lines(tmp_path / "first.jsonl", [ev(), tool()])], reject_path)
    bad: dict[int, bytes] = {
        1: b"not json",
        2: orjson.dumps(ev("t3", event="NOT_AN_EVENT")),
        3: orjson.dumps(tool(payload={"tool": "search", "args": {}, "success": False})),
        4: orjson.dumps(ev("t4", seq=2)),
        5: b'{"trace_id": "t5\xff"}',
        6: orjson.dumps(ev("t6 with space")),
    }
    src = write_lines(tmp_path / "second.jsonl", [*bad.values(), ev("ok")])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (1, len(bad))
    entries = rejects(reject_path)
    assert {e["line"] for e in entries} == set(bad)
    for entry in entries:
        assert entry["source"] == src and entry["reason"]
        raw = entry["raw"].encode() if entry["raw_encoding"] == "utf-8" else base64.b64decode(
            entry["raw"])
        assert raw == bad[entry["line"]]


def test_reingest_of_memory_hash_mismatch_adds_no_finding(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """A duplicate of an event with a wrong memory_hash is not flagged a second time."""
    write = ev("t1", 1, "CALLBACK_MEMORY_WRITE", {"key": "k", "value": 1},
               write_scope="memory/planner", memory_hash=WRONG_HASH)
    src = write_lines(tmp_path / "in.jsonl", [write])
    run(store, [src], reject_path)
    summary = run(store, [src], reject_path)
    assert (summary.duplicates, summary.findings) == (1, 0)
    assert len(findings(store, "default")) == 1


def test_conflict_within_one_batch_is_rejected(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """Two different events for one (tenant, trace, seq) in one batch: the second is rejected."""
    src = write_lines(tmp_path / "in.jsonl", [ev(), ev(payload={"context_id": "other"})])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected, summary.findings) == (1, 1, 1)
    assert stored(store, "default", "t1")[0]["payload"] == {}
    [entry] = rejects(reject_path)
    assert entry["line"] == 2 and "conflict" in entry["reason"]


@pytest.mark.parametrize(("first", "second"), [(b"1", b"true"), (b"0", b"false")])
def test_conflict_distinguishes_booleans_from_numbers(
    store: Store, tmp_path: Path, reject_path: Path, first: bytes, second: bytes
) -> None:
    """Re-sending an event with ``true`` where ``1`` was stored is a conflict, not a duplicate."""
    line = orjson.dumps(ev(event="EXEC_NEXT", payload={"n": "VALUE"}))
    run(store, [write_lines(tmp_path / "a.jsonl", [line.replace(b'"VALUE"', first)])],
        reject_path)
    summary = run(store, [write_lines(tmp_path / "b.jsonl", [line.replace(b'"VALUE"', second)])],
                  reject_path)
    assert (summary.duplicates, summary.rejected) == (0, 1)


def test_integer_beyond_64_bits_is_stored_verbatim(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """A payload integer too large for 64 bits is kept exactly, not turned into a float."""
    big = 2**70
    line = orjson.dumps(ev(event="EXEC_NEXT", payload={"n": "BIG"})).replace(
        b'"BIG"', str(big).encode())
    summary = run(store, [write_lines(tmp_path / "in.jsonl", [line])], reject_path)
    assert summary.accepted == 1
    [record] = stored(store, "default", "t1")
    assert type(record["payload"]["n"]) is int and record["payload"]["n"] == big
    assert verify(store).ok  # verify reads it back without a false problem


@pytest.mark.parametrize("value", [2**53, 2**64, -(2**70)], ids=["2^53", "2^64", "-2^70"])
def test_memory_write_outside_ijson_is_rejected(
    store: Store, tmp_path: Path, reject_path: Path, value: int
) -> None:
    """A memory write of an integer outside +-(2^53 - 1) is rejected with that reason."""
    line = orjson.dumps(ev("t1", 1, "CALLBACK_MEMORY_WRITE", {"key": "k", "value": "BIG"},
                           write_scope="memory/planner")).replace(b'"BIG"', str(value).encode())
    summary = run(store, [write_lines(tmp_path / "in.jsonl", [line])], reject_path)
    assert (summary.accepted, summary.rejected) == (0, 1)
    [entry] = rejects(reject_path)
    assert entry["field"] == "payload.value" and "2**53" in entry["reason"]
    assert entry["raw"].encode() == line


def test_events_nested_to_the_limit_are_kept_and_deeper_ones_rejected(
    store: Store, tmp_path: Path, reject_path: Path
) -> None:
    """Events nested as deep as the contract allows are stored, and so is the finding
    of a conflicting one, whose evidence holds it a level deeper; a line nested far
    deeper is rejected, not a crash. The ledger verifies and the views rebuild."""
    import json

    from projections import Projector, queries

    def nested(levels: int, leaf: Any = 1) -> Any:
        for _ in range(levels):
            leaf = [leaf]
        return leaf

    deepest = tool(payload={"tool": "t", "args": {"x": nested(251)}, "success": False})
    rewrite = tool(payload={"tool": "t", "args": {"x": nested(251, 2)}, "success": False})
    write = ev(seq=3, event="CALLBACK_MEMORY_WRITE", write_scope="memory/planner",
               payload={"key": "k", "value": nested(251)})
    src = tmp_path / "deep.jsonl"
    far_deeper = orjson.dumps(tool("t2", 1, {"tool": "t", "args": {}, "success": True}))
    far_deeper = far_deeper.replace(b'"args":{}', b'"args":{"x":%s%s}' % (b"[" * 1015, b"]" * 1015))
    src.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in [
        ev(), deepest, rewrite, write]) + far_deeper + b"\n")
    Projector(store).attach()
    summary = run(store, [str(src)], reject_path)
    assert (summary.accepted, summary.rejected, summary.findings) == (3, 2, 1)
    assert sorted((r["line"], r["reason"][:19]) for r in rejects(reject_path)) == [
        (3, "conflict: seq 2 of "), (5, "nested too deeply: ")]
    [finding] = findings(store, "default")
    assert finding["finding"] == "conflict" and finding["evidence"]["payload"] == rewrite["payload"]
    assert stored(store, "default", "t1")[1]["payload"] == deepest["payload"]
    assert verify(store).ok
    assert Projector(store).rebuild() == 4
    assert [f.kind for f in queries.audit_findings(store, "default")] == ["conflict"]


def test_a_server_gone_mid_ingest_says_a_rerun_completes_it_and_it_does(
    pg_cluster: Any, tmp_path: Path, reject_path: Path
) -> None:
    """PostgreSQL ends the ingest's connections halfway (a restart, an administrator):
    one StoreError that says what is kept, and the same ingest run again stores every
    event exactly once."""
    import uuid

    import psycopg

    from ledger.errors import StoreError
    from ledger.ingest import RERUN_HINT
    from ledger.workload import synthetic_lines

    database = pg_cluster.url_for("agentledger_test")
    url = f"{database}?schema=t_{uuid.uuid4().hex[:12]}"
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(synthetic_lines(3000)))
    half, read = src.stat().st_size // 2, 0

    def end_connections_halfway(nbytes: int) -> None:
        nonlocal read
        read += nbytes
        if read - nbytes < half <= read:
            with psycopg.connect(database, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = 'agentledger_test' AND pid <> pg_backend_pid()")

    with Store.open(url) as store, pytest.raises(StoreError) as caught:
        ingest(store, [str(src)], reject_file=str(reject_path), batch_size=100,
               progress=end_connections_halfway)
    assert str(caught.value).endswith(f"; {RERUN_HINT}")
    with Store.open(url) as store:
        summary = ingest(store, [str(src)], reject_file=str(reject_path))
        assert summary.duplicates > 0 and summary.accepted + summary.duplicates == 3000
        report = verify(store)
        assert summary.rejected == 0 and report.ok and report.events == 3000


def test_findings_of_two_writers_at_once_are_chained_one_after_the_other(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's findings stream takes findings from every writer (ingest processes, a
    runtime's TraceWriter). One writer's findings land while another's flush is on its
    way to the store: the later flush chains its own after them, with no conflict."""
    def mismatch(trace_id: str) -> TraceEvent:
        return parse_event(ev(trace_id, 1, "CALLBACK_MEMORY_WRITE", {"key": "k", "value": 1},
                              write_scope="memory/planner", memory_hash=WRONG_HASH))

    with Store.open(store_url) as other:
        first, second = Appender(store), Appender(other)
        second.stage([mismatch("t2")])
        real_append = other.backend.append

        def append_after_the_first(*args: Any, **kwargs: Any) -> Any:
            first.stage([mismatch("t1")])
            assert first.flush(notify=False) == 1
            return real_append(*args, **kwargs)

        monkeypatch.setattr(other.backend, "append", append_after_the_first)
        assert second.flush(notify=False) == 1

    assert [(f["trace_id"], f["finding"]) for f in findings(store, "default")] == [
        ("t1", "memory_hash_mismatch"), ("t2", "memory_hash_mismatch")]
    assert verify(store).ok


def test_a_conflict_two_writers_find_at_once_is_recorded_once(
    store: Store, store_url: str, tmp_path: Path, reject_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ingests of the same attempted rewrite at once (the later one staged before
    the first committed): the later one reads, under the write lock, the finding the
    first recorded, rejects the line and records nothing; it says so in its counts."""
    run(store, [write_lines(tmp_path / "a.jsonl", [ev(), tool()])], reject_path)
    changed = tool(payload={"tool": "search", "args": {"q": "other"}, "success": False})
    src = write_lines(tmp_path / "b.jsonl", [changed])
    with Store.open(store_url) as other:
        real_append, first = other.backend.append, []

        def append_after_the_first(*args: Any, **kwargs: Any) -> Any:
            if not first:
                first.append(run(store, [src], tmp_path / "first.rejects.jsonl"))
            return real_append(*args, **kwargs)

        monkeypatch.setattr(other.backend, "append", append_after_the_first)
        later = run(other, [src], reject_path)
    assert (first[0].rejected, first[0].findings) == (1, 1)
    assert (later.rejected, later.findings) == (1, 0)
    assert [(f["finding"], f["seq"]) for f in findings(store, "default")] == [("conflict", 2)]
    assert len(rejects(reject_path)) == 1 and verify(store).ok


def test_a_flush_drops_only_the_conflicts_another_writer_recorded(
    store: Store, store_url: str
) -> None:
    """The findings a flush writes are its queued ones less the conflicts recorded by
    another writer since it read them; its other findings are written, after those
    (in the order it queued them: a write's mismatch as it is staged, conflicts with
    stored events once its batch is read)."""
    def mismatch(trace_id: str) -> TraceEvent:
        return parse_event(ev(trace_id, 1, "CALLBACK_MEMORY_WRITE", {"key": "k", "value": 1},
                              write_scope="memory/planner", memory_hash=WRONG_HASH))

    setup = Appender(store)
    setup.stage([parse_event(ev()), parse_event(tool())])
    setup.flush(notify=False)
    same = parse_event(tool(payload={"tool": "search", "args": {"q": "x"}, "success": False}))
    own = parse_event(tool(payload={"tool": "search", "args": {"q": "y"}, "success": False}))
    with Store.open(store_url) as other:
        first, second = Appender(store), Appender(other)
        assert [o.kind for o in second.stage([same, own, mismatch("t2")])] == [
            "conflict", "conflict", None]
        assert [o.kind for o in first.stage([same])] == ["conflict"]
        first.flush(notify=False)
        assert second.pending_findings == 3
        second.flush(notify=False)
        assert (first.findings_written, second.findings_written) == (1, 2)
    assert [(f["finding"], f["evidence"]["payload"]["args"]["q"] if f["evidence"] else None)
            for f in findings(store, "default")] == [
        ("conflict", "x"), ("memory_hash_mismatch", None), ("conflict", "y")]
    assert verify(store).ok


@pytest.fixture
def small_events(monkeypatch: pytest.MonkeyPatch) -> int:
    """Events of at most 600 bytes, to try the limit without a 256 MiB line."""
    monkeypatch.setattr(chain, "MAX_EVENT_BYTES", 600)
    return 600


def test_a_line_longer_than_an_event_may_be_is_rejected_unread(
    store: Store, tmp_path: Path, reject_path: Path, small_events: int
) -> None:
    """A line over the limit is rejected and saved whole, the lines of its batch stored;
    a line under it whose event grows over it when stored (``1E5`` is ``100000.0``) is
    rejected too. A line of 1.05 GB used to fail its whole batch, and every re-run."""
    big = orjson.dumps(tool(payload={"tool": "t", "args": {}, "success": True,
                                     "output": "a" * 700}))
    grows = orjson.dumps(tool("t2", 1, {"tool": "t", "args": {}, "success": True,
                                        "o": "@x@"})).replace(b'"@x@"', b"[" + b",".join(
                                            [b"1E5"] * 60) + b"]")
    assert len(big) > small_events > len(grows)
    src = write_lines(tmp_path / "in.jsonl", [ev(), big, grows, ev("t3")])
    summary = run(store, [src], reject_path)
    assert (summary.accepted, summary.rejected) == (2, 2)
    first, second = rejects(reject_path)
    assert (first["line"], first["raw"].encode()) == (2, big)
    assert first["reason"] == f"line is {len(big):,} bytes, more than the 600 an event may take"
    assert second["line"] == 3 and second["reason"].startswith("event is ")
    assert [r["trace_id"] for r in (*stored(store, "default", "t1"),
                                    *stored(store, "default", "t3"))] == ["t1", "t3"]


def test_an_event_larger_than_the_limit_is_refused_by_the_api(
    store: Store, small_events: int
) -> None:
    """TraceWriter.record refuses it as a ValidationError, storing nothing."""
    from ledger.writer import TraceWriter

    writer = TraceWriter(store, tenant="acme")
    with pytest.raises(ValidationError, match="an event may take"):
        writer.record("t1", "EXEC_START", {"x": "a" * 700}, agent_owner="p", executed_by="p")
    writer.flush()
    assert stored(store, "acme", "t1") == []
