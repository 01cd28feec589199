"""Tamper evidence: ``verify`` reports every change made to the stored rows behind its back.

A few traces are ingested, then one trace's rows or catalog entry are edited
directly in the database (``rawdb``). Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import rawdb

from ledger import chain
from ledger.grants import add_grant
from ledger.ingest import ingest
from ledger.replays import source_hash_before, write_replay
from ledger.store import Store
from ledger.verify import VerifyReport, verify
from ledger.workload import synthetic_lines

PER_TRACE, TRACES = 10, 4
TENANT, TRACE = "tenant-001", "syn-1-000000003"  # the last synthetic trace; it writes memory
OTHER_TENANT = "tenant-000"
SID = chain.trace_stream_id(TENANT, TRACE)


@pytest.fixture
def ledger(store: Store, tmp_path: Path) -> Store:
    """A store holding four synthetic traces of ten events in two tenants."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(synthetic_lines(TRACES * PER_TRACE, events_per_trace=PER_TRACE,
                                             tenants=2)))
    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"))
    assert (summary.accepted, summary.rejected) == (TRACES * PER_TRACE, 0)
    return store


def problems(report: VerifyReport) -> set[tuple[str, int | None]]:
    """(kind, seq) of each problem, after checking each names the tampered tenant and trace."""
    assert not report.ok
    for p in report.problems:
        assert (p.tenant, p.trace_id) == (TENANT, TRACE), p
        assert p.kind and p.detail
    return {(p.kind, p.seq) for p in report.problems}


def flip_byte(state: bytes, marker: bytes) -> bytes:
    """The state with the first character after ``marker`` changed (JSON stays valid)."""
    i = state.index(marker) + len(marker)
    return state[:i] + bytes([state[i] ^ 0x01]) + state[i + 1:]


def test_untouched_ledger_verifies_ok(ledger: Store) -> None:
    """Rows written only by the ledger verify with no problems and no findings."""
    report = verify(ledger)
    assert report.ok and report.findings == []
    assert (report.streams, report.events) == (TRACES, TRACES * PER_TRACE)


def test_changed_byte_in_middle_record_breaks_chain(ledger: Store, store_url: str) -> None:
    """One changed byte in a stored record is reported as a broken chain at that record."""
    rawdb.set_state(store_url, SID, 5, flip_byte(rawdb.get_state(store_url, SID, 5), b'"ts":"'))
    found = problems(verify(ledger))
    assert {kind for kind, _ in found} == {"chain_broken"}
    assert {seq for _, seq in found} <= {5, 6}


def test_changed_byte_in_last_record_mismatches_head(ledger: Store, store_url: str) -> None:
    """One changed byte in the last record no longer matches the catalog head."""
    last = rawdb.get_state(store_url, SID, PER_TRACE)
    rawdb.set_state(store_url, SID, PER_TRACE, flip_byte(last, b'"ts":"'))
    assert problems(verify(ledger)) == {("head_mismatch", PER_TRACE)}


def test_unparseable_record_is_reported(ledger: Store, store_url: str) -> None:
    """A stored record whose bytes are no longer JSON is reported as unreadable at its seq."""
    state = rawdb.get_state(store_url, SID, 5)
    rawdb.set_state(store_url, SID, 5, b"X" + state[1:])
    found = problems(verify(ledger))
    assert ("unreadable_record", 5) in found


def test_emptied_record_is_reported(ledger: Store, store_url: str) -> None:
    """A record emptied to NULL (PostgreSQL's column allows it) or, where the column
    forbids NULL (SQLite), to no bytes, is reported as unreadable at its seq."""
    try:
        rawdb.set_state(store_url, SID, 5, None)  # type: ignore[arg-type]
    except Exception:  # SQLite: NOT NULL constraint
        assert not rawdb.is_postgres(store_url)
        rawdb.set_state(store_url, SID, 5, b"")
    found = problems(verify(ledger))
    assert ("unreadable_record", 5) in found


def test_changed_memory_write_mismatches_ledger_memory_hash(
    ledger: Store, store_url: str
) -> None:
    """A memory write whose value was altered no longer matches its ledger memory hash."""
    rows = rawdb.rows(store_url, SID)
    seq = next(r.version for r in rows if b'"CALLBACK_MEMORY_WRITE"' in r.state)
    record = chain.decode(rawdb.get_state(store_url, SID, seq))
    record["payload"]["value"] = "forged"
    rawdb.set_state(store_url, SID, seq, chain.encode(record))
    assert ("ledger_memory_hash_mismatch", seq) in problems(verify(ledger))


def test_deleted_middle_row_is_missing_event(ledger: Store, store_url: str) -> None:
    """Deleting a row inside a trace is reported as a missing event at that seq."""
    rawdb.delete_event(store_url, SID, 5)
    assert ("missing_event", 5) in problems(verify(ledger))


def test_deleted_last_row_is_length_mismatch(ledger: Store, store_url: str) -> None:
    """Deleting a trace's last row is reported as a length mismatch against the catalog."""
    rawdb.delete_event(store_url, SID, PER_TRACE)
    found = problems(verify(ledger))
    assert {kind for kind, _ in found} == {"length_mismatch"}
    assert all(seq in (PER_TRACE - 1, PER_TRACE) for _, seq in found)


def test_deleted_whole_trace_is_missing_stream(ledger: Store, store_url: str) -> None:
    """Deleting every row of a catalogued trace is reported as a missing stream."""
    for seq in range(1, PER_TRACE + 1):
        rawdb.delete_event(store_url, SID, seq)
    assert {kind for kind, _ in problems(verify(ledger))} == {"missing_stream"}


def test_swapped_states_are_seq_mismatch(ledger: Store, store_url: str) -> None:
    """Exchanging two rows' stored records is reported at both positions."""
    rawdb.swap_states(store_url, SID, 3, 4)
    found = problems(verify(ledger))
    assert {("seq_mismatch", 3), ("seq_mismatch", 4)} <= found
    assert any(kind == "chain_broken" for kind, _ in found)


def test_swapped_notification_ids_are_order_mismatch(ledger: Store, store_url: str) -> None:
    """Exchanging two rows' log positions is reported as an order mismatch."""
    rawdb.swap_notification_ids(store_url, SID, 3, 4)
    assert problems(verify(ledger)) == {("order_mismatch", 4)}


def test_edited_catalog_head_hash_is_head_mismatch(ledger: Store, store_url: str) -> None:
    """A catalog head hash that is not the last record's hash is reported."""
    rawdb.set_catalog(store_url, SID, "head_hash", "sha256:" + "f" * 64)
    assert problems(verify(ledger)) == {("head_mismatch", PER_TRACE)}


def test_edited_catalog_length_is_length_mismatch(ledger: Store, store_url: str) -> None:
    """A catalog length that differs from the stored rows is reported."""
    rawdb.set_catalog(store_url, SID, "last_seq", PER_TRACE + 1)
    assert {kind for kind, _ in problems(verify(ledger))} == {"length_mismatch"}


def test_deleted_catalog_row_is_orphan_stream(ledger: Store, store_url: str) -> None:
    """Stored events whose stream has no catalog row are reported as an orphan stream."""
    rawdb.execute(store_url, "DELETE FROM {streams} WHERE stream_id = ?",
                  (rawdb.key(store_url, SID),))
    assert problems(verify(ledger)) == {("orphan_stream", None)}


@pytest.mark.parametrize(("column", "value"), [
    ("tenant", OTHER_TENANT), ("name", "renamed"), ("status", "terminated")])
def test_edited_catalog_identity_is_reported(
    ledger: Store, store_url: str, column: str, value: str
) -> None:
    """A catalog row moved to another tenant or name, or given a false status, is reported."""
    rawdb.set_catalog(store_url, SID, column, value)
    report = verify(ledger)
    assert not report.ok
    assert all(p.kind and p.tenant and p.trace_id for p in report.problems)


@pytest.mark.parametrize(("column", "value"), [
    ("agent_owner", "intruder"), ("agent_owner", None),
    ("first_ts", "2020-01-01T00:00:00.000000Z"), ("last_ts", "2099-01-01T00:00:00.000000Z")])
def test_edited_catalog_owner_or_time_span_is_reported(
    ledger: Store, store_url: str, column: str, value: str | None
) -> None:
    """A catalog row naming another owner, or a span of time its events do not have, is
    reported: ``trace list --since`` and ``audit export`` choose traces by that span,
    so such an edit could hide a trace from an auditor's export."""
    rawdb.set_catalog(store_url, SID, column, value)
    report = verify(ledger)
    assert problems(report) == {("catalog_mismatch", None)}
    assert f"{column} {value!r}" in report.problems[0].detail


def test_edited_catalog_rows_of_tenant_streams_and_replays_are_reported(
    ledger: Store, store_url: str, tmp_path: Path
) -> None:
    """The catalog rows of a tenant's findings and grants streams and of a replay are
    held to their records too: times, and a replay's owner and status."""
    record = chain.wire_part(chain.decode(rawdb.get_state(store_url, SID, 2)))
    src = tmp_path / "conflict.jsonl"
    src.write_bytes(orjson.dumps({**record, "payload": {**record["payload"], "forged": 1}})
                    + b"\n")
    assert ingest(ledger, [str(src)], reject_file=str(tmp_path / "rej.jsonl")).findings == 1
    add_grant(ledger, TENANT, "critic", "memory/planner")
    replay = write_replay(ledger, {
        "tenant": TENANT, "source_trace_id": TRACE, "fork_seq": 3, "agent_owner": "planner",
        "source_prev_hash": source_hash_before(ledger, TENANT, TRACE, 3),
        "replay_status": "completed"}, [])
    assert verify(ledger).ok
    edits = [(chain.findings_stream_id(TENANT), "first_ts", "2020-01-01T00:00:00.000000Z"),
             (chain.grants_stream_id(TENANT), "last_ts", "2099-01-01T00:00:00.000000Z"),
             (chain.grants_stream_id(TENANT), "status", "terminated"),
             (chain.replay_stream_id(TENANT, replay), "agent_owner", "intruder"),
             (chain.replay_stream_id(TENANT, replay), "status", "failed")]
    for sid, column, value in edits:
        rawdb.set_catalog(store_url, sid, column, value)
    report = verify(ledger)
    assert sorted((p.trace_id, p.kind, p.detail.split(" ")[2]) for p in report.problems) == [
        (chain.FINDINGS_STREAM_NAME, "catalog_mismatch", "first_ts"),
        (chain.GRANTS_STREAM_NAME, "catalog_mismatch", "last_ts"),
        (chain.GRANTS_STREAM_NAME, "catalog_mismatch", "status"),
        (replay, "catalog_mismatch", "agent_owner"),
        (replay, "catalog_mismatch", "status")]


def test_deleted_finding_is_reported(ledger: Store, store_url: str, tmp_path: Path) -> None:
    """Deleting a recorded finding breaks the tenant's findings stream and is reported."""
    record = chain.wire_part(chain.decode(rawdb.get_state(store_url, SID, 2)))
    changed = {k: v for k, v in record.items() if v is not None}
    changed["payload"] = {**record["payload"], "forged": True}
    src = tmp_path / "conflict.jsonl"
    src.write_bytes(orjson.dumps(changed) + b"\n")
    summary = ingest(ledger, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"))
    assert (summary.rejected, summary.findings) == (1, 1)
    assert verify(ledger).ok
    rawdb.delete_event(store_url, chain.findings_stream_id(TENANT), 1)
    report = verify(ledger)
    assert not report.ok
    assert {(p.tenant, p.trace_id) for p in report.problems} == {
        (TENANT, chain.FINDINGS_STREAM_NAME)}


def test_tampering_is_reported_when_verifying_one_trace(ledger: Store, store_url: str) -> None:
    """Verifying only the tampered trace reports the same problem."""
    rawdb.delete_event(store_url, SID, 5)
    assert ("missing_event", 5) in problems(verify(ledger, tenant=TENANT, trace_id=TRACE))


def test_tampering_does_not_implicate_other_tenants(ledger: Store, store_url: str) -> None:
    """Another tenant's traces still verify when one tenant's trace was altered."""
    rawdb.delete_event(store_url, SID, 5)
    assert verify(ledger, tenant=OTHER_TENANT).ok


def spread_tampering(ledger: Store, store_url: str, tmp_path: Path) -> None:
    """40 more traces (every range of ids holds some), four of them tampered with: an
    event deleted, a byte changed, the catalog row deleted, every event deleted."""
    more = tmp_path / "more.jsonl"
    more.write_bytes(b"".join(synthetic_lines(400, seed=2, tenants=2)))
    assert ingest(ledger, [str(more)], reject_file=str(tmp_path / "rejected.jsonl")).accepted
    heads = [h for h in ledger.backend.iter_catalog() if h.kind == chain.TRACE_KIND]
    assert len(heads) == TRACES + 40
    altered, broken, orphan, emptied = (h.stream_id for h in heads[::11])
    rawdb.delete_event(store_url, altered, 5)
    rawdb.set_state(store_url, broken, 3,
                    flip_byte(rawdb.get_state(store_url, broken, 3), b'"ts":"'))
    rawdb.execute(store_url, "DELETE FROM {streams} WHERE stream_id = ?",
                  (rawdb.key(store_url, orphan),))
    for seq in range(1, PER_TRACE + 1):
        rawdb.delete_event(store_url, emptied, seq)


@pytest.mark.parametrize("one_tenant", [False, True])
def test_one_process_verifies_a_range_at_a_time_with_the_same_report(
    ledger: Store, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    one_tenant: bool,
) -> None:
    """One process reads a range of stream ids at a time (so that it never holds every
    catalog row at once) and reports exactly what one snapshot of them all gives."""
    import ledger.verify as verify_module

    spread_tampering(ledger, store_url, tmp_path)
    whole = verify(ledger, workers=1)
    tenant = whole.problems[0].tenant if one_tenant else None  # a tampered tenant
    whole = verify(ledger, tenant=tenant, workers=1)
    assert whole.problems and len(verify_module.sequential_ranges(
        ledger.backend.last_notification_id())) == 1
    ranges = []
    in_process = verify_module.verify_range

    def noted(store: Store, tenant: str | None, id_range: object, *args: object) -> object:
        ranges.append(id_range)
        return in_process(store, tenant, id_range, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "EVENTS_PER_PART", 20)
    monkeypatch.setattr(verify_module, "verify_range", noted)
    assert verify(ledger, tenant=tenant, workers=1).as_json() == whole.as_json()
    assert ranges == verify_module.id_ranges(ledger.backend.last_notification_id() // 20)
    assert len(ranges) > 20


def test_a_progress_bar_is_as_long_as_what_verify_reads(
        ledger: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rows_to_check (the length of verify's progress bar, read from the catalog a
    range at a time) is what verify then reads and reports, for the store, a tenant and
    a trace, however many ranges."""
    import ledger.verify as verify_module

    more = tmp_path / "more.jsonl"
    more.write_bytes(b"".join(synthetic_lines(400, seed=2, tenants=2)))
    assert ingest(ledger, [str(more)], reject_file=str(tmp_path / "rejected.jsonl")).accepted
    for per_part in (10**9, 20):
        monkeypatch.setattr(verify_module, "EVENTS_PER_PART", per_part)
        for where in ({}, {"tenant": TENANT}, {"tenant": TENANT, "trace_id": TRACE}):
            steps: list[int] = []
            report = verify(ledger, progress=steps.append, workers=1, **where)
            assert verify_module.rows_to_check(ledger, **where) == sum(steps) == report.events
    assert verify_module.rows_to_check(ledger, tenant=TENANT, trace_id="none-such") == 0


def test_verify_in_worker_processes_gives_the_same_report(
    ledger: Store, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams shared out by id ranges to spawned workers give exactly the report of one
    process: same problems, in the same order, tampering spread over several streams."""
    import time

    import ledger.verify as verify_module

    spread_tampering(ledger, store_url, tmp_path)
    alone = verify(ledger, workers=1).as_json()
    assert {p["kind"] for p in alone["problems"]} >= {
        "missing_event", "chain_broken", "orphan_stream", "missing_stream"}

    here = 0
    in_process = verify_module.verify_range

    def slowed(*args: object, **kwargs: object) -> VerifyReport:  # counts parts run here
        nonlocal here
        here += 1
        time.sleep(0.25)  # leaves the workers time to start and take parts
        return in_process(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "EVENTS_PER_WORKER", 1)  # a tiny log still shares
    monkeypatch.setattr(verify_module, "verify_range", slowed)
    assert verify(ledger, workers=3).as_json() == alone
    parts = 3 * verify_module.PARTS_PER_WORKER
    assert here < parts  # the workers ran some of the ranges
    assert verify(ledger, tenant=TENANT, workers=3).as_json() == verify(
        ledger, tenant=TENANT, workers=1).as_json()


@pytest.mark.parametrize("trace", [None, TRACE])
def test_writers_appending_during_verify_are_not_taken_for_tampering(
        ledger: Store, trace: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer appends to the verified trace and starts a new one after verify
    has begun reading: the report is clean and covers what was there when it began."""
    import ledger.verify as verify_module
    from ledger.writer import TraceWriter

    checks = verify_module._verify_streams

    def append_first(*args: object) -> VerifyReport:
        with Store.open(ledger.url, migrate=False) as other, \
                TraceWriter(other, tenant=TENANT) as w:
            w.record(TRACE, "EXEC_NEXT", {}, agent_owner="agent-0", executed_by="agent-0")
            w.record("late-trace", "EXEC_START", {}, agent_owner="agent-0",
                     executed_by="agent-0")
        return checks(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "_verify_streams", append_first)
    report = verify(ledger, tenant=TENANT if trace else None, trace_id=trace)
    assert report.ok, report.problems
    assert report.events == (PER_TRACE if trace else TRACES * PER_TRACE)
    monkeypatch.undo()
    after = verify(ledger)
    assert after.ok and after.events == TRACES * PER_TRACE + 2
