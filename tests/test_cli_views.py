"""The read-model commands through click's CliRunner, on both backends.

projections status|rebuild|run, memory show|diff|history, failures, audit
writes|findings|export and stats fallbacks|retries|failures|unknown-callbacks: their
--json fields, human output, exit codes, the export files, and tenant isolation.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import resource
import signal
import time
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
import rawdb
from clirun import run, run_json, run_process

from ledger import chain
from ledger.cli.main import main
from ledger.timestamps import normalize_ts
from ledger.workload import demo_bad_lines, demo_events

# Tenant "beta" holds the same traces as "acme" (same trace ids), with other names.
BETA_SWAPS = ((b'"acme"', b'"beta"'), (b"planner", b"pilot"), (b"researcher", b"scout"),
              (b"rate limited", b"throttled"))
ACME_MARKS = ("acme", "planner", "researcher", "rate limited")
BETA_MARKS = ("beta", "pilot", "scout", "throttled")

WRITE_FIELDS = {"tenant", "trace_id", "seq", "ts", "scope", "key", "op", "executed_by",
                "agent_owner", "cross_agent", "authorized", "basis"}


def hook_events() -> list[dict[str, Any]]:
    """An acme trace whose runtime emits CALLBACK_* subtypes the contract does not name."""
    steps = [("EXEC_START", "planner"), ("CALLBACK_CACHE_HIT", "planner"),
             ("CALLBACK_CACHE_HIT", "researcher"), ("CALLBACK_GUARDRAIL", "planner"),
             ("CALLBACK_SUCCESS", "planner")]
    return [{"trace_id": "cache-hooks", "seq": seq, "event": event, "tenant": "acme",
             "ts": f"2026-11-1{6 + seq // 4}T23:5{seq}:00Z", "agent_owner": "planner",
             "executed_by": by, "payload": {}} for seq, (event, by) in enumerate(steps, 1)]


def stored_events() -> list[dict[str, Any]]:
    """What the ``files`` fixture's demo file holds, its bad lines aside."""
    return demo_events() + hook_events()


def beta_events() -> list[dict[str, Any]]:
    """acme's events (first of each seq) renamed into tenant beta, without runtime hashes."""
    seen, out = set(), []
    for e in stored_events():
        if e["tenant"] != "acme" or (e["trace_id"], e["seq"]) in seen:
            continue
        seen.add((e["trace_id"], e["seq"]))
        raw = orjson.dumps({**e, "memory_hash": None})
        for old, new in BETA_SWAPS:
            raw = raw.replace(old, new)
        out.append(orjson.loads(raw))
    return out


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


def ingest(url: str, path: str, tmp_path: Path, *extra: str) -> None:
    code, _, err = run(url, "ingest", path, "--reject-file", str(tmp_path / "r.jsonl"), *extra)
    assert code == 0, err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    demo = write_jsonl(tmp_path / "demo.jsonl", stored_events())
    with open(demo, "ab") as fh:  # with a conflicting rewrite of an acme event, and junk
        fh.write(b"".join(demo_bad_lines()))
    return {"demo": demo,
            "beta": write_jsonl(tmp_path / "beta.jsonl", beta_events())}


@pytest.fixture
def loaded(store_url: str, files: dict[str, str], tmp_path: Path) -> str:
    """A store holding the demo workload (acme, globex) and tenant beta."""
    code, _, err = run(store_url, "ingest", files["demo"], files["beta"], "--reject-file",
                       str(tmp_path / "r.jsonl"))
    assert code == 3, err  # the bad lines are rejected, the rest stored
    return store_url


def sibling_url(url: str) -> str:
    """Another empty store beside ``url`` (a second file or schema)."""
    if rawdb.is_postgres(url):
        return url.replace("?schema=", "?schema=b")
    return url.replace("ledger.db", "other.db")


# -- projections ---------------------------------------------------------------------

def test_projections_status_after_ingest_shows_no_lag(loaded: str) -> None:
    """status lists every projection, caught up with the log by the ingest."""
    rows = run_json(loaded, "projections", "status")
    assert [r["name"] for r in rows] == ["memory", "failures", "attribution", "analytics",
                                         "findings"]
    assert set(rows[0]) == {"name", "description", "version", "built_version", "position",
                            "log_head", "lag", "rebuild_needed", "unreadable"}
    assert all(r["lag"] == 0 and r["position"] == r["log_head"] > 0 for r in rows)
    code, out, _ = run(loaded, "projections", "status")
    assert code == 0 and out.startswith("name") and "attribution" in out


def test_ingest_no_projections_leaves_a_lag_that_run_once_clears(store_url: str,
                                                                 files: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """--no-projections skips the views; `projections run --once` catches them up."""
    ingest(store_url, files["beta"], tmp_path, "--no-projections")
    assert all(r["lag"] > 0 for r in run_json(store_url, "projections", "status"))
    done = run_json(store_url, "projections", "run", "--once")
    assert done["entries_read"] == done["log_head"] > 0
    assert all(r["lag"] == 0 for r in run_json(store_url, "projections", "status"))
    code, out, _ = run(store_url, "projections", "run", "--once")
    assert code == 0 and out.startswith("Up to date: 0 log entries read")


def test_read_commands_catch_up_before_answering(store_url: str, files: dict[str, str],
                                                 tmp_path: Path) -> None:
    """A query after an ingest without projections still sees everything stored."""
    ingest(store_url, files["beta"], tmp_path, "--no-projections")
    rows = run_json(store_url, "failures", "--tenant", "beta")
    assert len(rows) == sum(1 for e in beta_events() if _is_failure(e))


def test_projections_run_follows_until_interrupted(store_url: str, files: dict[str, str],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --once it catches up, then polls; Ctrl-C is exit 130 with batches kept."""
    ingest(store_url, files["beta"], tmp_path, "--no-projections")

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    code, out, err = run(store_url, "projections", "run", "--interval", "0.1", "--json")
    assert code == 130 and "Interrupted" in err
    assert json.loads(out.splitlines()[0])["entries_read"] > 0
    assert all(r["lag"] == 0 for r in run_json(store_url, "projections", "status"))


def test_projections_rebuild_replays_from_zero(loaded: str) -> None:
    """rebuild NAME drops that projection and reads the whole log again; answers unchanged."""
    before = run_json(loaded, "failures", "--tenant", "acme")
    done = run_json(loaded, "projections", "rebuild", "failures")
    assert done["rebuilt"] == ["failures"] and done["entries_read"] == done["log_head"]
    assert run_json(loaded, "failures", "--tenant", "acme") == before
    code, out, _ = run(loaded, "projections", "rebuild")
    assert code == 0 and out.startswith("Rebuilt memory, failures, attribution")


def test_projections_rebuild_unknown_name_exits_2(loaded: str) -> None:
    """An unknown projection name is a usage error naming it."""
    code, _, err = run(loaded, "projections", "rebuild", "nope")
    assert code == 2 and err.startswith("Error: unknown projection 'nope'")


# -- memory --------------------------------------------------------------------------

def test_memory_show_json_fields_and_at(loaded: str) -> None:
    """memory show gives the scope's state after --at (default: the last event)."""
    last = run_json(loaded, "memory", "show", "--tenant", "acme", "--trace", "budget-review")
    assert set(last) == {"tenant", "trace_id", "scope", "seq", "state", "memory_hash"}
    assert last["scope"] == "memory/planner" and last["seq"] == 16
    assert set(last["state"]) == {"plan", "spend"}
    early = run_json(loaded, "memory", "show", "--tenant", "acme", "--trace", "budget-review",
                     "--at", "10")
    assert set(early["state"]) == {"plan"} and early["memory_hash"] != last["memory_hash"]
    code, out, _ = run(loaded, "memory", "show", "--tenant", "acme", "--trace", "budget-review")
    assert code == 0 and "scope memory/planner" in out and "spend" in out


def test_memory_diff_json_fields(loaded: str) -> None:
    """memory diff lists keys added, removed and changed between two events."""
    d = run_json(loaded, "memory", "diff", "--tenant", "acme", "--trace", "budget-review",
                 "--from", "6", "--to", "16")
    assert set(d) == {"tenant", "trace_id", "scope", "from_seq", "to_seq", "added",
                      "removed", "changed"}
    assert list(d["added"]) == ["spend"] and d["removed"] == {} and d["changed"] == {}
    code, out, _ = run(loaded, "memory", "diff", "--tenant", "acme", "--trace",
                       "budget-review", "--from", "6", "--to", "16")
    assert code == 0 and "+ spend:" in out


def test_memory_history_names_who_wrote_each_version(loaded: str) -> None:
    """memory history lists every write in seq order with its writer."""
    rows = run_json(loaded, "memory", "history", "--tenant", "acme", "--trace",
                    "budget-review")
    assert [(r["seq"], r["key"], r["executed_by"]) for r in rows] == [
        (6, "plan", "planner"), (15, "spend", "researcher")]
    assert set(rows[0]) == {"tenant", "trace_id", "scope", "seq", "ts", "key", "op", "value",
                            "memory_hash", "executed_by", "agent_owner"}
    code, out, _ = run(loaded, "memory", "history", "--tenant", "acme", "--trace",
                       "budget-review")
    assert code == 0 and "researcher" in out


@pytest.mark.parametrize("command", ["show", "history"])
def test_memory_of_an_unknown_trace_exits_5(loaded: str, command: str) -> None:
    """A trace the tenant does not have (even if another tenant does) is exit 5."""
    code, _, err = run(loaded, "memory", command, "--tenant", "globex", "--trace",
                       "budget-review")
    assert code == 5 and err.strip() == "Error: no trace 'budget-review' in tenant 'globex'"


def test_memory_diff_seq_outside_the_trace_exits_2(loaded: str) -> None:
    """--to beyond the trace's last event is a usage error naming the option."""
    code, _, err = run(loaded, "memory", "diff", "--tenant", "acme", "--trace",
                       "budget-review", "--from", "1", "--to", "99")
    assert code == 2 and "--to 99" in err


# -- failures ------------------------------------------------------------------------

def _is_failure(e: dict[str, Any]) -> bool:
    from ledger.payloads import is_failure_point

    return is_failure_point(e["event"], e["payload"])


def test_failures_json_fields_and_filters(loaded: str) -> None:
    """failures lists failure points with the documented fields, filtered and limited."""
    rows = run_json(loaded, "failures", "--tenant", "acme")
    assert {"tenant", "trace_id", "seq", "ts", "event", "tool", "executed_by",
            "reason"} <= set(rows[0])
    searched = run_json(loaded, "failures", "--tenant", "acme", "--tool", "search")
    assert searched and all(r["tool"] == "search" for r in searched)
    assert len(searched) < len(rows)
    assert len(run_json(loaded, "failures", "--tenant", "acme", "--limit", "3")) == 3
    code, out, _ = run(loaded, "failures", "--tenant", "acme", "--event", "EXEC_TERMINATED")
    assert code == 0 and out.startswith("ts") and "EXEC_TERMINATED" in out


def test_failures_bad_since_exits_2(loaded: str) -> None:
    """An unparseable --since is a usage error naming the option."""
    code, _, err = run(loaded, "failures", "--tenant", "acme", "--since", "last week")
    assert code == 2 and "--since 'last week'" in err


@pytest.mark.parametrize("command", [
    ["failures"], ["audit", "writes"], ["stats", "fallbacks"], ["stats", "retries"],
    ["stats", "failures"], ["stats", "unknown-callbacks"], ["audit", "export", "w.jsonl"]],
    ids=lambda c: " ".join(c[:2]))
def test_a_window_whose_since_is_after_its_until_exits_2(loaded: str, tmp_path: Path,
                                                         command: list[str]) -> None:
    """Event windows are ``since <= ts <= until``: bounds the wrong way round hold
    nothing, most likely swapped, and say so (exit 2) instead of an empty answer; a
    window of one day (both bounds the same date) is fine."""
    if command[-1] == "w.jsonl":
        command = [*command[:-1], str(tmp_path / "w.jsonl")]
    code, _, err = run(loaded, *command, "--tenant", "acme", "--since", "2026-11-19",
                       "--until", "2026-11-18")
    assert code == 2 and err.strip() == (
        "Error: --since '2026-11-19' is after --until '2026-11-18': the window holds nothing")
    code, _, err = run(loaded, *command, "--tenant", "acme", "--since", "2026-11-18",
                       "--until", "2026-11-18")
    assert code == 0, err


# -- audit ---------------------------------------------------------------------------

def test_audit_writes_json_and_csv_agree(loaded: str) -> None:
    """audit writes --json has the documented fields; --csv has the same rows."""
    rows = run_json(loaded, "audit", "writes", "--tenant", "acme")
    assert set(rows[0]) == WRITE_FIELDS
    bad = [r for r in rows if not r["authorized"]]
    assert [(r["trace_id"], r["seq"], r["basis"]) for r in bad] == [
        ("budget-review", 15, None)]
    code, out, _ = run(loaded, "audit", "writes", "--tenant", "acme", "--csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(parsed) == len(rows)
    assert parsed[0] == {k: "" if v is None else json.dumps(v) if not isinstance(v, str)
                         else v for k, v in rows[0].items()}
    code, out, _ = run(loaded, "audit", "writes", "--tenant", "acme", "--by", "researcher")
    assert code == 0 and "UNAUTHORIZED" in out


def test_csv_text_a_spreadsheet_would_run_is_quoted_and_json_keeps_it(
    store_url: str, tmp_path: Path
) -> None:
    """Trace ids, agents and keys that begin like a formula (``=``, ``+``, ``-``,
    ``@``) get a leading ``'`` in every CSV output, so opening the file runs nothing;
    the JSON output keeps them verbatim."""
    from ledger.store import Store
    from ledger.writer import TraceWriter

    trace, agent, key = "=HYPERLINK(\"http://x\")", "@agent", "-key"
    with Store.open(store_url) as store, TraceWriter(store, tenant="t") as writer:
        writer.record(trace, "CALLBACK_MEMORY_WRITE", {"key": key, "value": "+1"},
                      agent_owner="owner", executed_by=agent, write_scope="memory/owner")
    [row] = run_json(store_url, "audit", "writes", "--tenant", "t")
    assert (row["trace_id"], row["executed_by"], row["key"]) == (trace, agent, key)
    code, out, _ = run(store_url, "audit", "writes", "--tenant", "t", "--csv")
    [cells] = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and (cells["trace_id"], cells["executed_by"], cells["key"]) == (
        "'" + trace, "'" + agent, "'" + key)
    export = tmp_path / "t.csv"
    assert run(store_url, "audit", "export", str(export), "--tenant", "t")[0] == 0
    with export.open(newline="") as fh:
        [event] = [r for r in csv.DictReader(fh) if r["type"] == "event"]
    assert (event["trace_id"], event["executed_by"]) == ("'" + trace, "'" + agent)
    assert json.loads(event["payload"]) == {"key": key, "value": "+1"}


def test_terminal_output_shows_control_characters_instead_of_obeying_them(
    store_url: str,
) -> None:
    """Escape sequences, carriage returns, bells and bidirectional overrides in what
    agents recorded are printed as escapes in every table and timeline (a reason
    cannot clear the line it is on, retitle the terminal or reverse text); the JSON
    outputs keep them verbatim."""
    from ledger.store import Store
    from ledger.writer import TraceWriter

    agent, tool, reason = "a\x1b[31mRED", "t\x1b]0;pwned\x07", "boom\x1b[2K\rall good\u202e"
    with Store.open(store_url) as store, TraceWriter(store, tenant="t\x1bx") as writer:
        writer.record("tr", "TOOL_EXEC", {"tool": tool, "args": {}, "success": False,
                                          "error_reason": reason},
                      agent_owner=agent, executed_by=agent)
        writer.record("tr", "CALLBACK_MEMORY_WRITE", {"key": "k\r", "value": reason},
                      agent_owner=agent, executed_by=agent, write_scope=f"memory/{agent}")
    outputs = []
    for args in (["trace", "show", "tr"], ["trace", "list"], ["failures"], ["audit", "writes"],
                 ["memory", "show", "--trace", "tr"], ["memory", "history", "--trace", "tr"],
                 ["stats", "failures", "--by", "reason"], ["trace", "show", "none\x1b"]):
        code, out, err = run(store_url, *args, "--tenant", "t\x1bx")
        assert code in (0, 5), err
        outputs.append(out + err)
    for text in outputs:
        assert not any(c in text for c in "\x1b\r\x07\u202e"), text
    assert "\\x1b[31mRED" in outputs[0] and "\\x1b[2K\\rall good\\u202e" in outputs[0]
    [failure] = run_json(store_url, "failures", "--tenant", "t\x1bx")
    assert (failure["executed_by"], failure["reason"]) == (agent, reason)


def test_audit_writes_json_and_csv_together_exit_2(loaded: str) -> None:
    """--json and --csv are exclusive."""
    code, _, err = run(loaded, "audit", "writes", "--tenant", "acme", "--json", "--csv")
    assert code == 2 and err.strip() == "Error: choose one of --json and --csv"


def test_audit_findings_lists_every_kind(loaded: str) -> None:
    """audit findings: the ledger's conflict and mismatch plus the unauthorized write."""
    rows = run_json(loaded, "audit", "findings", "--tenant", "acme")
    assert {(r["trace_id"], r["seq"], r["kind"]) for r in rows} == {
        ("budget-review", 15, "unauthorized_write"), ("pricing-memo", 13, "memory_hash_mismatch"),
        ("q4-market-report", 11, "conflict")}
    assert set(rows[0]) == {"tenant", "trace_id", "seq", "kind", "detail", "at"}
    only = run_json(loaded, "audit", "findings", "--tenant", "acme", "--kind", "conflict")
    assert [r["kind"] for r in only] == ["conflict"]
    code, _, _ = run(loaded, "audit", "findings", "--tenant", "acme", "--kind", "typo")
    assert code == 2


def _export(url: str, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, stdout, err = run(url, "audit", "export", str(out), *args, "--json")
    assert code in (0, 4), err
    return code, json.loads(stdout)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_audit_export_jsonl_holds_the_window_with_hashes(loaded: str, tmp_path: Path) -> None:
    """The JSONL export: a header, every event in the window chained by hash, findings."""
    out = tmp_path / "acme.jsonl"
    code, summary = _export(loaded, out, "--tenant", "acme", "--since", "2026-11-18",
                            "--until", "2026-11-18")
    lines = _jsonl(out)
    header, events = lines[0], [x for x in lines if x["type"] == "event"]
    findings = [x for x in lines if x["type"] == "finding"]
    expected = {(e["trace_id"], e["seq"]) for e in stored_events() if e["tenant"] == "acme"
                and normalize_ts(e["ts"])[:10] == "2026-11-18"}
    assert code == 0 and summary["verified_ok"] is True and summary["events"] == len(events)
    assert {(e["trace_id"], e["seq"]) for e in events} == expected
    assert header["type"] == "header" and header["tenant"] == "acme"
    assert header["since"] == "2026-11-18T00:00:00.000000Z"
    assert header["counts"] == {"traces": summary["traces"], "events": len(events),
                                "findings": len(findings), "events_not_ok": 0}
    assert header["verification"]["ok"] is True
    assert all(e["verification"] == "ok" and e["tenant"] == "acme" for e in events)
    linked = [(a, b) for a, b in itertools.pairwise(events)
              if b["trace_id"] == a["trace_id"] and b["seq"] == a["seq"] + 1]
    assert linked and all(b["prev_hash"] == a["record_hash"] for a, b in linked)
    assert all(f["tenant"] == "acme" for f in findings)
    assert not list(tmp_path.glob(".acme.jsonl.*"))  # no temporary file left behind


def test_audit_export_csv_parses_back(loaded: str, tmp_path: Path) -> None:
    """The CSV export: documented columns, a header row, events with JSON payloads."""
    out = tmp_path / "acme.csv"
    code, summary = _export(loaded, out, "--tenant", "acme")
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert code == 0 and list(rows[0]) == [
        "type", "tenant", "trace_id", "seq", "event", "ts", "agent_owner", "executed_by",
        "write_scope", "memory_hash", "ledger_memory_hash", "prev_hash", "record_hash",
        "verification", "payload", "kind", "detail", "at"]
    header = json.loads(rows[0]["detail"])
    events = [r for r in rows if r["type"] == "event"]
    assert rows[0]["type"] == "header" and header["counts"]["events"] == len(events)
    assert len(events) == summary["events"] == len({(e["trace_id"], e["seq"]) for e in
                                                    stored_events() if e["tenant"] == "acme"})
    assert isinstance(json.loads(events[0]["payload"]), dict)
    assert {r["kind"] for r in rows if r["type"] == "finding"} == {
        "conflict", "memory_hash_mismatch", "unauthorized_write"}


@pytest.mark.parametrize("name", ["acme.jsonl", "acme.csv"])
def test_audit_export_to_a_gz_name_is_the_same_file_gzip_compressed(
        loaded: str, tmp_path: Path, name: str) -> None:
    """``OUT.jsonl.gz`` / ``OUT.csv.gz``: the export of that format, compressed, naming
    the uncompressed file inside; only when it was generated differs."""
    import gzip
    import re

    plain, packed = tmp_path / name, tmp_path / f"{name}.gz"
    assert _export(loaded, plain, "--tenant", "acme") == \
        (0, {**_export(loaded, packed, "--tenant", "acme")[1], "path": str(plain)})
    generated = re.compile(rb"(generated_at\W+)[0-9T:.Z-]+")
    assert generated.sub(rb"\1", gzip.decompress(packed.read_bytes())) == \
        generated.sub(rb"\1", plain.read_bytes())
    assert packed.read_bytes()[10:10 + len(name) + 1] == name.encode() + b"\0"  # FNAME
    assert not list(tmp_path.glob(f".{name}.gz.*"))


def test_audit_export_marks_a_tampered_row(loaded: str, tmp_path: Path) -> None:
    """An edited stored row shows as a non-ok verification in both formats, and exit 4."""
    sid = chain.trace_stream_id("acme", "budget-review")
    state = rawdb.get_state(loaded, sid, 15)
    rawdb.set_state(loaded, sid, 15, state.replace(b'"hits":6', b'"hits":7'))
    code, summary = _export(loaded, tmp_path / "t.jsonl", "--tenant", "acme")
    lines = _jsonl(tmp_path / "t.jsonl")
    status = {(x["trace_id"], x["seq"]): x["verification"] for x in lines
              if x["type"] == "event"}
    assert code == 4 and summary["verified_ok"] is False
    assert lines[0]["verification"]["ok"] is False
    assert status[("budget-review", 15)] == "ledger_memory_hash_mismatch"
    assert status[("budget-review", 16)].split(",")[0] == "chain_broken"
    assert sum(v != "ok" for v in status.values()) == summary["events_not_ok"] == 2
    code, out, _ = run(loaded, "audit", "export", str(tmp_path / "t.csv"), "--tenant", "acme")
    with (tmp_path / "t.csv").open(newline="") as fh:
        flagged = [(r["seq"], r["verification"]) for r in csv.DictReader(fh)
                   if r["type"] == "event" and r["verification"] != "ok"]
    assert code == 4 and flagged == [("15", status[("budget-review", 15)]),
                                     ("16", status[("budget-review", 16)])]
    assert out.endswith(" (ALTERED: 3 problem(s), 2 exported event(s) affected).\n"), out


def test_audit_export_says_so_when_an_edited_catalog_row_hides_a_trace(
        loaded: str, tmp_path: Path) -> None:
    """A trace's catalog row moved out of the window leaves the trace out of the export
    (traces are chosen by it), but the export's verification names the edit: exit 4."""
    sid = chain.trace_stream_id("acme", "budget-review")
    code, before = _export(loaded, tmp_path / "a.jsonl", "--tenant", "acme", "--since",
                           "2026-01-01")
    assert code == 0 and "budget-review" in {x.get("trace_id") for x in
                                             _jsonl(tmp_path / "a.jsonl")}
    for column in ("first_ts", "last_ts"):
        rawdb.set_catalog(loaded, sid, column, "2020-01-01T00:00:00.000000Z")
    code, summary = _export(loaded, tmp_path / "b.jsonl", "--tenant", "acme", "--since",
                            "2026-01-01")
    lines = _jsonl(tmp_path / "b.jsonl")
    assert code == 4 and summary["verified_ok"] is False
    assert summary["traces"] == before["traces"] - 1
    assert [(p["trace_id"], p["kind"]) for p in lines[0]["verification"]["problems"]] == [
        ("budget-review", "catalog_mismatch")]


def test_audit_export_holds_only_what_verify_checked(loaded: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An event another writer appends once verify has begun is not exported as if checked:
    the export stops, for each trace, at its length as listed before verification."""
    import projections.export
    from ledger.store import Store
    from ledger.writer import TraceWriter

    checks = projections.export.verify_scanned

    def append_first(*args: Any) -> Any:
        with Store.open(loaded, migrate=False) as other, TraceWriter(other, tenant="acme") as w:
            w.record("budget-review", "EXEC_NEXT", {"late": True}, agent_owner="planner",
                     executed_by="planner")
        return checks(*args)

    monkeypatch.setattr(projections.export, "verify_scanned", append_first)
    code, summary = _export(loaded, tmp_path / "a.jsonl", "--tenant", "acme")
    events = [x for x in _jsonl(tmp_path / "a.jsonl") if x["type"] == "event"]
    assert code == 0 and summary["verified_ok"] is True
    assert all(e["verification"] == "ok" and "late" not in e["payload"] for e in events)
    assert summary["events"] == len(events) == len(
        {(e["trace_id"], e["seq"]) for e in stored_events() if e["tenant"] == "acme"})
    monkeypatch.undo()
    code, summary = _export(loaded, tmp_path / "b.jsonl", "--tenant", "acme")
    assert code == 0 and summary["events"] == len(events) + 1


def test_audit_export_refuses_to_overwrite_without_force(loaded: str, tmp_path: Path) -> None:
    """An existing file is exit 2 and left as it was; --force replaces it."""
    out = tmp_path / "keep.jsonl"
    out.write_text("mine\n")
    code, _, err = run(loaded, "audit", "export", str(out), "--tenant", "acme")
    assert code == 2 and "pass --force" in err and out.read_text() == "mine\n"
    code, stdout, _ = run(loaded, "audit", "export", str(out), "--tenant", "acme", "--force")
    assert code == 0 and stdout.startswith("Wrote ") and _jsonl(out)[0]["type"] == "header"


def test_audit_export_of_a_tenant_with_no_streams_does_not_read_as_verified(
        loaded: str, tmp_path: Path) -> None:
    """A mistyped tenant gives an empty file, and says that nothing was verified rather
    than that every record verifies; --json counts the streams verified."""
    code, stdout, _ = run(loaded, "audit", "export", str(tmp_path / "a.jsonl"),
                          "--tenant", "acmee")
    assert code == 0 and "nothing to verify: tenant 'acmee' has no streams" in stdout
    assert "every record verifies" not in stdout
    code, summary = _export(loaded, tmp_path / "b.jsonl", "--tenant", "acmee")
    assert (code, summary["verified_streams"], summary["events"]) == (0, 0, 0)
    code, summary = _export(loaded, tmp_path / "c.jsonl", "--tenant", "acme",
                            "--since", "2030-01-01")  # streams, none in the window
    assert (code, summary["events"]) == (0, 0) and summary["verified_streams"] > 0
    code, stdout, _ = run(loaded, "audit", "export", str(tmp_path / "d.jsonl"),
                          "--tenant", "acme", "--since", "2030-01-01")
    assert code == 0 and "every record verifies" in stdout


@pytest.mark.parametrize("command", [["failures", "--since", "2030-01-01"],
                                     ["audit", "findings", "--trace", "none-such"],
                                     ["stats", "fallbacks", "--since", "2030-01-01"],
                                     ["trace", "list", "--since", "2030-01-01"]])
def test_an_empty_answer_for_a_tenant_with_no_traces_says_so_on_stderr(
        loaded: str, command: list[str]) -> None:
    """A mistyped tenant's empty answer comes with a warning (in both forms); a known
    tenant's empty answer comes with none."""
    for form in ([], ["--json"]):
        code, out, err = run(loaded, *command, "--tenant", "acmee", *form)
        assert (code, err) == (0, "warning: tenant 'acmee' has no traces in this store\n")
        assert (code, out, "") == run(loaded, *command, "--tenant", "acme", *form)


def test_audit_export_the_disk_refuses_names_the_file_and_changes_nothing(
    loaded: str, tmp_path: Path
) -> None:
    """A write refused mid-export (here a file size limit, as a full disk would) is
    exit 1 and one `Error:` line naming the file and the system's reason; the file
    there before keeps its content and no temporary file remains."""
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "keep.jsonl"
    out.write_text("mine\n")

    def limit_file_size() -> None:  # above SQLite's 32 kB index file, below the export
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process

    done = run_process(loaded, "audit", "export", str(out), "--tenant", "acme", "--force",
                       before=limit_file_size)
    assert (done.returncode, done.stderr) == (
        1, f"Error: cannot write {out} (File too large): no file was created or changed\n")
    assert out.read_text() == "mine\n" and list(out.parent.iterdir()) == [out]


def test_audit_export_other_extension_exits_2(loaded: str, tmp_path: Path) -> None:
    """Only .jsonl and .csv are export formats."""
    code, _, err = run(loaded, "audit", "export", str(tmp_path / "x.txt"), "--tenant", "acme")
    assert code == 2 and "must end in .jsonl or .csv" in err


def test_audit_export_into_a_missing_folder_exits_2_naming_it(loaded: str,
                                                             tmp_path: Path) -> None:
    """An export file in a folder that does not exist is a usage error, said as for a
    reject file or a SQLite store, before the tenant is read; nothing is created."""
    out = tmp_path / "none" / "x.jsonl"
    code, _, err = run(loaded, "audit", "export", str(out), "--tenant", "acme")
    assert (code, err) == (2, f"Error: export file {out}: no such folder {out.parent} "
                              "(create it first)\n")
    assert not out.parent.exists()


# -- stats ---------------------------------------------------------------------------

STAT_KEYS = {
    ("fallbacks", "tool"): {"tool"}, ("fallbacks", "pair"): {"tool", "fallback_tool"},
    ("fallbacks", "agent"): {"executed_by"}, ("fallbacks", "day"): {"day"},
    ("retries", "tool"): {"tool"}, ("retries", "agent"): {"executed_by"},
    ("retries", "day"): {"day"}, ("failures", "tool"): {"tool"},
    ("failures", "reason"): {"reason"}, ("failures", "agent"): {"executed_by"},
    ("unknown-callbacks", "event"): {"event"}, ("unknown-callbacks", "agent"): {"executed_by"},
    ("unknown-callbacks", "day"): {"day"},
}
STAT_VALUES = {"fallbacks": {"fallbacks", "recovered", "tool_execs", "rate"},
               "retries": {"retries", "recovered", "tool_execs", "rate"},
               "failures": {"failures", "share"},
               "unknown-callbacks": {"events", "traces", "first_ts", "last_ts"}}


def test_stats_json_rows_are_keyed_by_the_by_option(loaded: str) -> None:
    """Every stats command and --by gives rows of its key fields and numbers."""
    for (command, by), keys in STAT_KEYS.items():
        rows = run_json(loaded, "stats", command, "--tenant", "acme", "--by", by)
        assert rows, (command, by)
        assert keys | STAT_VALUES[command] <= set(rows[0]) <= keys | STAT_VALUES[command] | {
            "failed_execs", "tool_execs", "rate"}


def test_stats_fallbacks_by_tool_counts(loaded: str) -> None:
    """fallbacks by tool: counts, recoveries and the rate per call of the original tool."""
    rows = run_json(loaded, "stats", "fallbacks", "--tenant", "acme")
    search = next(r for r in rows if r["tool"] == "search")
    assert search["fallbacks"] == sum(
        1 for e in demo_events() if e["tenant"] == "acme" and e["event"] == "CALLBACK_FALLBACK"
        and e["payload"]["original_tool"] == "search")
    assert search["rate"] == search["fallbacks"] / search["tool_execs"]


def test_stats_unknown_callbacks_counts_each_subtype(loaded: str) -> None:
    """Each CALLBACK_* subtype the contract does not name: events, traces, first and last
    time; most first, by day in order; a window narrows it; none in another tenant."""
    rows = run_json(loaded, "stats", "unknown-callbacks", "--tenant", "acme")
    assert rows == [
        {"event": "CALLBACK_CACHE_HIT", "events": 2, "traces": 1,
         "first_ts": "2026-11-16T23:52:00.000000Z", "last_ts": "2026-11-16T23:53:00.000000Z"},
        {"event": "CALLBACK_GUARDRAIL", "events": 1, "traces": 1,
         "first_ts": "2026-11-17T23:54:00.000000Z", "last_ts": "2026-11-17T23:54:00.000000Z"}]
    days = run_json(loaded, "stats", "unknown-callbacks", "--tenant", "acme", "--by", "day")
    assert [(r["day"], r["events"]) for r in days] == [("2026-11-16", 2), ("2026-11-17", 1)]
    window = run_json(loaded, "stats", "unknown-callbacks", "--tenant", "acme",
                      "--since", "2026-11-16T23:53:00Z", "--until", "2026-11-17")
    assert [(r["event"], r["events"]) for r in window] == [("CALLBACK_CACHE_HIT", 1),
                                                           ("CALLBACK_GUARDRAIL", 1)]
    code, out, _ = run(loaded, "stats", "unknown-callbacks", "--tenant", "globex")
    assert code == 0 and out.strip() == "No unknown callback subtypes."
    code, out, _ = run(loaded, "stats", "unknown-callbacks", "--tenant", "acme", "--no-chart")
    assert out.splitlines()[0].split() == ["event", "events", "traces", "first_ts", "last_ts"]
    assert "2026-11-16T23:52:00.000000Z" in out


def test_stats_chart_draws_a_bar_per_row(loaded: str) -> None:
    """--chart adds a bar per row (the largest full width); --no-chart none."""
    code, out, _ = run(loaded, "stats", "retries", "--tenant", "acme", "--chart")
    body = out.splitlines()[2:]
    assert code == 0 and body and all("▏" in line or "█" in line for line in body)
    assert "█" * 24 in body[0]
    code, out, _ = run(loaded, "stats", "failures", "--tenant", "acme", "--no-chart")
    assert code == 0 and "█" not in out and out.startswith("tool")


@pytest.mark.parametrize(("command", "by"), [("fallbacks", "nope"), ("retries", "pair"),
                                             ("failures", "day")])
def test_stats_bad_by_exits_2(loaded: str, command: str, by: str) -> None:
    """A --by the statistic does not support is a usage error."""
    code, _, err = run(loaded, "stats", command, "--tenant", "acme", "--by", by)
    assert code == 2 and "--by" in err


# -- every command, every tenant -------------------------------------------------------

def _tenant_outputs(url: str, tenant: str, tmp_path: Path) -> dict[str, str]:
    """The output of every tenant-scoped read command, human and --json."""
    trace = ["--tenant", tenant, "--trace", "budget-review"]
    commands = [
        ["memory", "show", *trace], ["memory", "show", *trace, "--at", "12"],
        ["memory", "diff", *trace, "--from", "1", "--to", "16"], ["memory", "history", *trace],
        ["failures", "--tenant", tenant], ["audit", "writes", "--tenant", tenant],
        ["audit", "findings", "--tenant", tenant],
        *(["stats", c, "--tenant", tenant, "--by", b, "--chart"] for c, b in STAT_KEYS),
    ]
    outputs = {}
    for args in commands:
        for extra in ([], ["--json"]):
            code, out, err = run(url, *args, *extra)
            assert code == 0, (args, err)
            outputs[" ".join(args + extra)] = out
    code, out, _ = run(url, "audit", "writes", "--tenant", tenant, "--csv")
    outputs["audit writes --csv"] = out
    export = tmp_path / f"export-{len(list(tmp_path.iterdir()))}.jsonl"
    code, _, err = run(url, "audit", "export", str(export), "--tenant", tenant)
    assert code == 0, err
    outputs["export"] = "\n".join(line.decode() for line in export.read_bytes().splitlines()[1:])
    return outputs


def test_no_command_shows_rows_of_another_tenant(loaded: str, files: dict[str, str],
                                                 tmp_path: Path) -> None:
    """Same trace ids in two tenants: each tenant's answers are its data alone."""
    beta = _tenant_outputs(loaded, "beta", tmp_path)
    for name, out in beta.items():
        assert not [m for m in ACME_MARKS if m in out], name
    acme = _tenant_outputs(loaded, "acme", tmp_path)
    for name, out in acme.items():
        assert not [m for m in BETA_MARKS if m in out], name
    alone = sibling_url(loaded)
    ingest(alone, files["beta"], tmp_path)
    assert _tenant_outputs(alone, "beta", tmp_path) == beta


def test_every_new_command_has_json(loaded: str) -> None:
    """Each read-model command offers --json."""
    groups = ("projections", "memory", "audit", "stats")
    found = []
    for name, cmd in main.commands.items():
        subs = cmd.commands.items() if isinstance(cmd, click.Group) else [(None, cmd)]
        for sub, command in subs:
            if name in groups or name == "failures":
                found.append((name, sub))
                assert "as_json" in {p.name for p in command.params}, (name, sub)
    assert len(found) == 15


def test_demo_shows_the_projections(tmp_path: Path) -> None:
    """The demo ends with where fallbacks fire and the audit findings."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, out, _ = run(url, "demo", "--dir", str(tmp_path / "demo"))
    tail = out.split("== 6.")[1]
    assert code == 0 and "search" in tail and "█" in tail
    assert all(k in tail for k in ("unauthorized_write", "memory_hash_mismatch", "conflict"))


def test_export_header_never_shows_the_store_password() -> None:
    """The export's store URL has its password replaced by ***, however it is given."""
    from ledger.redact import redact_url

    assert redact_url("postgresql://al:s3cr@t@db:5432/ledger?schema=x") == (
        "postgresql://al:***@db:5432/ledger?schema=x")
    assert redact_url("postgresql://al@db/ledger?schema=x&password=s3cret&sslmode=require") == (
        "postgresql://al@db/ledger?schema=x&password=***&sslmode=require")
    assert redact_url("postgresql://al:s3cret@[db/x") == "postgresql://al:***@[db/x"
    assert redact_url("sqlite:///agentledger.db") == "sqlite:///agentledger.db"
