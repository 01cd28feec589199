"""An ingest records each attempted rewrite once, knowing the attempts a tenant's
findings stream holds: read a page at a time, kept in memory up to ``KEPT`` and on disk
past that, so a tenant with a conflict per event does not grow the ingest. On SQLite
and PostgreSQL."""

from __future__ import annotations

import gc
import glob
import os
import tempfile
from pathlib import Path

import orjson
import pytest

from ledger import chain, conflict_attempts
from ledger.conflict_attempts import AttemptSet, attempt, attempts_in
from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import synthetic_lines


def spill_files() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "agentledger-attempts-*")))


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conflict_attempts, "KEPT", 2)
    monkeypatch.setattr(conflict_attempts, "PAGE", 3)


def test_a_set_of_attempts_past_the_kept_ones_is_on_disk_and_goes_with_it(small: None) -> None:
    before = spill_files()
    attempts = AttemptSet()
    made = [attempt(f"t{k % 3}", k, {"n": k}) for k in range(10)]
    attempts.update(made[:2])
    assert spill_files() == before and made[0] in attempts and made[2] not in attempts
    attempts.update(made + made[:4])  # again: no error, nothing twice
    assert len(spill_files() - before) == 1
    assert all(m in attempts for m in made)
    assert attempt("t0", 0, {"n": 1}) not in attempts and attempt("t0", "0", {"n": 0}) not in (
        attempts)
    del attempts
    gc.collect()
    assert spill_files() == before


def test_only_readable_conflict_findings_are_attempts() -> None:
    conflict = {"finding": "conflict", "trace_id": "t", "seq": 2, "evidence": {"a": [1]}}
    states = [chain.encode(conflict), b"not json", chain.encode([1, 2]),
              chain.encode({**conflict, "finding": "memory_hash_mismatch"})]
    assert list(attempts_in(states)) == [attempt("t", 2, {"a": [1]})]


def _changed(lines: list[bytes], who: str) -> list[bytes]:
    return [orjson.dumps({**orjson.loads(line), "executed_by": who}) + b"\n" for line in lines]


def test_a_tenant_full_of_conflicts_records_each_attempt_once(
        store: Store, tmp_path: Path, small: None) -> None:
    lines = list(synthetic_lines(20, events_per_trace=10, tenants=1))
    files = {name: tmp_path / f"{name}.jsonl" for name in ("first", "changed", "other")}
    files["first"].write_bytes(b"".join(lines))
    files["changed"].write_bytes(b"".join(_changed(lines, "intruder")))
    files["other"].write_bytes(b"".join(_changed(lines, "another")))
    counts = []
    for name in ("first", "changed", "changed", "other", "changed", "other"):
        summary = ingest(store, [str(files[name])], reject_file=str(tmp_path / "r.jsonl"))
        counts.append((summary.accepted, summary.rejected, summary.findings))
    assert counts == [(20, 0, 0), (0, 20, 20), (0, 20, 0), (0, 20, 20), (0, 20, 0),
                      (0, 20, 0)]
    recorded = store.backend.read_stream(chain.findings_stream_id("tenant-000"))
    assert len(recorded) == 40 and len(set(attempts_in(state for _, state in recorded))) == 40
