"""A stored record altered into valid JSON of another shape never stops a command.

Such a record (a ``null`` event, a list for a payload, an attempt beyond 64 bits, a
record naming another tenant, trace or seq) is as unreadable as one whose bytes are not JSON
(``test_unreadable_records.py``): the views set it aside and say so, readers of its
stream stop with exit 4 naming it, and ingest rejects the events that would extend
its trace, storing the rest. Before, one such record stopped every projection of the
store at it, for every tenant, and ``trace show`` crashed. Every test runs on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb
from clirun import run, run_json

from ledger import chain
from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import synthetic_lines

TENANT, TRACE, OTHER = "tenant-001", "syn-1-000000003", "tenant-000"
SID = chain.trace_stream_id(TENANT, TRACE)
EVENT_PROJECTIONS = {"memory", "failures", "attribution", "analytics"}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def alter(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = record
        for key in parents:
            target = target[key]
        target[last] = value
    return alter


# (seq of the trace, how its record is altered): seq 3 and 6 are TOOL_EXEC, 4 and 7
# memory writes, 5 a REASONER_ACTION
ALTERATIONS = {
    "event null": (5, _set("event", None)),
    "memory write's event null": (7, _set("event", None)),
    "payload a list": (5, _set("payload", [1, 2])),
    "tool a number": (6, _set("payload.tool", 5)),
    "attempt beyond 64 bits": (6, _set("payload.attempt", 2**70)),
    "ts not a time": (6, _set("ts", "yesterday")),
    "memory key a list": (7, _set("payload.key", ["k"])),
    "memory value not I-JSON": (7, _set("payload.value", 2**60)),
    "a NUL in the executor": (6, _set("executed_by", "a\u0000b")),
    "event true": (6, _set("event", True)),
    "the ledger's memory hash a list": (7, _set("ledger_memory_hash", [])),
    "attempt a string with a NUL": (6, _set("payload.attempt", "a\u0000b")),
}
ALTERED = pytest.mark.parametrize("how", list(ALTERATIONS))
SET_ASIDE = pytest.mark.parametrize("how", [h for h in ALTERATIONS
                                            if h != "memory value not I-JSON"])
"""Alterations the views set aside, alike on SQLite and PostgreSQL: those a projection
cannot fold, and those whose rows would not fit their columns (a number for a tool
name, a list for a memory key, a NUL), which each backend took differently before
(``projections/row_types.py``). A memory value beyond I-JSON's range gives a row that
fits, and is folded as it reads on both: checking every record first cost a third of
a rebuild (see docs/VERIFY.md)."""


@pytest.fixture
def ledger(four_traces: str) -> str:
    """Four synthetic traces of ten events in two tenants; views not yet built."""
    return four_traces


def alter(url: str, how: str) -> int:
    """Alter one record of TRACE as ``ALTERATIONS[how]`` says; return its seq."""
    seq, change = ALTERATIONS[how]
    record = json.loads(rawdb.get_state(url, SID, seq))
    change(record)
    rawdb.set_state(url, SID, seq, json.dumps(record).encode())
    return seq


@SET_ASIDE
def test_views_set_the_record_aside_on_rebuild_and_say_so(ledger: str, how: str) -> None:
    clean = run_json(ledger, "failures", "--tenant", OTHER)
    seq = alter(ledger, how)
    assert run_json(ledger, "projections", "rebuild")["entries_read"] == 40
    for args in (["failures", "--tenant", TENANT], ["audit", "writes", "--tenant", TENANT],
                 ["stats", "fallbacks", "--tenant", TENANT, "--by", "tool"],
                 ["memory", "history", "--tenant", TENANT, "--trace", TRACE]):
        code, _, err = run(ledger, *args)
        assert code == 0, (args, err)
        assert f"trace {TRACE!r} seq {seq}" in err and "cannot be read" in err, args
    assert run_json(ledger, "failures", "--tenant", OTHER) == clean
    status = {s["name"]: s["unreadable"] for s in run_json(ledger, "projections", "status")}
    assert status == {name: int(name in EVENT_PROJECTIONS) for name in status}
    findings = run_json(ledger, "audit", "findings", "--tenant", TENANT, "--kind",
                        "unreadable_record")
    assert [(f["trace_id"], f["seq"]) for f in findings] == [(TRACE, seq)]
    assert findings[0]["detail"].startswith("the stored record cannot be read")


@pytest.mark.parametrize("how", ["event null", "attempt beyond 64 bits"])
def test_views_built_over_the_record_for_the_first_time_set_it_aside(
        ledger: str, how: str) -> None:
    seq = alter(ledger, how)
    code, _, err = run(ledger, "failures", "--tenant", TENANT)
    assert code == 0 and f"seq {seq}" in err, err
    status = {s["name"]: s["unreadable"] for s in run_json(ledger, "projections", "status")}
    assert {n for n, count in status.items() if count} == EVENT_PROJECTIONS


def test_restoring_the_record_and_rebuilding_gives_the_views_back(ledger: str) -> None:
    writes = run_json(ledger, "audit", "writes", "--tenant", TENANT)
    seq, _ = ALTERATIONS["memory write's event null"]
    original = rawdb.get_state(ledger, SID, seq)
    alter(ledger, "memory write's event null")
    run_json(ledger, "projections", "rebuild")
    assert run_json(ledger, "audit", "writes", "--tenant", TENANT) != writes
    rawdb.set_state(ledger, SID, seq, original)
    run_json(ledger, "projections", "rebuild")
    assert run_json(ledger, "audit", "writes", "--tenant", TENANT) == writes
    assert all(s["unreadable"] == 0 for s in run_json(ledger, "projections", "status"))


@ALTERED
def test_trace_show_names_the_record(ledger: str, how: str) -> None:
    seq = alter(ledger, how)
    for args in (["trace", "show", TRACE, "--tenant", TENANT],
                 ["trace", "show", TRACE, "--tenant", TENANT, "--json"]):
        code, _, err = run(ledger, *args)
        assert code == 4, (args, err)
        assert f"tenant {TENANT!r} trace {TRACE!r} seq {seq}" in err
        assert "Internal error" not in err


def test_a_record_naming_another_trace_is_named_by_its_readers(ledger: str) -> None:
    record = json.loads(rawdb.get_state(ledger, SID, 5))
    record["tenant"] = OTHER
    rawdb.set_state(ledger, SID, 5, json.dumps(record).encode())
    code, _, err = run(ledger, "trace", "show", TRACE, "--tenant", TENANT)
    assert code == 4, err
    assert f"names tenant {OTHER!r}" in err and "not where it is stored" in err


@pytest.mark.parametrize(("field", "value"), [("tenant", OTHER), ("trace_id", "another"),
                                               ("seq", 8)])
def test_a_record_naming_another_stream_stays_out_of_the_views(
        ledger: str, field: str, value: Any) -> None:
    """Else its rows would land in the trace, or the tenant, it names."""
    others = {t: run_json(ledger, "audit", "writes", "--tenant", t) for t in (OTHER, TENANT)}
    record = json.loads(rawdb.get_state(ledger, SID, 7))  # a memory write
    record[field] = value
    rawdb.set_state(ledger, SID, 7, json.dumps(record).encode())
    run_json(ledger, "projections", "rebuild")
    assert run_json(ledger, "audit", "writes", "--tenant", OTHER) == others[OTHER]
    writes = run_json(ledger, "audit", "writes", "--tenant", TENANT)
    assert writes == [w for w in others[TENANT] if (w["trace_id"], w["seq"]) != (TRACE, 7)]
    findings = run_json(ledger, "audit", "findings", "--tenant", TENANT, "--kind",
                        "unreadable_record")
    assert [(f["trace_id"], f["seq"]) for f in findings] == [(TRACE, 7)]
    assert "not where it is stored" in findings[0]["detail"]


def test_replay_names_the_record(ledger: str, tmp_path: Path) -> None:
    policy = tmp_path / "retry.json"
    policy.write_text(json.dumps({"retry": {"max_attempts": 3}}))
    seq = alter(ledger, "tool a number")
    code, _, err = run(ledger, "replay", TRACE, "--tenant", TENANT, "--policy", str(policy),
                       "--from", "3")
    assert code == 4, err
    assert f"trace {TRACE!r} seq {seq}" in err


def test_ingest_rejects_what_would_extend_the_trace_and_stores_the_rest(
        ledger: str, tmp_path: Path) -> None:
    """Its memory cannot be known without the record: nothing is appended to it."""
    seq = alter(ledger, "memory key a list")
    last = json.loads(rawdb.get_state(ledger, SID, 10))
    more = [{**chain.wire_part(last), "seq": n, "event": "EXEC_NEXT", "payload": {},
             "memory_hash": None} for n in (11, 12)]
    more.insert(1, {**chain.wire_part(last), "trace_id": "another", "seq": 1,
                    "event": "EXEC_START", "payload": {}, "memory_hash": None})
    src, rejects = tmp_path / "more.jsonl", tmp_path / "rejects.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in more))
    code, out, err = run(ledger, "ingest", str(src), "--reject-file", str(rejects), "--json")
    assert code == 3, err
    assert (json.loads(out)["accepted"], json.loads(out)["rejected"]) == (1, 2)
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(e["line"], e["seq"]) for e in entries] == [(1, 11), (3, 12)]  # 12: not a gap
    for entry in entries:
        assert entry["reason"].startswith(
            f"cannot append to tenant {TENANT!r} trace {TRACE!r} seq {seq}")


def test_the_python_api_raises_the_unreadable_record(store: Store, ledger: str) -> None:
    from ledger.errors import UnreadableRecordError
    from ledger.writer import TraceWriter

    alter(ledger, "payload a list")
    writer = TraceWriter(store, tenant=TENANT)
    with pytest.raises(UnreadableRecordError, match=f"trace {TRACE!r} seq 5"):
        writer.record(TRACE, "EXEC_NEXT", {}, agent_owner="planner", executed_by="planner")


def test_grants_name_an_altered_grant_record(ledger: str) -> None:
    code, _, err = run(ledger, "grants", "add", "--tenant", TENANT, "--agent", "critic",
                         "--scope", "memory/planner", "--json")
    assert code == 0, err
    sid = chain.grants_stream_id(TENANT)
    record = json.loads(rawdb.get_state(ledger, sid, 1))
    record["valid_from"] = "not a time"
    rawdb.set_state(ledger, sid, 1, json.dumps(record).encode())
    for args in (["grants", "list", "--tenant", TENANT],
                 ["grants", "add", "--tenant", TENANT, "--agent", "x", "--scope", "memory/y"]):
        code, _, err = run(ledger, *args)
        assert code == 4, (args, err)
        assert "seq 1" in err and "valid_from" in err
    code, _, err = run(ledger, "projections", "rebuild", "--json")
    assert code == 0, err
    status = {s["name"]: s["unreadable"] for s in run_json(ledger, "projections", "status")}
    assert status["attribution"] == 1


@pytest.fixture
def terminated(store: Store, store_url: str, tmp_path: Path) -> str:
    """Twenty synthetic traces of twenty events, one tenant; syn-1-000000000 ends
    terminated after a memory write at seq 7."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(synthetic_lines(400, events_per_trace=20, tenants=1)))
    ingest(store, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"))
    return store_url


def test_replay_and_backtest_name_a_memory_write_altered_to_another_value(
        terminated: str, tmp_path: Path) -> None:
    """The record reads well, but the memory the views fold from it no longer hashes
    to what the ledger recorded: replay stops (exit 4), backtest leaves the trace out."""
    trace, sid = "syn-1-000000000", chain.trace_stream_id("tenant-000", "syn-1-000000000")
    record = json.loads(rawdb.get_state(terminated, sid, 7))
    assert record["event"] == "CALLBACK_MEMORY_WRITE"
    record["payload"]["value"] = {"altered": True}
    rawdb.set_state(terminated, sid, 7, json.dumps(record).encode())
    policy = tmp_path / "retry.json"
    policy.write_text(json.dumps({"retry": {"max_attempts": 3}}))
    code, _, err = run(terminated, "replay", trace, "--tenant", "tenant-000", "--policy",
                       str(policy), "--from", "12")
    assert code == 4, err
    assert f"trace {trace!r} seq 7: memory of memory/" in err and "disagrees" in err
    code, out, err = run(terminated, "backtest", "--tenant", "tenant-000", "--policy",
                         str(policy), "--json")
    assert code == 4, err
    report = json.loads(out)
    assert [(u["trace_id"], u["seq"]) for u in report["unreadable"]] == [(trace, 7)]
    assert report["terminated_traces"] >= 1


def test_memory_show_names_a_memory_view_left_short_by_an_unreadable_write(
        ledger: str) -> None:
    """The write at seq 4 is left out, so the state the view folds at seq 7 no longer
    hashes to what the ledger recorded there: exit 4, naming it, never exit 1."""
    record = json.loads(rawdb.get_state(ledger, SID, 4))
    del record["event"]
    rawdb.set_state(ledger, SID, 4, json.dumps(record).encode())
    run_json(ledger, "projections", "rebuild")
    scope = ["--scope", "memory/researcher"]  # where both writes are
    for args in (["memory", "show", "--tenant", TENANT, "--trace", TRACE, *scope],
                 ["memory", "diff", "--tenant", TENANT, "--trace", TRACE, *scope, "--from",
                  "1", "--to", "10", "--json"]):
        code, _, err = run(ledger, *args)
        assert code == 4, (args, err)
        assert f"trace {TRACE!r} seq 7: the memory of memory/" in err and "disagrees" in err
        assert "agentledger verify" in err


def test_the_stored_event_model_has_the_fields_the_ledger_writes() -> None:
    """``records.StoredEvent`` declares again what ``chain.event_record`` writes: tied here."""
    from ledger.events import WIRE_FIELDS
    from ledger.records import StoredEvent

    written = chain.event_record(dict.fromkeys(WIRE_FIELDS), ledger_memory_hash="h",
                                 prev_hash="p")
    assert list(StoredEvent.model_fields) == list(written)


@pytest.fixture
def replayed(store: Store, ledger: str) -> tuple[str, str]:
    """The ledger and a replay of TRACE stored through the library with the least of
    a link ``write_replay`` takes (no policy, statuses or sources)."""
    from ledger.replays import source_hash_before, write_replay

    name = write_replay(store, {
        "tenant": TENANT, "source_trace_id": TRACE, "fork_seq": 3,
        "source_prev_hash": source_hash_before(store, TENANT, TRACE, 3)}, [])
    return ledger, name


def test_a_replay_with_the_least_of_a_link_is_shown(replayed: tuple[str, str]) -> None:
    ledger, name = replayed
    for args in (["replay", "show", name, "--tenant", TENANT],
                 ["replay", "list", "--tenant", TENANT]):
        code, out, err = run(ledger, *args)
        assert code == 0, (args, err)
        assert "? -> ?" in out or "original ? -> replay ?" in out


@pytest.mark.parametrize(("field", "value"), [
    ("fork_seq", 2**70), ("fork_seq", {"a": 1}), ("source_trace_id", None), ("kind", "x"),
    ("recorded_at", "yesterday")])
def test_an_altered_replay_link_is_named_not_crashed_on(
        replayed: tuple[str, str], field: str, value: Any) -> None:
    ledger, name = replayed
    sid = chain.replay_stream_id(TENANT, name)
    link = json.loads(rawdb.get_state(ledger, sid, 1))
    link[field] = value
    rawdb.set_state(ledger, sid, 1, json.dumps(link).encode())
    for args in (["replay", "show", name, "--tenant", TENANT, "--json"],
                 ["replay", "list", "--tenant", TENANT]):
        code, _, err = run(ledger, *args)
        assert code == 4, (args, err)
        assert f"trace {name!r} seq 1" in err
    code, out, err = run(ledger, "verify", "--json")
    assert code == 4, err
    kinds = {(p["trace_id"], p["seq"], p["kind"]) for p in json.loads(out)["problems"]}
    assert (name, 1, "unreadable_record") in kinds
