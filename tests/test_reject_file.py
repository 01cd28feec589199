"""The reject file holds whole entries only, whatever stopped the ingest writing it.

It is the one copy of what was rejected (from stdin, the only one), and a JSONL reader
stops at, or skips, a line it cannot parse: an entry cut off by a full disk, with the
next run's first entry joined to it, lost that entry as well.
"""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import orjson
from clirun import run, run_process, write_demo

from ledger.ingest import RejectSink
from ledger.workload import demo_bad_lines

LIMIT = 4 * 2**20  # the largest file the ingest may write: above the store's files


def _entries(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


def test_an_entry_cut_off_by_a_full_disk_is_taken_off_the_file(
        store_url: str, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(write_demo(tmp_path / "demo.jsonl").read_bytes()
                       + b"\n".join(demo_bad_lines()) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    earlier = orjson.dumps({"source": "earlier.jsonl", "line": 1, "reason": "x",
                            "raw": "y" * 150, "raw_encoding": "utf-8"}) + b"\n"
    rejects.write_bytes(earlier * ((LIMIT - 300) // len(earlier)))  # the next entry crosses

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process

    done = run_process(store_url, "ingest", str(source), "--reject-file", str(rejects),
                       "--workers", "1", before=limit_file_size)
    assert done.returncode == 1, done.stderr
    assert f"cannot write the reject file {rejects} (File too large)" in done.stderr
    kept = _entries(rejects)
    assert kept[: (LIMIT - 300) // len(earlier)] == [orjson.loads(earlier)] * (
        (LIMIT - 300) // len(earlier))
    assert rejects.stat().st_size <= LIMIT

    code, out, err = run(store_url, "ingest", str(source), "--reject-file", str(rejects),
                         "--json")
    assert code == 3, err
    assert json.loads(out)["rejected"] == len(demo_bad_lines())
    mine = [e for e in _entries(rejects) if e["source"] == str(source)]
    assert {e["line"] for e in mine} == {e["line"] for e in mine[-len(demo_bad_lines()):]}
    assert len({e["line"] for e in mine}) == len(demo_bad_lines())


def test_an_entry_left_without_its_line_break_is_not_joined_to_the_next(
        tmp_path: Path) -> None:
    """What an ingest killed mid-entry leaves: the next entry starts a line of its own."""
    path = tmp_path / "rejects.jsonl"
    path.write_bytes(b'{"source":"a.jsonl","line":1,"reason":"x","raw":"{tr')
    sink = RejectSink(str(path))
    sink.write("b.jsonl", 7, "malformed JSON", b"{bad")
    sink.close()
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"source":"a.jsonl","line":1,"reason":"x","raw":"{tr'
    assert orjson.loads(lines[1])["raw"] == "{bad"
    assert len(lines) == 2 and path.read_bytes().endswith(b"\n")


def test_a_reject_file_that_is_a_pipe_is_written_as_it_comes(tmp_path: Path) -> None:
    """No offsets are kept for what cannot seek (``--reject-file /dev/stderr``)."""
    import os

    read_end, write_end = os.pipe()
    sink = RejectSink(f"/dev/fd/{write_end}")
    sink.write("b.jsonl", 7, "malformed JSON", b"{bad")
    sink.flush()
    sink.close()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert orjson.loads(pipe.read())["line"] == 7


def test_rejected_lines_may_go_to_stderr_from_every_process(
        store_url: str, tmp_path: Path) -> None:
    """``--reject-file /dev/stderr`` (a pipe here): an ingest of valid and bad lines
    failed to sync it (exit 1), and a spawned part made its own file in /dev."""
    import glob

    source = tmp_path / "bad.jsonl"
    source.write_bytes(write_demo(tmp_path / "demo.jsonl").read_bytes()
                       + b"\n".join(demo_bad_lines()) + b"\n")
    done = run_process(store_url, "ingest", str(source), "--reject-file", "/dev/stderr",
                       "--workers", "2")
    assert done.returncode == 3, done.stderr
    saved = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert sorted(e["line"] for e in saved) == sorted(
        {e["line"] for e in saved}) and len(saved) == len(demo_bad_lines())
    assert glob.glob("/dev/stderr.part*") == []
