"""``ProblemLog``: verify's problems in the order found, the first ``KEPT`` in memory and
the rest in a temporary file that moves with the log between processes and goes with
it. A ledger altered throughout is reported whole, the same as before, in bounded
memory, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import gc
import glob
import json
import multiprocessing
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import rawdb
from clirun import run
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import problem_log
from ledger.problem_log import Problem, ProblemLog
from ledger.store import Store
from ledger.verify import verify


def problems(n: int, start: int = 0) -> list[Problem]:
    return [Problem("acme" if k % 3 else None, f"trace-{k}", k if k % 5 else None,
                    "chain_broken", f"detail {k} \u00e9") for k in range(start, start + n)]


def spill_files() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "agentledger-problems-*")))


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(problem_log, "KEPT", 4)
    monkeypatch.setattr(problem_log, "CHUNK", 3)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(-45, 45), st.integers(-45, 45))
def test_a_log_reads_like_the_list_of_what_was_appended(n: int, a: int, b: int) -> None:
    kept, chunk = problem_log.KEPT, problem_log.CHUNK
    problem_log.KEPT, problem_log.CHUNK = 4, 3  # hypothesis: no function-scoped fixture
    try:
        appended = problems(n)
        log = ProblemLog(appended)
        assert len(log) == n and bool(log) == bool(n)
        assert list(log) == appended and log == appended and log == ProblemLog(appended)
        assert log[a:b] == appended[a:b] and log[a:] == appended[a:]
        assert log[::-1] == appended[::-1]
        if -n <= a < n:
            assert log[a] == appended[a]
        else:
            with pytest.raises(IndexError):
                log[a]
        log.append(Problem(None, None, None, "late", "x"))  # reads see it, once written
        assert list(log) == [*appended, Problem(None, None, None, "late", "x")]
    finally:
        problem_log.KEPT, problem_log.CHUNK = kept, chunk


def test_beyond_kept_the_problems_are_on_disk_and_go_with_the_log(small: None) -> None:
    before = spill_files()
    log = ProblemLog(problems(3))
    assert spill_files() == before  # within KEPT: nothing on disk
    log.extend(problems(20, 3))
    [path] = spill_files() - before
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert list(log) == problems(23)
    del log
    gc.collect()
    assert spill_files() == before


def _build_in_another_process(n: int) -> ProblemLog:
    problem_log.KEPT, problem_log.CHUNK = 4, 3
    return ProblemLog(problems(n))


def test_a_log_sent_from_another_process_hands_its_file_over() -> None:
    before = spill_files()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        log = pool.apply(_build_in_another_process, (25,))
    assert list(log) == problems(25)  # read after the sender has gone
    assert len(spill_files() - before) == 1
    log.extend(problems(3, 25))  # after the file, whatever this process keeps in memory
    assert list(log) == problems(28)
    again = pickle.loads(pickle.dumps(log))  # handed over again, within this process
    assert list(again) == problems(28)
    del log, again
    gc.collect()
    assert spill_files() == before


def test_a_ledger_altered_throughout_is_reported_whole(
        four_traces: str, small: None, tmp_path: Path) -> None:
    """Every record altered: a problem per event, every one printed, in the same order
    by ``--json``, the table and the library."""
    for row in rawdb.rows(four_traces):
        rawdb.set_state(four_traces, row.stream_id, row.version, row.state + b" ")
    with Store.open(four_traces) as store:
        report = verify(store)
    assert len(report.problems) >= 40 and not report.ok
    code, out, _ = run(four_traces, "verify", "--json")
    assert code == 4
    document = json.loads(out)
    assert document == report.as_json()
    assert [(p["trace_id"], p["seq"], p["kind"]) for p in document["problems"]] == [
        (p.trace_id, p.seq, p.kind) for p in report.problems]
    code, out, _ = run(four_traces, "verify")
    lines = out.splitlines()
    assert code == 4 and lines[0].startswith(f"ALTERED: {len(report.problems)} problem(s)")
    assert len(lines) == 3 + len(report.problems)


def _without_time(data: bytes) -> bytes:
    return re.sub(rb'(""?)generated_at\1:\1[^"]*\1', b"", data)


def _header(path: Path) -> dict[str, Any]:
    if path.suffix == ".jsonl":
        return dict(json.loads(path.read_bytes().splitlines()[0]))
    with path.open(newline="") as fh:
        return dict(json.loads(next(r for r in csv.DictReader(fh))["detail"]))


def _statuses(path: Path) -> dict[tuple[str, int], str]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_bytes().splitlines()]
    else:
        with path.open(newline="") as fh:
            rows = [{**r, "seq": int(r["seq"])} for r in csv.DictReader(fh)
                    if r["type"] == "event"]
    return {(r["trace_id"], r["seq"]): r["verification"] for r in rows if r["type"] == "event"}


@pytest.mark.parametrize("form", ["jsonl", "csv"])
def test_an_export_of_a_tenant_altered_throughout_is_the_same_past_the_kept_problems(
        four_traces: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    """Past the problems kept in memory, the header's problems come from the file and
    each event's status from a temporary database: the export is the same, and says
    what verify says."""
    for row in rawdb.rows(four_traces):  # the last three of each trace: the last event
        if row.version >= 8:  # has two problems (a broken chain, and a head not its hash)
            rawdb.set_state(four_traces, row.stream_id, row.version, row.state + b" ")
    tenant = "tenant-001"
    verified = json.loads(run(four_traces, "verify", "--tenant", tenant, "--json")[1])
    expected: dict[tuple[str, int], set[str]] = {}
    for p in verified["problems"]:
        expected.setdefault((p["trace_id"], p["seq"]), set()).add(p["kind"])
    assert len(verified["problems"]) > 4 and len(expected) > 3  # past the 4 kept below
    assert any(len(kinds) > 1 for kinds in expected.values())
    exports = []
    for kept in (problem_log.KEPT, 4):
        monkeypatch.setattr(problem_log, "KEPT", kept)
        out = tmp_path / f"kept{kept}.{form}"
        code, _, err = run(four_traces, "audit", "export", str(out), "--tenant", tenant)
        assert code == 4, err
        exports.append(out)
        assert _header(out)["verification"] == {k: verified[k] for k in (
            "ok", "streams", "events", "problems")}
        statuses = _statuses(out)
        assert {k: v for k, v in statuses.items() if v != "ok"} == {
            k: ",".join(sorted(v)) for k, v in expected.items()}
        assert len(statuses) == verified["events"]
    assert _without_time(exports[0].read_bytes()) == _without_time(exports[1].read_bytes())
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "agentledger-statuses-*"))
