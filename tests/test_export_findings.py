"""``audit export`` takes the tenant's findings as they stood when it verified, kept in a
temporary file, and writes those in its window or about an event it exported; which
events it exported it keeps as runs of seqs per trace. On SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb
from clirun import run, run_json, write_demo

from ledger.workload import synthetic_lines
from projections import export, export_state
from projections.export_state import ExportedEvents

SINCE, UNTIL = "2026-11-17T09:00:01Z", "2026-11-17T09:00:07Z"


def ingest_demo(store_url: str, tmp_path: Path) -> None:
    code, _, err = run(store_url, "ingest", str(write_demo(tmp_path / "demo.jsonl")),
                       "--reject-file", str(tmp_path / "r.jsonl"))
    assert code == 0, err


def exported(store_url: str, out: Path, exit_code: int) -> list[dict[str, Any]]:
    """Tenant acme's export to ``out`` (which must exit ``exit_code``), its lines
    decoded, the header's ``generated_at`` blanked."""
    code, _, err = run(store_url, "audit", "export", str(out), "--tenant", "acme")
    assert code == exit_code, err
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    return [{**lines[0], "generated_at": None}, *lines[1:]]


@pytest.mark.parametrize("kept", [10_000, 1])
def test_runs_of_seqs_hold_what_was_added_and_nothing_else(
        kept: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """In memory, or (past KEPT traces) in a temporary file."""
    monkeypatch.setattr(export_state, "KEPT", kept)
    exported = ExportedEvents()
    for seq in (1, 2, 3, 5, 7, 8, "x", None, True):
        exported.add("a", seq)
    exported.add("b", 4)
    exported.add("c", 9)
    exported.add("c", 10)
    assert [s for s in range(12) if exported.holds("a", s)] == [1, 2, 3, 5, 7, 8]
    assert [s for s in range(12) if exported.holds("b", s)] == [4]
    assert [s for s in range(12) if exported.holds("c", s)] == [9, 10]
    assert not exported.holds("d", 1) and not exported.holds(None, 1)
    assert not exported.holds("a", None)
    assert (exported._scratch is not None) == (kept == 1)
    exported.close()


def test_findings_in_the_window_or_about_an_exported_event(
        four_traces: str, tmp_path: Path) -> None:
    again = [orjson.loads(line) for line in synthetic_lines(40, events_per_trace=10, tenants=2)]
    conflicting = tmp_path / "again.jsonl"
    conflicting.write_bytes(b"".join(
        orjson.dumps({**e, "executed_by": "someone-else"}) + b"\n"
        for e in again if e["tenant"] == "tenant-000"))
    code, _, err = run(four_traces, "ingest", str(conflicting), "--reject-file",
                       str(tmp_path / "r.jsonl"))
    assert code == 3, err
    findings = run_json(four_traces, "audit", "findings", "--tenant", "tenant-000")
    assert len(findings) == 20 and {f["kind"] for f in findings} == {"conflict"}
    out = tmp_path / "x.jsonl"
    code, _, err = run(four_traces, "audit", "export", str(out), "--tenant", "tenant-000",
                       "--since", SINCE, "--until", UNTIL)
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    events = {(e["trace_id"], e["seq"]) for e in lines if e["type"] == "event"}
    assert 0 < len(events) < 20
    written = [f for f in lines if f["type"] == "finding"]
    expected = [{"type": "finding", **f} for f in findings  # recorded now: past the window
                if (f["trace_id"], f["seq"]) in events]
    assert written == expected and len(expected) == len(events)
    assert lines[0]["counts"]["findings"] == len(expected)


def test_traces_read_a_few_at_a_time_are_written_oldest_first(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Traces are read TRACES_AT_ONCE to a scan (by stream id) and written in the
    catalog's order, each whole, as `trace list` gives them: the same file as with
    one scan for them all."""
    ingest_demo(store_url, tmp_path)
    files = []
    for at_once in (10_000, 3):
        monkeypatch.setattr(export, "TRACES_AT_ONCE", at_once)
        out = tmp_path / f"{at_once}.jsonl"
        files.append(exported(store_url, out, 0))
    first, second = files
    assert first == second and len(first) > 500
    events = [(e["trace_id"], e["seq"]) for e in second if e["type"] == "event"]
    listed = [t["trace_id"] for t in run_json(store_url, "trace", "list", "--tenant", "acme")]
    assert [t for t, _ in events] == [t for t in listed for _ in range(
        sum(1 for trace, _ in events if trace == t))]
    assert all(b[1] == a[1] + 1 for a, b in itertools.pairwise(events) if a[0] == b[0])


def test_a_tampered_tenant_verified_a_range_at_a_time_gives_the_same_file(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export verifies the tenant a range of stream ids at a time (it never holds
    every catalog row at once): the same file, problems and statuses included, as
    when one snapshot holds them all."""
    import ledger.verify as verify_module
    from ledger import chain
    from ledger.backends.base import IdRange

    ingest_demo(store_url, tmp_path)
    listed = [t["trace_id"] for t in run_json(store_url, "trace", "list", "--tenant", "acme")]
    altered, cut = (chain.trace_stream_id("acme", t) for t in listed[2:4])
    rawdb.set_state(store_url, altered, 2, rawdb.get_state(store_url, altered, 2) + b" ")
    rawdb.delete_event(store_url, cut, 3)
    files, counts = [], []

    def counted(logged: int) -> list[IdRange]:
        found = verify_module.sequential_ranges(logged)
        counts.append(len(found))
        return found

    monkeypatch.setattr(export, "sequential_ranges", counted)
    for per_part in (10**9, 20):
        monkeypatch.setattr(verify_module, "EVENTS_PER_PART", per_part)
        out = tmp_path / f"{per_part}.jsonl"
        files.append(exported(store_url, out, 4))
    first, second = files
    assert first == second and counts[0] == 1 and counts[1] > 50
    kinds = {(p["trace_id"], p["kind"]) for p in first[0]["verification"]["problems"]}
    assert {(listed[2], "chain_broken"), (listed[3], "missing_event")} <= kinds
    assert {e["verification"] for e in first if e["type"] == "event"} > {"ok"}


def test_rows_stored_beyond_what_the_catalog_lists_are_exported_as_evidence(
        store_url: str, tmp_path: Path) -> None:
    """A trace is exported up to its listed length, and past it up to the last seq
    verification found a problem at: rows beyond what the catalog says are evidence."""
    from ledger import chain

    ingest_demo(store_url, tmp_path)
    trace = run_json(store_url, "trace", "list", "--tenant", "acme")[0]
    n = trace["events"]
    rawdb.set_catalog(store_url, chain.trace_stream_id("acme", trace["trace_id"]),
                      "last_seq", n - 2)
    out = tmp_path / "x.jsonl"
    code, _, err = run(store_url, "audit", "export", str(out), "--tenant", "acme")
    assert code == 4, err
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    mine = [e for e in lines if e["type"] == "event" and e["trace_id"] == trace["trace_id"]]
    assert [e["seq"] for e in mine] == list(range(1, n + 1))
    assert "length_mismatch" in mine[-1]["verification"]
