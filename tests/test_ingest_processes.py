"""Ingest shared out between processes (``workers`` > 1) gives the ledger one process gives.

Every test runs on SQLite and PostgreSQL. ``BYTES_PER_PROCESS`` is lowered so that
small inputs are shared out for real (spawned processes, their own connections).
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb

from ledger import chain, ingest_processes
from ledger.ingest import ingest
from ledger.memory import memory_hash
from ledger.sources import Cursor, Part, read_lines, stream_part
from ledger.store import Store
from ledger.verify import verify

WRONG_HASH = "sha256:" + "f" * 64


def _event(tenant: str | None, trace: str, seq: int, event: str, payload: dict[str, Any],
           **extra: Any) -> dict[str, Any]:
    obj = {"trace_id": trace, "seq": seq, "event": event,
           "ts": f"2026-11-20T10:{seq // 60:02d}:{seq % 60:02d}.000Z",
           "agent_owner": "planner", "executed_by": "planner", "payload": payload, **extra}
    if tenant is not None:
        obj["tenant"] = tenant
    return obj


def mixed_lines() -> list[bytes]:
    """Traces of three tenants interleaved, with every kind of line ingest must judge:
    memory writes (right and wrong claimed hashes), duplicates, a conflict, a gap,
    malformed, non-UTF-8, non-object and streamless lines, blank lines."""
    lines: list[bytes] = []
    traces = [(tenant, f"trace-{i}") for i in range(12) for tenant in ("acme", "globex", None)]
    for seq in range(1, 7):
        for n, (tenant, trace) in enumerate(traces):
            if seq == 1:
                obj = _event(tenant, trace, 1, "EXEC_START", {"context_id": f"ctx {n}"})
            elif seq == 2:
                value = {"n": n, "note": "ünïcode"}
                claim = memory_hash({"k": value}) if n % 2 else WRONG_HASH
                obj = _event(tenant, trace, 2, "CALLBACK_MEMORY_WRITE",
                             {"key": "k", "value": value}, memory_hash=claim,
                             write_scope="memory/planner")
            elif seq == 6 and n % 5 == 0:
                obj = _event(tenant, trace, 6, "EXEC_TERMINATED", {"reason": "done"})
            else:
                obj = _event(tenant, trace, seq, "TOOL_EXEC",
                             {"tool": "search", "args": {"q": n}, "success": seq % 3 != 0})
            lines.append(orjson.dumps(obj))
        if seq == 3:
            lines += [b'{"trace_id": "cut off', b"\xff\xfe not utf-8", b"[1, 2]", b"",
                      b'{"seq": 1}', b'{"trace_id": 7, "seq": 1}', b"   ",
                      orjson.dumps(_event("acme", "twice", 1, "EXEC_START", {"context_id": "a"}))
                      .replace(b'{"context_id"', b'{"context_id":"b","context_id"')]
    lines += lines[:10]  # duplicates of stored events
    conflict = orjson.loads(lines[0])
    conflict["payload"] = {"context_id": "rewritten"}
    lines.append(orjson.dumps(conflict))
    lines.append(orjson.dumps(_event("acme", "trace-1", 9, "TOOL_EXEC",
                                     {"tool": "x", "args": {}, "success": True})))  # a gap
    return lines


ODD_LINES = [
    # trace-1 of acme, its trace id written with an escape: the same stream
    rb'{"tenant": "acme", "trace_id": "trace\u002d1", "seq": 7, "event": "EXEC_TERMINATED", '
    rb'"ts": "2026-11-20T10:00:07Z", "agent_owner": "planner", "executed_by": "planner", '
    rb'"payload": {"reason": "done"}}',
    # an integer beyond 64 bits, which only the exact decoder reads as an integer
    rb'{"tenant": "globex", "trace_id": "trace-2", "seq": 7, "event": "TOOL_EXEC", '
    rb'"ts": "2026-11-20T10:00:07Z", "agent_owner": "planner", "executed_by": "planner", '
    rb'"payload": {"tool": "t", "args": {"n": 123456789012345678901234567890}, "success": true}}',
    rb'{"trace_id": "\ud800", "seq": 1}',  # a lone surrogate
    rb'{"trace_id": "nan", "seq": NaN}',
    rb'{"trace_id": "big", "seq": 99999999999999999999999}',
    # a key twice in one object, in a line only the exact decoder reads
    rb'{"tenant": "globex", "trace_id": "twice-big", "seq": 1, "event": "TOOL_EXEC", '
    rb'"ts": "2026-11-20T10:00:07Z", "agent_owner": "planner", "executed_by": "planner", '
    rb'"payload": {"tool": "t", "args": {"n": 123456789012345678901234567890, "n": 1}, '
    rb'"success": true}}',
]


def write(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def other_url(store_url: str, tmp_path: Path) -> str:
    """A second empty store on the same backend."""
    if store_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.db'}"
    return store_url.split("?")[0] + f"?schema=t_{uuid.uuid4().hex[:12]}"


def snapshot(url: str, reject_file: Path) -> dict[str, Any]:
    """What an ingest leaves: trace rows, findings (without their clock), rejected lines."""
    rows = rawdb.rows(url)
    traces = sorted((r.stream_id.hex, r.version, r.state) for r in rows
                    if r.topic == chain.EVENT_TOPIC)
    findings = sorted(
        (f["tenant"], f["finding"], f["trace_id"] or "", f["seq"] or 0, f["detail"])
        for f in (chain.decode(r.state) for r in rows if r.topic == chain.FINDING_TOPIC))
    rejected = sorted((r["source"], r["line"], r["reason"], r["raw"])
                      for r in map(orjson.loads, reject_file.read_bytes().splitlines()))
    return {"traces": traces, "findings": findings, "rejected": rejected}


@pytest.fixture
def shared_out(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Share any input out; record the process counts ingest ran with."""
    monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", 1)
    counts: list[int] = []
    real = ingest_processes.ingest_in_processes

    def spy(store: Store, sources: Any, count: int, **kwargs: Any) -> Any:
        counts.append(count)
        return real(store, sources, count, **kwargs)

    monkeypatch.setattr(ingest_processes, "ingest_in_processes", spy)
    return counts


def test_processes_store_what_one_process_stores(
    store: Store, store_url: str, tmp_path: Path, shared_out: list[int]
) -> None:
    """Same rows byte for byte, same findings, same rejected lines, same counts."""
    src = write(tmp_path / "in.jsonl", mixed_lines())
    one_rejects, many_rejects = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    with Store.open(other_url(store_url, tmp_path)) as single:
        one = ingest(single, [src], reject_file=str(one_rejects), batch_size=7)
        expected = snapshot(single.url, one_rejects)
    many = ingest(store, [src], reject_file=str(many_rejects), batch_size=7, workers=3)

    assert shared_out == [3]
    assert many.as_json() == {**one.as_json(), "reject_file": str(many_rejects)}
    assert (one.accepted, one.duplicates, one.findings) == (216, 10, 19)
    assert one.rejected == 2 + 6  # the conflict and the gap; six unreadable lines
    assert snapshot(store.url, many_rejects) == expected
    assert not list(tmp_path.glob("*.part*")), "part reject files are merged and removed"
    report = verify(store)
    assert report.ok, report.problems[:3]


def hand_off_at_first_line(monkeypatch: pytest.MonkeyPatch,
                           seen: Callable[[Part, Cursor], object]) -> None:
    """Make this process wait at its first line until a spawned one has finished, so
    that it hands the rest of its share off there; ``seen(part, cursor)`` at the hand-off."""
    real_tick, real_hand_off = ingest_processes._Children.tick, ingest_processes._Children.hand_off

    def slow_tick(self: Any, nbytes: int) -> None:
        deadline = time.monotonic() + 60
        while not self.any_idle() and time.monotonic() < deadline:
            self._poll(0.05)
        real_tick(self, nbytes)

    def hand_off(self: Any, part: Part, cursor: Cursor) -> None:
        seen(part, cursor)
        real_hand_off(self, part, cursor)

    monkeypatch.setattr(ingest_processes._Children, "tick", slow_tick)
    monkeypatch.setattr(ingest_processes._Children, "hand_off", hand_off)


def test_a_finished_process_takes_the_rest_of_this_ones_share(
    store: Store, store_url: str, tmp_path: Path, shared_out: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With something following the commits, this process stops at its first line until
    a spawned one has finished its own share; that one then takes the rest of this one's
    streams from the next line on. The ledger is the one one process stores."""
    src = write(tmp_path / "in.jsonl", mixed_lines())
    one_rejects, many_rejects = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    with Store.open(other_url(store_url, tmp_path)) as single:
        one = ingest(single, [src], reject_file=str(one_rejects), batch_size=7)
        expected = snapshot(single.url, one_rejects)
    handed: list[tuple[int, int]] = []
    hand_off_at_first_line(monkeypatch, lambda part, cursor: handed.append(
        (part.index, cursor.line)))
    monkeypatch.setattr(ingest_processes, "FOLLOWING_WEIGHTS", (4, 1))
    store.add_commit_listener(lambda: None)  # a follower: this process takes a smaller share
    many = ingest(store, [src], reject_file=str(many_rejects), batch_size=7, workers=3)

    assert shared_out == [3]
    assert handed == [(0, 1)], "handed off after the first line"
    assert many.as_json() == {**one.as_json(), "reject_file": str(many_rejects)}
    assert snapshot(store.url, many_rejects) == expected
    assert not list(tmp_path.glob("*.part*"))
    assert verify(store).ok


def test_progress_shows_the_part_furthest_behind(
    store: Store, tmp_path: Path, shared_out: list[int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spawned process that has read all the input does not move the bar to the end
    while this one has read one line; the rest of this one's share, handed off, does."""
    src = write(tmp_path / "in.jsonl", mixed_lines())
    shown: list[int] = []
    at_hand_off: list[tuple[int, int]] = []
    hand_off_at_first_line(monkeypatch, lambda part, cursor: at_hand_off.append(
        (sum(shown), cursor.offset)))
    store.add_commit_listener(lambda: None)
    ingest(store, [src], reject_file=str(tmp_path / "r.jsonl"), workers=2,
           progress=shown.append)

    assert shared_out == [2]
    [(bar, offset)] = at_hand_off
    assert 0 < offset < Path(src).stat().st_size and bar <= offset
    assert sum(shown) == Path(src).stat().st_size


def test_progress_adds_up_to_the_input_without_a_follower(
    store: Store, tmp_path: Path, shared_out: list[int],
) -> None:
    src = write(tmp_path / "in.jsonl", mixed_lines())
    shown: list[int] = []
    ingest(store, [src, src], reject_file=str(tmp_path / "r.jsonl"), workers=3,
           progress=shown.append)
    assert shared_out == [3]
    assert all(n > 0 for n in shown) and sum(shown) == 2 * Path(src).stat().st_size


def test_rerun_in_processes_is_all_duplicates(
    store: Store, tmp_path: Path, shared_out: list[int]
) -> None:
    src = write(tmp_path / "in.jsonl", mixed_lines())
    ingest(store, [src], reject_file=str(tmp_path / "r1.jsonl"), workers=2)
    again = ingest(store, [src], reject_file=str(tmp_path / "r2.jsonl"), workers=2)
    assert shared_out == [2, 2]
    assert (again.accepted, again.duplicates) == (0, 216 + 10)


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 3, 3]])
def test_every_line_goes_to_exactly_one_part(tmp_path: Path, weights: list[int]) -> None:
    """The parts cover the input: each valid line once, each unreadable line in part 0;
    a part's share of the streams follows its weight."""
    src = write(tmp_path / "in.jsonl", mixed_lines() + ODD_LINES)
    whole = [(line.number, line.raw, str(line.event)) for line in read_lines([src])]
    parts = [[(line.number, line.raw, str(line.event))
              for line in read_lines([src], part=Part.of(k, weights))] for k in range(3)]
    assert sorted(x for part in parts for x in part) == sorted(whole)
    [escaped_part] = [k for k, part in enumerate(parts) for _, raw, _ in part
                      if raw == ODD_LINES[0]]
    assert all(o.get("trace_id") != "trace-1" or o.get("tenant") != "acme"
               for k, part in enumerate(parts) if k != escaped_part
               for o in map(_object, part)), "a stream's lines, escaped or not, in one part"
    assert all(parts), "each of the three parts gets some streams"
    unreadable = {b'{"trace_id": "cut off', b"\xff\xfe not utf-8", b"[1, 2]", b'{"seq": 1}',
                  b'{"trace_id": 7, "seq": 1}'}
    assert unreadable <= {raw for _, raw, _ in parts[0]}
    streams = [{(o.get("tenant"), o["trace_id"]) for o in map(_object, part)
                if isinstance(o.get("trace_id"), str)} for part in parts]
    if weights[0] < weights[1]:
        assert len(streams[0]) < min(len(streams[1]), len(streams[2])), streams
    owners = tuple(range(7))
    assert stream_part({"trace_id": "t", "tenant": "default"}, owners) == stream_part(
        {"trace_id": "t"}, owners), "an omitted tenant is the default tenant"


def test_a_line_over_the_size_limit_is_reported_by_part_0_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process decodes a line longer than an event may be; the first part rejects it."""
    monkeypatch.setattr(chain, "MAX_EVENT_BYTES", 600)
    big = orjson.dumps(_event("acme", "trace-big", 1, "EXEC_START", {"context_id": "a" * 700}))
    src = write(tmp_path / "in.jsonl", [*mixed_lines()[:30], big, *mixed_lines()[30:60]])
    seen = [[(line.number, str(line.event)) for line in read_lines([src], part=Part.of(k, [1, 1]))
             if line.raw == big] for k in range(2)]
    assert seen == [[(31, f"line is {len(big):,} bytes, more than the 600 an event may take")],
                    []]


def test_a_cursor_resumes_reading_where_it_stopped(tmp_path: Path) -> None:
    """Taking any number of lines and reading on from the cursor gives every line once,
    across sources, blank lines and CRLF endings, with the same numbers."""
    first = write(tmp_path / "a.jsonl", mixed_lines()[:40])
    second = tmp_path / "b.jsonl"
    second.write_bytes(b"\r\n".join(mixed_lines()[40:60]) + b"\r\n\n\n")
    sources = [first, str(second)]
    whole = [(line.source, line.number, line.raw) for line in read_lines(sources)]
    assert len(whole) > 50
    for taken in range(len(whole) + 1):
        cursor = _cursor_after(sources, taken)
        rest = [(line.source, line.number, line.raw)
                for line in read_lines(sources, cursor=cursor)]
        assert whole[:taken] + rest == whole, taken


def _cursor_after(sources: list[str], count: int) -> Cursor:
    """The cursor left once ``count`` lines have been taken (the count-th yielded)."""
    cursor = Cursor()
    if count:
        for taken, _ in enumerate(read_lines(sources, cursor=cursor), 1):
            if taken == count:
                break
    return cursor


def _object(line: tuple[Any, ...]) -> dict[str, Any]:
    try:
        obj = orjson.loads(line[1])
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def test_process_count(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path / "in.jsonl", mixed_lines())
    size = Path(src).stat().st_size
    monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", size // 2)
    assert ingest_processes.process_count(store, [src], 8) == 2  # one per share of input
    assert ingest_processes.process_count(store, [src], 1) == 1
    assert ingest_processes.process_count(store, [src, "-"], 8) == 1  # stdin: one reader
    monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", size + 1)
    assert ingest_processes.process_count(store, [src], 8) == 1  # too small to share
    with Store.open("sqlite:///:memory:") as memory:
        monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", 1)
        assert ingest_processes.process_count(memory, [src], 8) == 1  # no other process sees it
    packed = tmp_path / "in.jsonl.gz"  # counted by the size of its lines, not of the file
    packed.write_bytes(gzip.compress(Path(src).read_bytes()))
    monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", size // 2)
    assert packed.stat().st_size < size // 2
    assert ingest_processes.process_count(store, [str(packed)], 8) == 2


def test_a_gzip_compressed_input_shared_out_gives_what_one_process_gives(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_processes, "BYTES_PER_PROCESS", 1)
    lines = mixed_lines()
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    alone = ingest(store, [write(tmp_path / "in.jsonl", lines)], workers=1,
                   reject_file=str(tmp_path / "r1.jsonl"))
    assert alone.accepted > 0
    shared = ingest(store, [str(packed)], workers=3, reject_file=str(tmp_path / "r3.jsonl"))
    assert (shared.accepted, shared.duplicates + shared.rejected) == (
        0, alone.accepted + alone.duplicates + alone.rejected)


def test_a_failing_process_stops_the_ingest_with_its_error(
    sqlite_url: str, tmp_path: Path, shared_out: list[int]
) -> None:
    """A spawned part that cannot open the store: its error, with its exit code, names it."""
    import sqlite3

    src = write(tmp_path / "in.jsonl", mixed_lines())
    with Store.open(sqlite_url) as store:
        db = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        with db:  # a newer agentledger migrated the store after this one opened it
            db.execute("INSERT INTO agentledger_schema VALUES (99, 'future', 'now')")
        db.close()
        with pytest.raises(ingest_processes.PartFailed) as caught:
            ingest(store, [src], reject_file=str(tmp_path / "r.jsonl"), workers=2)
    assert "ingest process 1" in str(caught.value)
    assert "schema version 99" in str(caught.value)
    assert caught.value.exit_code == 1


GRANDPARENT = """
import multiprocessing, sys, time
from ledger.workers import die_with_parent

def sleeper():
    die_with_parent()
    time.sleep(60)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=sleeper)
    child.start()
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_spawned_process_dies_with_the_ingesting_process(tmp_path: Path) -> None:
    """kill -9 of the ingesting process takes its spawned processes with it at once
    (they would otherwise go on storing their share)."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(GRANDPARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # the child has started sleeping
        assert Path(f"/proc/{child}").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists(), "the spawned process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout:
            parent.stdout.close()
