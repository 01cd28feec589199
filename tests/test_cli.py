"""The CLI through click's CliRunner: exit codes, error lines, --json fields, help."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from clirun import run, run_json, run_process, write_demo

from ledger.cli.common import usable_cpus
from ledger.cli.main import main
from ledger.workload import demo_bad_lines, demo_events, synthetic_lines

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo_file(tmp_path: Path) -> Path:
    return write_demo(tmp_path / "demo.jsonl")


def test_init_reports_the_schema_version(store_url: str) -> None:
    """init creates the schema once and says so; a second init is a no-op."""
    code, out, _ = run(store_url, "init", "--json")
    assert code == 0 and json.loads(out)["applied"] == [1]
    code, out, _ = run(store_url, "init", "--json")
    assert json.loads(out) == {"store": store_url, "schema_version": 1, "applied": []}


def test_ingest_json_summary_and_exit_zero(store_url: str, demo_file: Path,
                                           tmp_path: Path) -> None:
    """A clean file exits 0 with the documented summary fields."""
    code, out, _ = run(store_url, "ingest", str(demo_file), "--json",
                       "--reject-file", str(tmp_path / "r.jsonl"))
    summary = json.loads(out)
    assert code == 0
    assert {"accepted", "duplicates", "rejected", "reject_file"} <= summary.keys()
    assert summary["accepted"] == len(demo_events()) and summary["rejected"] == 0


def test_ingest_twice_counts_duplicates(store_url: str, demo_file: Path, tmp_path: Path) -> None:
    """Re-ingesting the same file stores nothing and counts every line as a duplicate."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "ingest", str(demo_file), "--json",
                       "--reject-file", str(tmp_path / "r.jsonl"))
    assert code == 0 and json.loads(out)["duplicates"] == len(demo_events())


def test_ingest_with_rejects_exits_3_and_saves_them(store_url: str, demo_file: Path,
                                                     tmp_path: Path) -> None:
    """Bad lines give exit 3, the good ones are stored, the bad ones saved."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(demo_file.read_bytes() + b"\n".join(demo_bad_lines()) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    code, out, _ = run(store_url, "ingest", str(bad), "--json", "--reject-file", str(rejects))
    summary = json.loads(out)
    assert code == 3
    assert summary["rejected"] == len(demo_bad_lines())
    assert summary["reject_file"] == str(rejects)
    assert len(rejects.read_bytes().splitlines()) == len(demo_bad_lines())


def test_ingest_reads_stdin(store_url: str, demo_file: Path, tmp_path: Path) -> None:
    """'-' reads events from standard input."""
    code, out, _ = run(store_url, "ingest", "-", "--json", "--reject-file",
                       str(tmp_path / "r.jsonl"), input=demo_file.read_bytes())
    assert code == 0 and json.loads(out)["accepted"] == len(demo_events())


def test_ingest_missing_file_exits_2_with_one_error_line(store_url: str) -> None:
    """An unreadable input is exit 2 and one 'Error:' line naming the file."""
    code, _, err = run(store_url, "ingest", "/no/such/file.jsonl")
    assert code == 2
    assert err.strip() == "Error: /no/such/file.jsonl: no such file"


def test_a_reject_file_with_no_folder_exits_2_before_anything_is_stored(
    store_url: str, demo_file: Path, tmp_path: Path
) -> None:
    """Rejected lines must have somewhere to go: a reject file in a folder that does
    not exist is a usage error, found before any line is stored."""
    rejects = tmp_path / "no-such-folder" / "r.jsonl"
    code, _, err = run(store_url, "ingest", str(demo_file), "--reject-file", str(rejects))
    assert code == 2
    assert err.strip() == (f"Error: reject file {rejects}: no such folder {rejects.parent} "
                           "(create it first)")
    assert run_json(store_url, "trace", "list", "--tenant", "acme") == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_reject_file_the_disk_refuses_stops_the_ingest_and_a_rerun_completes_it(
    store_url: str, demo_file: Path, tmp_path: Path
) -> None:
    """A full disk under the reject file is exit 1 naming the file and the system's
    reason (no traceback); run again with room, nothing is lost or stored twice."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(demo_file.read_bytes() + b"\n".join(demo_bad_lines()) + b"\n")
    code, _, err = run(store_url, "ingest", str(bad), "--reject-file", "/dev/full")
    assert code == 1
    assert err.startswith("Error: cannot write the reject file /dev/full (No space left on "
                          "device): the ingest stopped while saving rejected lines (the "
                          f"last: {bad} line ")
    rejects = tmp_path / "r.jsonl"
    code, out, _ = run(store_url, "ingest", str(bad), "--json", "--reject-file", str(rejects))
    summary = json.loads(out)
    assert code == 3 and summary["rejected"] == len(demo_bad_lines())
    assert summary["accepted"] + summary["duplicates"] == len(demo_events())
    assert len(rejects.read_bytes().splitlines()) == len(demo_bad_lines())


def test_output_to_a_closed_pipe_ends_quietly_with_141(sqlite_url: str, demo_file: Path,
                                                        tmp_path: Path) -> None:
    """`... | head` that stops reading: no traceback, no "Internal error", exit 141."""
    run(sqlite_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first write
    try:
        done = run_process(sqlite_url, "audit", "writes", "--tenant", "acme", "--csv",
                    stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_to_a_full_disk_is_one_error_line_and_exit_1(sqlite_url: str, demo_file: Path,
                                                            tmp_path: Path) -> None:
    """stdout on a full disk: the system's reason in one `Error:` line, exit 1."""
    run(sqlite_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    with open("/dev/full", "w") as full:
        done = run_process(sqlite_url, "trace", "list", "--tenant", "acme", "--json", stdout=full)
    assert (done.returncode, done.stderr) == (1, "Error: No space left on device\n")


def test_json_output_keeps_big_integers_and_events_nested_to_the_limit(
    store_url: str, tmp_path: Path
) -> None:
    """Read commands print, exactly, what ingest accepted: an integer beyond 64 bits,
    and values nested as deep as the contract allows, inside their own JSON levels
    (a memory write's value, a conflict's evidence)."""
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    def event(seq: int, name: str, payload: dict[str, Any], **extra: Any) -> bytes:
        return json.dumps({"trace_id": "t", "seq": seq, "event": name, "agent_owner": "a",
                           "ts": f"2026-11-20T10:00:0{seq}Z", "executed_by": "a",
                           "payload": payload, **extra}).encode()

    big = 2**100
    rewrite = {"tool": "t", "args": {"n": nested(251)}, "success": True}
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join([
        event(1, "TOOL_EXEC", {"tool": "t", "args": {"n": big}, "success": False}),
        event(2, "CALLBACK_MEMORY_WRITE", {"key": "k", "value": nested(251)},
              write_scope="memory/a"),
        event(2, "TOOL_EXEC", rewrite)]) + b"\n")
    code, _, err = run(store_url, "ingest", str(src), "--reject-file", str(tmp_path / "r"))
    assert code == 3, err
    shown = run_json(store_url, "trace", "show", "t", "--tenant", "default")
    assert shown["events"][0]["payload"]["args"]["n"] == big
    assert run_json(store_url, "failures", "--tenant", "default")[0]["seq"] == 1
    memory = run_json(store_url, "memory", "show", "--tenant", "default", "--trace", "t")
    assert memory["state"] == {"k": nested(251)}
    [history] = run_json(store_url, "memory", "history", "--tenant", "default", "--trace", "t")
    assert history["value"] == nested(251)
    [finding] = run_json(store_url, "audit", "findings", "--tenant", "default")
    assert finding["kind"] == "conflict"
    code, out, err = run(store_url, "trace", "show", "t", "--tenant", "default")
    assert code == 0 and "t FAILED" in out, err
    code, out, err = run(store_url, "memory", "show", "--tenant", "default", "--trace", "t")
    assert code == 0 and "[[[[" in out, err


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_workers_default_to_the_cpus_the_process_may_use() -> None:
    """Pinned to one CPU (a container's cpuset, ``taskset``), a command's default
    ``--workers`` is 1, not the machine's CPU count."""
    code = ("import os; from ledger.cli.common import usable_cpus; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cpus())")
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert pinned.stdout == "1\n"
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_the_cli_runs_from_a_thread_other_than_the_main_one(tmp_path: Path) -> None:
    """A command run from another thread (an embedding program) works: only the main
    thread may take SIGTERM's handler, so the CLI leaves it there."""
    import threading

    outcome: list[tuple[int, str, str]] = []
    thread = threading.Thread(target=lambda: outcome.append(
        run(f"sqlite:///{tmp_path}/t.db", "trace", "list", "--tenant", "acme", "--json")))
    thread.start()
    thread.join(timeout=60)
    assert outcome == [(0, "[]\n", "warning: tenant 'acme' has no traces in this store\n")]


def test_bad_store_url_exits_2(tmp_path: Path) -> None:
    """An unsupported --store URL is a usage error."""
    code, _, err = run("mysql://nope", "trace", "list")
    assert code == 2 and err.startswith("Error: unsupported store URL")


@pytest.mark.parametrize("schema", ["a-b", "x%20y", "q'uote", "9a", "s" * 64])
def test_a_postgres_schema_that_is_not_a_plain_name_exits_2(schema: str) -> None:
    """A schema the library would name unquoted (in its type names) is a usage error
    naming it, before any connection, with the URL's password hidden; it used to reach
    the server as a syntax error (exit 1)."""
    url = f"postgresql://u:secret@127.0.0.1:1/db?schema={schema}"
    code, _, err = run(url, "trace", "list", "--tenant", "acme")
    assert code == 2 and "must be 1-63 letters, digits and underscores" in err
    assert "secret" not in err and "***" in err


def test_a_sqlite_store_in_a_missing_folder_exits_2_naming_it(tmp_path: Path) -> None:
    """A SQLite URL whose folder does not exist (or that names a folder) is a usage
    error naming it, not the driver's "unable to open database file"."""
    code, _, err = run(f"sqlite:///{tmp_path}/none/x.db", "trace", "list")
    assert (code, err) == (2, f"Error: SQLite store sqlite:///{tmp_path}/none/x.db: no such "
                              f"folder {tmp_path}/none (create it first)\n")
    code, _, err = run(f"sqlite:///{tmp_path}", "init")
    assert (code, err) == (2, f"Error: SQLite store sqlite:///{tmp_path}: {tmp_path} is a "
                              "folder, not a file\n")


def test_a_file_that_is_no_sqlite_database_given_as_store_exits_2_naming_it(
        tmp_path: Path) -> None:
    """An input file given as ``--store`` by mistake is a usage error, and is left as it
    was; a file with SQLite's header but nothing of a database after it is a damaged
    store (exit 1); an empty file becomes a new store."""
    traces = tmp_path / "traces.jsonl"
    traces.write_bytes(b'{"trace_id": "t-1", "seq": 1}\n')
    code, _, err = run(f"sqlite:///{traces}", "trace", "list", "--tenant", "acme")
    assert (code, err) == (2, f"Error: SQLite store sqlite:///{traces}: {traces} is not a "
                              "SQLite database (it does not begin with SQLite's header)\n")
    assert traces.read_bytes() == b'{"trace_id": "t-1", "seq": 1}\n'
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"garbage " * 20)
    code, _, err = run(f"sqlite:///{damaged}", "trace", "list", "--tenant", "acme")
    assert (code, err) == (1, f"Error: SQLite store sqlite:///{damaged}: file is not a "
                              "database\n")
    (tmp_path / "empty.db").touch()
    assert run_json(f"sqlite:///{tmp_path}/empty.db", "init")["schema_version"] >= 1


def test_a_sqlite_url_may_start_at_the_home_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///~/x.db`` is the file in the home folder, as the shell would read ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run_json("sqlite:///~/x.db", "init")["schema_version"] >= 1
    assert (tmp_path / "x.db").is_file()


@pytest.mark.parametrize("url_of, reason", [
    (lambda c: c.url_for("no_such_db"), 'database "no_such_db" does not exist'),
    (lambda c: c.url_for("agentledger_test").replace("postgres@", "nobody@"),
     'role "nobody" does not exist'),
    (lambda c: "postgresql://postgres@127.0.0.1:1/x", "Connection refused"),
], ids=["database", "role", "port"])
def test_an_unusable_postgres_store_fails_at_once_with_the_servers_reason(
    request: pytest.FixtureRequest, url_of: Any, reason: str
) -> None:
    """A missing database, an unknown role or a closed port is exit 1 within a second,
    naming the store and the server's reason (not a pool timeout after 5 s)."""
    url = url_of(request.getfixturevalue("pg_cluster"))
    started = time.monotonic()
    code, _, err = run(url, "trace", "list", "--tenant", "t")
    assert code == 1, err
    assert err.startswith(f"Error: cannot open PostgreSQL store {url}: ")
    assert reason in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 2.5


def test_every_libpq_parameter_of_a_postgres_url_applies_to_every_connection(
        postgres_url: str) -> None:
    """``sslmode``, ``application_name`` and the rest reach the first connection and
    the pool's. They were dropped: ``sslmode=require`` (or ``verify-full``) connected
    to a server without SSL, or without checking its certificate, saying nothing."""
    from ledger.store import Store

    code, _, err = run(postgres_url + "&sslmode=require", "trace", "list", "--tenant", "t")
    assert code == 1
    assert "server does not support SSL, but SSL was required" in err
    url = postgres_url + "&application_name=ledger%20probe&options=-c%20statement_timeout%3D4321"
    with Store.open(url) as store, \
            store.backend.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        assert conn.execute("SHOW application_name").fetchone() == {
            "application_name": "ledger probe"}  # "%20", not "+": libpq reads no "+"
        assert conn.execute("SHOW statement_timeout").fetchone() == {
            "statement_timeout": "4321ms"}


@pytest.mark.parametrize("url", ["postgresql://[bad", "postgresql://u:pw@[bad/x"])
def test_a_postgres_url_urllib_cannot_split_exits_2(url: str) -> None:
    code, _, err = run(url, "trace", "list", "--tenant", "t")
    assert code == 2
    assert "invalid PostgreSQL URL" in err and "Invalid IPv6 URL" in err
    assert "pw" not in err


def test_a_password_given_as_a_url_parameter_is_not_shown(pg_cluster: Any) -> None:
    url = pg_cluster.url_for("no_such_db") + "?password=s3cret&sslmode=disable"
    code, _, err = run(url, "trace", "list", "--tenant", "t")
    assert code == 1
    assert "password=***&sslmode=disable" in err and "s3cret" not in err


@pytest.mark.parametrize("args", [["init"], ["init", "--json"], ["demo", "--dir", "{tmp}/d"]])
def test_no_command_prints_the_store_password(postgres_url: str, tmp_path: Path,
                                              args: list[str]) -> None:
    """The server here trusts any password, so these URLs open the store; ``init``
    and ``demo`` printed them whole, password and all."""
    args = [a.format(tmp=tmp_path) for a in args]
    for url in (postgres_url.replace("postgres@", "postgres:s3cret@"),
                postgres_url + "&password=s3cret"):
        code, out, err = run(url, *args)
        assert code == 0, err
        assert "s3cret" not in out + err and "***" in out


@pytest.mark.parametrize("items", [[], [{"a": 1}], [{"a": [1, {"b": "x\ny"}]}, 2**100, "z"]])
@pytest.mark.parametrize("at", ["first", "middle", "last", "two", "two, the other way"])
def test_lists_printed_an_item_at_a_time_are_the_document_printed_whole(
    items: list[Any], at: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """emit_json_lists gives the very bytes emit_json gives for the same document, each
    list wherever its key stands (a line break inside a string is escaped, and an
    integer beyond 64 bits written by the stdlib), with an empty list too."""
    from ledger.cli.common import emit_json, emit_json_lists

    head = {"first": {"events": 0}, "middle": {"x": 1, "events": 0, "y": "s"},
            "last": {"x": [1], "events": 0}, "two": {"x": 1},
            "two, the other way": {"more": 0, "x": 1, "events": 0}}[at]
    lists = {"events": items, "more": [*items, {"k": "]"}]} if at.startswith("two") else {
        "events": items}
    emit_json({**head, **lists})
    whole = capsysbinary.readouterr().out
    emit_json_lists(head, {k: iter(v) for k, v in lists.items()})
    assert capsysbinary.readouterr().out == whole


def test_trace_show_json_is_the_trace_printed_whole(
    store_url: str, demo_file: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """trace show --json, written a record at a time, prints what the whole view gives."""
    from ledger.cli.common import emit_json
    from ledger.reader import get_trace
    from ledger.store import Store

    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "trace", "show", "crm-export", "--tenant", "acme", "--json")
    with Store.open(store_url) as store:
        emit_json(get_trace(store, "acme", "crm-export").as_json())
    assert code == 0 and out.encode() == capsysbinary.readouterr().out


def test_trace_show_json_fields(store_url: str, demo_file: Path, tmp_path: Path) -> None:
    """trace show --json gives the trace's status and its events in seq order."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "trace", "show", "crm-export", "--tenant", "acme", "--json")
    view = json.loads(out)
    assert code == 0 and view["status"] == "terminated"
    assert [e["seq"] for e in view["events"]] == list(range(1, view["events"][-1]["seq"] + 1))
    assert {"seq", "event", "ts", "agent_owner", "executed_by", "write_scope", "memory_hash",
            "ledger_memory_hash", "failure", "payload"} == view["events"][0].keys()


def test_trace_show_human_timeline_marks_failures(store_url: str, demo_file: Path,
                                                  tmp_path: Path) -> None:
    """The human timeline shows the header and marks failure points with '!'."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "trace", "show", "crm-export", "--tenant", "acme")
    assert code == 0 and "TERMINATED" in out.splitlines()[0]
    assert re.search(r"!\s+EXEC_TERMINATED", out)


def test_trace_show_from_to_shows_that_window_of_seqs(
        store_url: str, demo_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--from/--to keep to those seqs (inclusive), read a few records at a time."""
    import ledger.reader

    monkeypatch.setattr(ledger.reader, "WINDOW_PAGE", 2)  # pages of 2: 2-3, 4-5, 6-7
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    whole = run_json(store_url, "trace", "show", "crm-export", "--tenant", "acme")
    window = run_json(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                      "--from", "2", "--to", "7")
    assert window == {**whole, "events": whole["events"][1:7]}
    tail = run_json(store_url, "trace", "show", "crm-export", "--tenant", "acme", "--from", "12")
    head = run_json(store_url, "trace", "show", "crm-export", "--tenant", "acme", "--to", "3")
    assert [e["seq"] for e in tail["events"]] == [12, 13]
    assert [e["seq"] for e in head["events"]] == [1, 2, 3]
    code, out, _ = run(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                       "--from", "12", "--to", "99")
    lines = out.splitlines()
    assert code == 0 and lines[1] == "seq 12..13 of 13"
    assert [line.split()[0] for line in lines[3:]] == ["12", "13"]


def test_trace_show_window_past_the_end_is_empty_and_a_reversed_one_a_usage_error(
        store_url: str, demo_file: Path, tmp_path: Path) -> None:
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    past = run_json(store_url, "trace", "show", "crm-export", "--tenant", "acme", "--from", "14")
    assert past["events"] == [] and past["trace_id"] == "crm-export"
    code, out, _ = run(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                       "--from", "14")
    assert code == 0 and out.splitlines()[1] == "no events from seq 14 on: the trace has 13"
    code, _, err = run(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                       "--from", "5", "--to", "3")
    assert code == 2 and "--from 5 is after --to 3" in err
    code, _, err = run(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                       "--from", "0")
    assert code == 2 and "--from" in err


def test_trace_show_window_does_not_read_an_altered_record_outside_it(
        store_url: str, demo_file: Path, tmp_path: Path) -> None:
    """Seq 1-5 can still be shown while seq 9 is altered; the whole trace stops with 4."""
    import rawdb

    from ledger import chain

    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    rawdb.set_state(store_url, chain.trace_stream_id("acme", "crm-export"), 9, b"garbled")
    window = run_json(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                      "--to", "5")
    assert [e["seq"] for e in window["events"]] == [1, 2, 3, 4, 5]
    code, _, err = run(store_url, "trace", "show", "crm-export", "--tenant", "acme",
                       "--from", "8", "--to", "10")
    assert code == 4 and "seq 9" in err


def test_trace_show_unknown_exits_5(store_url: str) -> None:
    """Asking for a trace that does not exist (in that tenant) is exit 5."""
    code, _, err = run(store_url, "trace", "show", "nope", "--tenant", "acme")
    assert code == 5 and "no trace 'nope' in tenant 'acme'" in err


def test_trace_list_is_confined_to_the_tenant(store_url: str, demo_file: Path,
                                              tmp_path: Path) -> None:
    """trace list only returns the asked tenant's traces, with the documented fields."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "trace", "list", "--tenant", "globex", "--json")
    rows = json.loads(out)
    expected = {e["trace_id"] for e in demo_events() if e["tenant"] == "globex"}
    assert code == 0 and {r["trace_id"] for r in rows} == expected
    assert all(r["tenant"] == "globex" for r in rows)
    assert set(rows[0]) == {"tenant", "trace_id", "status", "events", "agent_owner",
                            "first_ts", "last_ts"}


def test_trace_list_status_and_bad_since(store_url: str, demo_file: Path, tmp_path: Path) -> None:
    """--status filters; an unparseable --since is a usage error naming the option."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "trace", "list", "--tenant", "acme", "--status",
                       "terminated", "--json")
    assert code == 0 and all(r["status"] == "terminated" for r in json.loads(out))
    code, _, err = run(store_url, "trace", "list", "--since", "yesterday")
    assert code == 2 and "--since 'yesterday'" in err


def test_verify_ok_then_exit_4_after_an_edit(sqlite_url: str, demo_file: Path,
                                             tmp_path: Path) -> None:
    """verify exits 0 on an intact ledger and 4, naming the problem, after a byte is edited."""
    run(sqlite_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(sqlite_url, "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    db = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    db.execute("UPDATE agentledger_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
               "'429', '428') AS BLOB) WHERE notification_id = (SELECT MIN(notification_id) "
               "FROM agentledger_events WHERE CAST(state AS TEXT) LIKE '%429%')")
    db.commit()
    db.close()
    code, out, _ = run(sqlite_url, "verify", "--json")
    report = json.loads(out)
    assert code == 4 and report["ok"] is False
    assert {"tenant", "trace_id", "seq", "kind", "detail"} == report["problems"][0].keys()


def test_verify_of_a_tenant_with_no_streams_does_not_read_as_ok(store_url: str, demo_file: Path,
                                                                  tmp_path: Path) -> None:
    """A mistyped tenant has nothing to verify, and says so instead of "OK"."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "verify", "--tenant", "acmee")
    assert (code, out.strip()) == (0, "Nothing to verify: tenant 'acmee' has no streams.")
    code, out, _ = run(store_url, "verify", "--tenant", "acme")
    assert code == 0 and out.startswith("OK: ")


def test_verify_reports_the_runtime_memory_hash_finding(store_url: str, demo_file: Path,
                                                         tmp_path: Path) -> None:
    """The demo's lying runtime shows up as a finding, not as tampering."""
    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    code, out, _ = run(store_url, "verify", "--tenant", "acme", "--json")
    report = json.loads(out)
    assert code == 0
    assert [(f["trace_id"], f["kind"]) for f in report["findings"]] == [
        ("pricing-memo", "memory_hash_mismatch")]


def test_verify_workers_option(store_url: str, demo_file: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers N gives the report of one process; N must be positive."""
    import ledger.verify

    run(store_url, "ingest", str(demo_file), "--reject-file", str(tmp_path / "r.jsonl"))
    monkeypatch.setattr(ledger.verify, "EVENTS_PER_WORKER", 1)  # the demo log still shares
    one = run(store_url, "verify", "--workers", "1", "--json")
    assert one[0] == 0 and json.loads(one[1])["events"] > 1000
    assert run(store_url, "verify", "--workers", "2", "--json") == one
    code, _, err = run(store_url, "verify", "--workers", "0")
    assert code == 2 and "--workers" in err


def test_demo_runs_on_a_fresh_store(tmp_path: Path) -> None:
    """demo ingests, shows a failed chain, verifies, and exits 0."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, out, _ = run(url, "demo", "--dir", str(tmp_path / "demo"))
    assert code == 0
    assert "== 3. A chain that failed ==" in out and "OK:" not in out.split("== 4")[0]
    assert "memory_hash_mismatch" in out and "conflict" in out


def _all_commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(prefix: str, cmd: click.Command) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found.append((prefix, cmd))

    walk("", main)
    return found


@pytest.mark.parametrize("name", [n for n, _ in _all_commands()])
def test_every_command_has_help_and_is_documented(name: str) -> None:
    """Each command has a help text and a section in docs/CLI.md."""
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert f"### `agentledger {name}`" in (ROOT / "docs" / "CLI.md").read_text()


def test_help_does_not_import_the_storage_stack() -> None:
    """`agentledger --help` stays fast: no eventsourcing, psycopg or pydantic import."""
    code = ("import sys; from ledger.cli.main import main\n"
            "heavy = [m for m in ('eventsourcing', 'psycopg', 'pydantic') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_verify_does_not_import_the_models(store_url: str, tmp_path: Path) -> None:
    """`verify` of traces (in this process and in each worker it spawns) reads stored
    records without pydantic: building the models took ~0.17 s of every start."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(synthetic_lines(20)))
    assert run(store_url, "ingest", str(source), "--reject-file",
               str(tmp_path / "r.jsonl"))[0] == 0
    code = ("import sys; from ledger.store import Store; from ledger.verify import verify\n"
            f"store = Store.open({store_url!r}, migrate=False)\n"
            "report = verify(store)\n"
            "print(report.ok, report.events, 'pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "20", "False"]


def test_ingest_batch_size_default_is_the_library_default() -> None:
    """The CLI repeats the default (importing ingest would slow --help): they agree."""
    from ledger.cli.commands import ingest as ingest_command
    from ledger.ingest import DEFAULT_BATCH_SIZE

    option = next(p for p in ingest_command.params if p.name == "batch_size")
    assert option.default == DEFAULT_BATCH_SIZE
