"""The replay commands through click's CliRunner, on both backends.

``replay`` (run, list, show) and ``backtest`` over the demo workload: their --json
fields, what they store and what they never touch, the errors for bad policy and
outcome files, ``needs_outcome``, and tenant isolation. The worked example is the
demo's ``contract-fetch`` (acme): ``fetch_doc`` 404s, the mirror times out, the
chain terminates; a second fallback, ``fetch_doc_archive``, recovers it when an
outcome for the archive is scripted, and stops with ``needs_outcome`` when not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import rawdb
from clirun import run, run_json, write_demo

from ledger import chain
from ledger.store import Store

TRACE = "contract-fetch"
ARCHIVE_DOC = {"url": "https://archive.internal/contracts/initech-msa", "bytes": 48211}
RESULT_FIELDS = {"replay_trace_id", "source_trace_id", "fork_seq", "original_status",
                 "replay_status", "events", "memory_diff", "first_divergence",
                 "outcome_sources", "missing_outcome", "dropped_carried", "policy_digest",
                 "dry_run", "tenant"}
LINK_FIELDS = {"replay_trace_id", "tenant", "source_trace_id", "fork_seq", "source_prev_hash",
               "replay_status", "original_status", "policy_digest", "policy",
               "outcome_sources", "by", "reason", "recorded_at"}
BACKTEST_FIELDS = {"tenant", "policy_digest", "terminated_traces", "recovered",
                   "still_terminated", "needs_outcome", "by_tool", "extra_tool_calls",
                   "unreadable", "unwritable"}


@pytest.fixture
def url(store_url: str, tmp_path: Path) -> str:
    """A store holding the demo workload."""
    source = write_demo(tmp_path / "demo.jsonl")
    code, _, err = run(store_url, "ingest", str(source), "--reject-file",
                       str(tmp_path / "r.jsonl"))
    assert code == 0, err
    return store_url


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A second-fallback policy (YAML), an outcome for it, and a retry policy (JSON)."""
    out = {"fallback": tmp_path / "fallback.yaml", "outcomes": tmp_path / "outcomes.json",
           "retry": tmp_path / "retry.json"}
    out["fallback"].write_text("fallback:\n  fetch_doc: [fetch_doc_mirror, fetch_doc_archive]\n")
    out["outcomes"].write_text(json.dumps({"fetch_doc_archive": {"success": True,
                                                                 "output": ARCHIVE_DOC}}))
    out["retry"].write_text(json.dumps({"retry": {"max_attempts": 3}}))
    return {k: str(v) for k, v in out.items()}


def replay(url: str, files: dict[str, str], *extra: str, outcomes: bool = True) -> Any:
    """``replay contract-fetch`` under the second-fallback policy, as JSON."""
    args = ["replay", TRACE, "--tenant", "acme", "--policy", files["fallback"], *extra]
    if outcomes:
        args += ["--outcomes", files["outcomes"]]
    return run_json(url, *args)


def source_rows(url: str, tenant: str, trace_id: str) -> list[tuple[int, bytes]]:
    with Store.open(url) as store:
        rows = store.backend.read_stream(chain.trace_stream_id(tenant, trace_id))
    return list(rows)


# -- replay -----------------------------------------------------------------------------

def test_replay_json_has_the_documented_fields(url: str, files: dict[str, str]) -> None:
    """--json gives the result fields; the second fallback recovers the chain."""
    result = replay(url, files, "--dry-run")
    assert set(result) == RESULT_FIELDS
    assert (result["source_trace_id"], result["fork_seq"]) == (TRACE, 3)
    assert (result["original_status"], result["replay_status"]) == ("terminated", "recovered")
    assert [(c["tool"], c["source"]) for c in result["outcome_sources"]] == [
        ("fetch_doc", "source"), ("fetch_doc_mirror", "source"),
        ("fetch_doc_archive", "scripted")]
    assert result["memory_diff"] == {"memory/researcher": {
        "added": {"fetch_doc_archive_result": ARCHIVE_DOC}, "removed": {}, "changed": {}}}
    assert result["first_divergence"]["seq"] == 5
    assert [e["seq"] for e in result["events"]] == list(range(3, 3 + len(result["events"])))
    assert result["policy_digest"].startswith("sha256:")


def test_dry_run_stores_nothing(url: str, files: dict[str, str]) -> None:
    """--dry-run reports the replay but writes no row: replay list stays empty."""
    before = rawdb.count(url)
    result = replay(url, files, "--dry-run")
    assert result["dry_run"] is True and result["replay_trace_id"] is None
    assert rawdb.count(url) == before
    assert run_json(url, "replay", "list", "--tenant", "acme") == []


def test_a_stored_replay_is_listed_and_shown_with_its_link(url: str,
                                                           files: dict[str, str]) -> None:
    """A replay is stored as <source>~replay-1; list and show give its link."""
    result = replay(url, files, "--reason", "second fallback?", "--by", "alice")
    name = result["replay_trace_id"]
    assert name == f"{TRACE}~replay-1" and result["dry_run"] is False
    [link] = run_json(url, "replay", "list", "--tenant", "acme")
    assert set(link) == LINK_FIELDS
    assert (link["replay_trace_id"], link["source_trace_id"], link["fork_seq"]) == (name,
                                                                                   TRACE, 3)
    assert (link["policy_digest"], link["by"], link["reason"]) == (
        result["policy_digest"], "alice", "second fallback?")
    assert link["replay_status"] == "recovered"
    assert link["outcome_sources"] == ["source", "cassette", "scripted"]
    shown = run_json(url, "replay", "show", name, "--tenant", "acme")
    assert {k: shown[k] for k in LINK_FIELDS} == link
    assert [(e["seq"], e["event"], e["payload"]) for e in shown["events"]] == [
        (e["seq"], e["event"], e["payload"]) for e in result["events"]]


def test_replay_list_filters_by_source(url: str, files: dict[str, str]) -> None:
    """--source keeps the replays of one source trace."""
    replay(url, files)
    run_json(url, "replay", "crm-export", "--tenant", "acme", "--policy", files["retry"])
    rows = run_json(url, "replay", "list", "--tenant", "acme", "--source", "crm-export")
    assert [r["replay_trace_id"] for r in rows] == ["crm-export~replay-1"]


def test_replay_show_human_output_has_the_link(url: str, files: dict[str, str]) -> None:
    """replay show prints the link (source, fork, digest, prefix hash) and the policy text."""
    result = replay(url, files)
    code, out, _ = run(url, "replay", "show", result["replay_trace_id"], "--tenant", "acme")
    assert code == 0
    assert f"replay of trace {TRACE} (tenant acme) from seq 3" in out
    assert result["policy_digest"] in out and "forked after source record hash sha256:" in out
    assert "fetch_doc: [fetch_doc_mirror, fetch_doc_archive]" in out


def test_replay_never_writes_the_source(url: str, files: dict[str, str]) -> None:
    """The source trace's stored bytes are identical before and after a stored replay."""
    before = source_rows(url, "acme", TRACE)
    replay(url, files)
    assert source_rows(url, "acme", TRACE) == before


def test_verify_covers_stored_replays(url: str, files: dict[str, str]) -> None:
    """verify is ok with stored replays, and exit 4 once a replay row is edited."""
    name = replay(url, files)["replay_trace_id"]
    assert run_json(url, "verify")["ok"] is True
    sid = chain.replay_stream_id("acme", name)
    state = rawdb.get_state(url, sid, 2)
    rawdb.set_state(url, sid, 2, state.replace(b"404 not found", b"200 ok, found"))
    code, out, _ = run(url, "verify", "--json")
    report = json.loads(out)
    assert code == 4 and report["ok"] is False
    assert any(p["tenant"] == "acme" and name in str(p["trace_id"]) for p in report["problems"])


def test_human_replay_shows_both_sides_and_marks_divergences(url: str,
                                                            files: dict[str, str]) -> None:
    """The terminal view: header, one row per seq from the fork, differing rows marked."""
    code, out, _ = run(url, "replay", TRACE, "--tenant", "acme", "--policy", files["fallback"],
                       "--outcomes", files["outcomes"], "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (f"replay of trace {TRACE} (tenant acme) from seq 3: original "
                        "TERMINATED -> replay RECOVERED")
    assert "dry run: nothing stored" in lines[1]
    assert lines[2].startswith("first divergence at seq 5")
    table = lines[lines.index("(seq 1..2 are shared with the original)") + 3:]
    table = table[:table.index("")]
    rows = {line.split()[0]: line for line in table}
    assert sorted(rows, key=int) == [str(seq) for seq in range(3, 16)]
    assert "≠" not in rows["3"] and "≠" in rows["9"]
    assert "EXEC_TERMINATED" in rows["9"] and "CALLBACK_POLICY_RESOLVED" in rows["9"]
    assert "TOOL_EXEC fetch_doc_archive ok" in rows["11"]
    assert "+ fetch_doc_archive_result" in out and "scripted" in out


def test_run_subcommand_is_the_same_as_the_short_form(url: str, files: dict[str, str]) -> None:
    """`replay run ID` (for a trace named like a subcommand) equals `replay ID`."""
    args = ["--tenant", "acme", "--policy", files["fallback"], "--outcomes", files["outcomes"],
            "--dry-run"]
    short = run_json(url, "replay", TRACE, *args)
    spelled = run_json(url, "replay", "run", TRACE, *args)
    options_first = run_json(url, "replay", *args, TRACE)
    for other in (spelled, options_first):
        assert [(e["event"], e["payload"]) for e in other["events"]] == [
            (e["event"], e["payload"]) for e in short["events"]]


def test_needs_outcome_names_the_missing_call(url: str, files: dict[str, str]) -> None:
    """A fallback to a tool no source can answer stops there, and says how to answer it."""
    result = replay(url, files, "--dry-run", outcomes=False)
    assert result["replay_status"] == "needs_outcome"
    missing = result["missing_outcome"]
    assert (missing["tool"], missing["attempt"], missing["args"]) == (
        "fetch_doc_archive", 1, {"url": "https://docs.internal/contracts/initech-msa"})
    assert not any(e["event"] == "TOOL_EXEC" and e["payload"]["tool"] == "fetch_doc_archive"
                   for e in result["events"])
    code, out, _ = run(url, "replay", TRACE, "--tenant", "acme", "--policy", files["fallback"],
                       "--dry-run")
    assert code == 0
    assert f"NEEDS OUTCOME: no outcome source answered the call at seq {missing['seq']}" in out
    assert "tool fetch_doc_archive  attempt 1" in out and "initech-msa" in out
    assert "--outcomes FILE" in out


# -- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "field"), [
    ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
    ({"retry": {"max_attempt": 2}}, "retry.max_attempt"),
    ({"rules": [{"when": {"tool": "x"}, "then": {}}]}, "rules[0].then"),
])
@pytest.mark.parametrize("command", ["replay", "backtest"])
def test_bad_policy_file_exits_2_naming_the_field(url: str, tmp_path: Path, command: str,
                                                  policy: dict[str, Any], field: str) -> None:
    """An invalid policy is exit 2 and an error naming the file and the field."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(policy))
    target = [TRACE] if command == "replay" else []
    code, _, err = run(url, command, *target, "--tenant", "acme", "--policy", str(path))
    assert code == 2
    assert err.startswith(f"Error: {path}: {field}: ")


@pytest.mark.parametrize("command", ["replay", "backtest"])
def test_bad_outcomes_file_exits_2_naming_the_field(url: str, files: dict[str, str],
                                                    tmp_path: Path, command: str) -> None:
    """An invalid outcomes file is exit 2 and an error naming the field."""
    path = tmp_path / "outcomes.yaml"
    path.write_text("fetch_doc_archive:\n  - {success: true}\n  - {success: yes please}\n")
    target = [TRACE] if command == "replay" else []
    code, _, err = run(url, command, *target, "--tenant", "acme", "--policy",
                       files["fallback"], "--outcomes", str(path))
    assert code == 2
    assert err.startswith(f"Error: {path}: fetch_doc_archive[1].success: ")


def test_missing_policy_file_exits_2(url: str, tmp_path: Path) -> None:
    """A policy file that cannot be read is exit 2, naming it."""
    code, _, err = run(url, "replay", TRACE, "--tenant", "acme", "--policy",
                       str(tmp_path / "none.yaml"))
    assert code == 2 and err.startswith(f"Error: {tmp_path / 'none.yaml'}: cannot read")


def test_unknown_trace_or_replay_exits_5(url: str, files: dict[str, str]) -> None:
    """A trace or a replay the tenant does not have is exit 5."""
    code, _, err = run(url, "replay", "nope", "--tenant", "acme", "--policy", files["retry"])
    assert code == 5 and err.strip() == "Error: no trace 'nope' in tenant 'acme'"
    code, _, err = run(url, "replay", "show", "nope~replay-1", "--tenant", "acme")
    assert code == 5 and err.strip() == "Error: no replay 'nope~replay-1' in tenant 'acme'"


def test_fork_outside_the_trace_exits_2(url: str, files: dict[str, str]) -> None:
    """--from past the trace's last event is a usage error naming the range."""
    code, _, err = run(url, "replay", TRACE, "--tenant", "acme", "--policy", files["retry"],
                       "--from", "99")
    assert code == 2 and "seq 1..9" in err


# -- backtest ---------------------------------------------------------------------------

def terminated(url: str, tenant: str) -> set[str]:
    rows = run_json(url, "trace", "list", "--tenant", tenant, "--status", "terminated")
    return {r["trace_id"] for r in rows}


def test_backtest_totals_add_up_and_store_nothing(url: str, files: dict[str, str]) -> None:
    """Every terminated trace is counted once, per tool too; nothing is written."""
    before = rawdb.count(url)
    report = run_json(url, "backtest", "--tenant", "acme", "--policy", files["retry"])
    assert set(report) == BACKTEST_FIELDS
    assert report["terminated_traces"] == len(terminated(url, "acme"))
    assert report["recovered"] + report["still_terminated"] + report["needs_outcome"] == \
        report["terminated_traces"]
    for row in report["by_tool"].values():
        assert row["recovered"] + row["still_terminated"] + row["needs_outcome"] == \
            row["terminated_traces"]
    assert sum(r["terminated_traces"] for r in report["by_tool"].values()) == \
        report["terminated_traces"]
    assert rawdb.count(url) == before
    assert run_json(url, "replay", "list", "--tenant", "acme") == []


def test_backtest_save_stores_one_replay_per_terminated_trace(url: str,
                                                              files: dict[str, str]) -> None:
    """--save stores each replay, linked to its source; verify still passes."""
    report = run_json(url, "backtest", "--tenant", "acme", "--policy", files["retry"], "--save",
                      "--reason", "retry 3x?")
    links = run_json(url, "replay", "list", "--tenant", "acme")
    assert len(links) == report["terminated_traces"]
    assert {r["source_trace_id"] for r in links} == terminated(url, "acme")
    assert {r["reason"] for r in links} == {"retry 3x?"}
    assert run_json(url, "verify")["ok"] is True


def test_backtest_tool_filter(url: str, files: dict[str, str]) -> None:
    """--tool keeps the traces whose terminating failure is that tool's."""
    report = run_json(url, "backtest", "--tenant", "acme", "--policy", files["retry"],
                      "--tool", "search")
    assert set(report["by_tool"]) == {"search"}
    assert report["terminated_traces"] == report["by_tool"]["search"]["terminated_traces"] > 0


def test_backtest_with_outcomes_recovers_the_worked_example(url: str,
                                                           files: dict[str, str]) -> None:
    """The scripted archive outcome recovers contract-fetch in a backtest too."""
    report = run_json(url, "backtest", "--tenant", "acme", "--policy", files["fallback"],
                      "--outcomes", files["outcomes"], "--tool", "fetch_doc")
    assert report["by_tool"] == {"fetch_doc": {"terminated_traces": 1, "recovered": 1,
                                               "still_terminated": 0, "needs_outcome": 0}}


def test_backtest_human_output(url: str, files: dict[str, str]) -> None:
    """The terminal view: the totals and a per-tool table."""
    code, out, _ = run(url, "backtest", "--tenant", "acme", "--policy", files["retry"])
    assert code == 0
    assert "terminated trace(s) replayed" in out and "still terminated" in out
    assert "By the tool that failed:" in out and "crm_export" in out
    assert "Nothing stored" in out


def chunks_run_here(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Backtests cut into a chunk per trace (all shared out with workers, if any); the
    list returned grows by one for each chunk this process runs, not the workers."""
    import replay.backtest

    monkeypatch.setattr(replay.backtest, "CHUNK", 1)
    here: list[int] = []
    in_process = replay.backtest.run_chunk

    def counted(*a: Any, **kw: Any) -> Any:
        here.append(1)
        time.sleep(0.5)  # leaves the workers time to start and take chunks
        return in_process(*a, **kw)

    monkeypatch.setattr(replay.backtest, "run_chunk", counted)
    return here


@pytest.mark.parametrize("policy", ["retry", "fallback"])
def test_backtest_in_worker_processes_gives_the_same_report(
        url: str, files: dict[str, str], policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 3 shares the traces (one per chunk here) with two spawned processes:
    the report is the one a single process gives, scripted outcomes restarting per trace."""
    args = ["backtest", "--tenant", "acme", "--policy", files[policy],
            "--outcomes", files["outcomes"]]
    alone = run_json(url, *args, "--workers", "1")
    here = chunks_run_here(monkeypatch)
    shared = run_json(url, *args, "--workers", "3")
    assert alone["terminated_traces"] >= 3 and alone["recovered"] > 0
    assert shared == alone
    assert len(here) < alone["terminated_traces"]  # the workers ran some of the chunks
    assert list(shared["by_tool"]) == sorted(shared["by_tool"])


def test_a_saved_backtest_in_worker_processes_stores_what_one_process_stores(
        url: str, files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--save --workers 3: the workers replay chunks and send their replays back, and
    this process stores them, a chunk a transaction. Each terminated trace gets the
    replay a backtest in one process stores, and verify passes."""
    args = ["backtest", "--tenant", "acme", "--policy", files["fallback"],
            "--outcomes", files["outcomes"], "--save"]
    alone = run_json(url, *args, "--workers", "1", "--reason", "alone")
    here = chunks_run_here(monkeypatch)
    shared = run_json(url, *args, "--workers", "3", "--reason", "shared")
    assert shared == alone and len(here) < alone["terminated_traces"]
    sources = terminated(url, "acme")
    assert len(sources) == alone["terminated_traces"] >= 3
    links = {(r["source_trace_id"], r["reason"]): r["replay_trace_id"]
             for r in run_json(url, "replay", "list", "--tenant", "acme")}
    assert links == {**{(t, "alone"): f"{t}~replay-1" for t in sources},
                     **{(t, "shared"): f"{t}~replay-2" for t in sources}}

    def events(name: str) -> list[Any]:  # what the replay did (its times are its own)
        shown = run_json(url, "replay", "show", name, "--tenant", "acme")
        return [(e["seq"], e["event"], e["executed_by"], e["payload"], e["memory_hash"])
                for e in shown["events"]]

    for t in sources:
        assert events(f"{t}~replay-1") == events(f"{t}~replay-2")
    assert run_json(url, "verify")["ok"] is True


@pytest.mark.parametrize("workers", ["1", "3"])
def test_a_trace_whose_replay_cannot_write_memory_is_left_out_and_the_rest_reported(
        url: str, files: dict[str, str], tmp_path: Path, workers: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive's scripted output holds an integer memory cannot hash (beyond 2**53):
    contract-fetch's replay cannot write it. The backtest names that trace (stderr and
    ``unwritable``), stores nothing of it, reports and stores every other trace, and
    exits 3; in worker processes too."""
    import replay.backtest

    monkeypatch.setattr(replay.backtest, "CHUNK", 1)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"fetch_doc_archive": {
        "success": True, "output": {**ARCHIVE_DOC, "bytes": 2**60}}}))
    args = ["backtest", "--tenant", "acme", "--policy", files["fallback"], "--outcomes"]
    fine = run_json(url, *args, files["outcomes"], "--workers", workers)
    code, out, err = run(url, *args, str(huge), "--workers", workers, "--json")
    assert code == 3, err
    report = json.loads(out)
    assert [(u["trace_id"], u["reason"]) for u in report["unwritable"]] == [
        (TRACE, "payload.value.bytes: integer 1152921504606846976 is outside "
                "+-(2**53 - 1)")]
    assert f"warning: left out trace '{TRACE}': its replay cannot write memory at seq " \
        f"{report['unwritable'][0]['seq']}" in err and "write_memory: false" in err
    assert report["terminated_traces"] == fine["terminated_traces"] - 1
    assert report["recovered"] == fine["recovered"] - 1
    assert fine["by_tool"].pop("fetch_doc")["terminated_traces"] == 1  # contract-fetch's
    assert report["by_tool"] == fine["by_tool"]
    code, out, err = run(url, *args, str(huge), "--save", "--workers", workers)
    assert code == 3 and "left out trace 'contract-fetch'" in err
    assert f"Stored {report['terminated_traces']} replay(s)" in out
    stored = {r["source_trace_id"] for r in run_json(url, "replay", "list", "--tenant", "acme")}
    assert stored == terminated(url, "acme") - {TRACE}
    assert run_json(url, "verify")["ok"] is True


def test_backtest_workers_must_be_positive(url: str, files: dict[str, str]) -> None:
    code, _, err = run(url, "backtest", "--tenant", "acme", "--policy", files["retry"],
                       "--workers", "0")
    assert code == 2 and "--workers" in err


def test_backtest_bad_since_exits_2(url: str, files: dict[str, str]) -> None:
    """An unparseable --since is a usage error naming the option."""
    code, _, err = run(url, "backtest", "--tenant", "acme", "--policy", files["retry"],
                       "--since", "yesterday")
    assert code == 2 and "--since 'yesterday'" in err


# -- tenants ----------------------------------------------------------------------------

def test_replays_are_confined_to_their_tenant(url: str, files: dict[str, str]) -> None:
    """A replay of globex's q4-market-report is not listed or shown in acme (same trace id)."""
    name = run_json(url, "replay", "q4-market-report", "--tenant", "globex", "--policy",
                    files["retry"], "--outcomes", files["outcomes"])["replay_trace_id"]
    assert [r["replay_trace_id"] for r in run_json(url, "replay", "list", "--tenant",
                                                   "globex")] == [name]
    assert run_json(url, "replay", "list", "--tenant", "acme") == []
    code, _, _ = run(url, "replay", "show", name, "--tenant", "acme")
    assert code == 5


def test_demo_replays_a_failed_chain_without_storing_it(tmp_path: Path) -> None:
    """The demo ends with a dry-run replay that recovers contract-fetch; nothing is stored."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, out, err = run(url, "demo", "--dir", str(tmp_path / "demo"))
    assert code == 0, err
    section = out.split("== 8.")[1]
    assert "original TERMINATED -> replay RECOVERED" in section and "dry run" in section
    assert (tmp_path / "demo" / "policy.yaml").exists()
    assert run_json(url, "replay", "list", "--tenant", "acme") == []
