"""A stored record emptied or garbled behind the ledger's back never crashes a command.

Readers of one stream (``trace show``, ``replay``) stop with exit 4 naming tenant,
trace and seq. The views leave the record out, record that they did (``projections
status``, ``audit findings``) and warn the record's tenant on every read command;
the other tenant sees nothing of it. Restoring the bytes and rebuilding gives the
views of the untouched ledger back. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rawdb
from clirun import run, run_json

from ledger import chain, records
from ledger.errors import UnreadableRecordError
from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import synthetic_lines

TENANT, TRACE, OTHER = "tenant-001", "syn-1-000000003", "tenant-000"
SID = chain.trace_stream_id(TENANT, TRACE)
SEQ = 5
EVENT_PROJECTIONS = {"memory", "failures", "attribution", "analytics"}  # read trace events


@pytest.fixture
def ledger(four_traces: str) -> str:
    """Four synthetic traces of ten events in two tenants; views not yet built."""
    return four_traces


def spoil(url: str, how: str) -> bytes:
    """Make the record at SEQ unreadable; return its original bytes."""
    original = rawdb.get_state(url, SID, SEQ)
    if how == "garbled":
        rawdb.set_state(url, SID, SEQ, b"X" + original[1:])
    elif rawdb.is_postgres(url):
        rawdb.set_state(url, SID, SEQ, None)  # type: ignore[arg-type]
    else:  # SQLite's column forbids NULL: no bytes at all
        rawdb.set_state(url, SID, SEQ, b"")
    return original


HOW = pytest.mark.parametrize("how", ["emptied", "garbled"])


@HOW
def test_trace_show_names_the_unreadable_record(ledger: str, how: str) -> None:
    spoil(ledger, how)
    code, _, err = run(ledger, "trace", "show", TRACE, "--tenant", TENANT)
    assert code == 4, err
    assert f"tenant {TENANT!r} trace {TRACE!r} seq {SEQ}" in err
    assert "agentledger verify" in err and "Internal error" not in err


@HOW
def test_replay_names_the_unreadable_record(ledger: str, how: str, tmp_path: Path) -> None:
    policy = tmp_path / "retry.json"
    policy.write_text(json.dumps({"retry": {"max_attempts": 3}}))
    spoil(ledger, how)
    code, _, err = run(ledger, "replay", TRACE, "--tenant", TENANT, "--policy", str(policy),
                       "--from", "3")
    assert code == 4, err
    assert f"trace {TRACE!r} seq {SEQ}" in err


@HOW
def test_views_leave_the_record_out_and_say_so(ledger: str, how: str) -> None:
    """The first read builds the views past the record (the incremental path)."""
    clean = run_json(ledger, "failures", "--tenant", OTHER)
    spoil(ledger, how)  # the views have caught up with everything before it... and after
    rebuilt = run_json(ledger, "projections", "rebuild")  # ...so also check a rebuild
    assert rebuilt["entries_read"] == 40
    for args in (["failures", "--tenant", TENANT], ["audit", "writes", "--tenant", TENANT],
                 ["stats", "fallbacks", "--tenant", TENANT, "--by", "tool"],
                 ["memory", "history", "--tenant", TENANT, "--trace", TRACE]):
        code, _, err = run(ledger, *args)
        assert code == 0, (args, err)
        assert f"trace {TRACE!r} seq {SEQ}" in err and "cannot be read" in err, args
    code, out, err = run(ledger, "failures", "--tenant", OTHER, "--json")
    assert (code, err) == (0, "")  # the other tenant sees nothing of it
    assert json.loads(out) == clean
    status = {s["name"]: s["unreadable"] for s in run_json(ledger, "projections", "status")}
    assert status == {name: int(name in EVENT_PROJECTIONS) for name in status}
    findings = run_json(ledger, "audit", "findings", "--tenant", TENANT, "--kind",
                        "unreadable_record")
    assert [(f["trace_id"], f["seq"]) for f in findings] == [(TRACE, SEQ)]
    assert run_json(ledger, "audit", "findings", "--tenant", OTHER) == []


def test_unreadable_record_on_the_incremental_path(ledger: str) -> None:
    """Views built for the first time over a spoiled log (no rebuild) say the same."""
    spoil(ledger, "garbled")
    code, _, err = run(ledger, "failures", "--tenant", TENANT)
    assert code == 0 and f"seq {SEQ}" in err
    status = {s["name"]: s["unreadable"] for s in run_json(ledger, "projections", "status")}
    assert {n for n, count in status.items() if count} == EVENT_PROJECTIONS


@HOW
def test_restored_record_and_rebuild_give_the_views_back(ledger: str, how: str) -> None:
    before = {tenant: run_json(ledger, "audit", "writes", "--tenant", tenant)
              for tenant in (TENANT, OTHER)}
    failures = run_json(ledger, "failures", "--tenant", TENANT)
    original = spoil(ledger, how)
    run_json(ledger, "projections", "rebuild")
    assert run_json(ledger, "audit", "findings", "--tenant", TENANT, "--kind",
                    "unreadable_record") != []
    rawdb.set_state(ledger, SID, SEQ, original)
    run_json(ledger, "projections", "rebuild")
    code, _, err = run(ledger, "audit", "writes", "--tenant", TENANT)
    assert (code, err) == (0, "")
    assert {t: run_json(ledger, "audit", "writes", "--tenant", t) for t in before} == before
    assert run_json(ledger, "failures", "--tenant", TENANT) == failures
    assert all(s["unreadable"] == 0 for s in run_json(ledger, "projections", "status"))


@HOW
def test_export_keeps_the_unreadable_record_as_evidence(ledger: str, how: str,
                                                       tmp_path: Path) -> None:
    original = spoil(ledger, how)
    out = tmp_path / "evidence.jsonl"
    code, _, err = run(ledger, "audit", "export", str(out), "--tenant", TENANT)
    assert code == 4, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    row = next(r for r in rows if r["type"] == "event" and r["trace_id"] == TRACE
               and r["seq"] == SEQ)
    assert "unreadable_record" in row["verification"]
    if how == "emptied" and rawdb.is_postgres(ledger):
        assert row["record_hash"] is None  # NULL: no bytes to hash
    else:
        stored = rawdb.get_state(ledger, SID, SEQ)
        assert stored != original and row["record_hash"] == chain.record_hash(stored)


@HOW
def test_backend_reads_give_bytes_for_an_unreadable_record(store: Store, ledger: str,
                                                           how: str) -> None:
    """read_state and read_stream hand the bytes (none for NULL) to the reader, which
    names the record; neither fails in the driver."""
    spoil(ledger, how)
    state = store.backend.read_state(SID, SEQ)
    [stored] = [s for v, s in store.backend.read_stream(SID) if v == SEQ]
    assert isinstance(state, bytes) and state == stored
    with pytest.raises(UnreadableRecordError, match=f"trace {TRACE!r} seq {SEQ}"):
        records.decode_stored(state, tenant=TENANT, name=TRACE, seq=SEQ)


@HOW
def test_backtest_leaves_out_the_unreadable_trace_and_names_it(
    store: Store, store_url: str, tmp_path: Path, how: str
) -> None:
    """The other terminated traces are still replayed and reported; exit 4 says some were not."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(synthetic_lines(600, events_per_trace=12, tenants=1)))
    ingest(store, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"))
    policy = tmp_path / "retry.json"
    policy.write_text(json.dumps({"retry": {"max_attempts": 3}}))
    args = ("backtest", "--tenant", OTHER, "--policy", str(policy))
    clean = run_json(store_url, *args)
    assert clean["terminated_traces"] == 3 and clean["unreadable"] == []

    sid = chain.trace_stream_id(OTHER, "syn-1-000000032")
    original = rawdb.get_state(store_url, sid, 4)
    rawdb.set_state(store_url, sid, 4, b"X" + original[1:] if how == "garbled" else b"")
    code, out, err = run(store_url, *args, "--json")
    assert code == 4, err
    report = json.loads(out)
    assert report["terminated_traces"] == 2
    assert [(u["trace_id"], u["seq"]) for u in report["unreadable"]] == [("syn-1-000000032", 4)]
    assert "left out trace 'syn-1-000000032': its stored record seq 4 cannot be read" in err

    code, out, err = run(store_url, *args)  # the table, then the same warning
    assert code == 4 and "2 terminated trace(s) replayed" in out
    assert "left out trace 'syn-1-000000032'" in err


def test_backtest_parts_keep_their_left_out_traces() -> None:
    """Reports of parts (worker processes) add their left-out traces up."""
    from replay.backtest import BacktestReport

    total, part = BacktestReport("t", "d"), BacktestReport("t", "d")
    part.skip(UnreadableRecordError("t", "trace-9", 3, "garbled"))
    total.merge(part)
    total.merge(BacktestReport("t", "d"))
    assert total.unreadable == [{"trace_id": "trace-9", "seq": 3, "reason": "garbled"}]
