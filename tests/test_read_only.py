"""A SQLite store this process may not write: an auditor's evidence on a read-only mount.

Reading commands answer as on a writable store, without creating or changing
anything; the views are used as they stand (a warning says what they lack); writing
commands stop with exit 2 saying why. The store is bind-mounted read-only, which
needs root (as on CI).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import orjson
import pytest
from clirun import run, run_json, write_demo
from freezegun import freeze_time

READ_ONLY_WHY = "is read-only here (a read-only file system): cannot "


def _mount_read_only(source: Path, target: Path) -> None:
    target.mkdir()
    for args in (["--bind", source, target], ["-o", "remount,bind,ro", target]):
        done = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
        if done.returncode != 0:
            if os.environ.get("CI") == "true":
                pytest.fail(f"cannot mount read-only: {done.stderr.strip()}")
            pytest.skip(f"needs root to mount read-only ({done.stderr.strip()})")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """``mount(folder)``: the folder's files, seen through a read-only mount."""
    mounted: list[Path] = []

    def mount(folder: Path) -> Path:
        target = tmp_path / f"ro{len(mounted)}"
        _mount_read_only(folder, target)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


def late_events() -> bytes:
    """A trace ingested after the views were last brought up to date."""
    steps = [("EXEC_START", {}), ("TOOL_EXEC", {"tool": "search", "args": {}, "success": False,
                                                "error_reason": "late outage"})]
    return b"".join(orjson.dumps({
        "trace_id": "late-1", "seq": seq, "event": event, "tenant": "acme",
        "ts": f"2026-11-20T10:00:0{seq}Z", "agent_owner": "planner", "executed_by": "planner",
        "payload": payload}) + b"\n" for seq, (event, payload) in enumerate(steps, 1))


def write_policy(tmp_path: Path) -> str:
    policy = tmp_path / "policy.json"
    policy.write_text('{"retry": {"max_attempts": 3}}')
    return str(policy)


def store_in(folder: Path, tmp_path: Path, *ingest_args: str) -> str:
    folder.mkdir()
    url = f"sqlite:///{folder / 'ledger.db'}"
    demo = write_demo(tmp_path / "demo.jsonl")
    code, _, err = run(url, "ingest", str(demo), "--reject-file", str(tmp_path / "r.jsonl"),
                       *ingest_args)
    assert code == 0, err
    return url


READS = (
    ("verify",), ("trace", "list", "--tenant", "acme"),
    ("trace", "show", "q4-market-report", "--tenant", "acme"),
    ("failures", "--tenant", "acme"), ("audit", "writes", "--tenant", "acme"),
    ("audit", "findings", "--tenant", "acme"), ("stats", "fallbacks", "--tenant", "acme"),
    ("memory", "history", "--tenant", "acme", "--trace", "q4-market-report"),
    ("grants", "list", "--tenant", "acme"), ("projections", "status"),
    ("replay", "list", "--tenant", "acme"), ("projections", "check", "--workers", "2"),
)


@pytest.fixture(autouse=True)
def _fresh_folds_shared_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """``projections check --workers 2`` cuts even the demo's short log in two: its
    spawned processes read the read-only store as well."""
    from projections import parts

    monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)


def test_reading_commands_answer_on_a_read_only_mount_as_on_the_store_itself(
        tmp_path: Path, read_only: Callable[[Path], Path]) -> None:
    url = store_in(tmp_path / "evidence", tmp_path)
    expected = [run_json(url, *args) for args in READS]
    before = sorted(os.listdir(tmp_path / "evidence"))
    mounted = read_only(tmp_path / "evidence")
    ro_url = f"sqlite:///{mounted / 'ledger.db'}"
    for args, answer in zip(READS, expected, strict=True):
        code, out, err = run(ro_url, *args, "--json")
        assert (code, err) == (0, ""), args
        assert orjson.loads(out) == answer, args
    policy = write_policy(tmp_path)
    for args in (("backtest", "--tenant", "acme", "--policy", policy),
                 ("replay", "run-d19f0b13", "--tenant", "acme", "--policy", policy,
                  "--dry-run")):
        with freeze_time("2026-12-01T12:00:00Z"):  # replayed events are stamped now
            assert run_json(ro_url, *args) == run_json(url, *args), args
    out_path = tmp_path / "export.jsonl"
    code, _, err = run(ro_url, "audit", "export", "--tenant", "acme", str(out_path))
    assert (code, err) == (0, "") and out_path.stat().st_size > 0
    assert sorted(os.listdir(mounted)) == before  # no -wal or -shm file made beside it
    code, _, err = run(f"sqlite:///{mounted / 'new.db'}", "trace", "list", "--tenant", "acme")
    assert (code, err) == (2, f"Error: SQLite store sqlite:///{mounted / 'new.db'}: no such "
                              f"file, and its folder {mounted} is not writable to create it in\n")


def test_writing_commands_on_a_read_only_mount_exit_2_saying_why(
        tmp_path: Path, read_only: Callable[[Path], Path]) -> None:
    store_in(tmp_path / "evidence", tmp_path)
    late = tmp_path / "late.jsonl"
    late.write_bytes(late_events())
    policy = write_policy(tmp_path)
    ro_url = f"sqlite:///{read_only(tmp_path / 'evidence') / 'ledger.db'}"
    writes = {
        "ingest into it": ("ingest", str(late), "--reject-file", str(tmp_path / "r2.jsonl")),
        "record a grant in it": ("grants", "add", "--tenant", "acme", "--agent", "critic",
                                 "--scope", "memory/planner"),
        "rebuild its views": ("projections", "rebuild"),
        "keep its views up to date": ("projections", "run", "--once"),
        "store a replay in it": ("replay", "run-d19f0b13", "--tenant", "acme",
                                 "--policy", policy),
        "store replays in it": ("backtest", "--tenant", "acme", "--policy", policy, "--save"),
    }
    for what, args in writes.items():
        code, _, err = run(ro_url, *args)
        assert code == 2, (args, err)
        assert err == f"Error: SQLite store {ro_url} {READ_ONLY_WHY}{what}; work on a copy " \
                      "in a folder you may write in\n", args


def test_views_behind_the_ledger_are_used_as_they_stand_with_a_warning(
        tmp_path: Path, read_only: Callable[[Path], Path]) -> None:
    url = store_in(tmp_path / "evidence", tmp_path)
    late = tmp_path / "late.jsonl"
    late.write_bytes(late_events())
    code, _, err = run(url, "ingest", str(late), "--no-projections",
                       "--reject-file", str(tmp_path / "r2.jsonl"))
    assert code == 0, err
    ro_url = f"sqlite:///{read_only(tmp_path / 'evidence') / 'ledger.db'}"
    code, out, err = run(ro_url, "failures", "--tenant", "acme", "--trace", "late-1", "--json")
    assert (code, orjson.loads(out)) == (0, [])
    assert err == (f"warning: SQLite store {ro_url} is read-only here (a read-only file "
                   "system), so the views cannot catch up: they leave out the last 2 log "
                   "entries (`verify` and `trace show` read the ledger itself)\n")
    shown = run_json(ro_url, "trace", "show", "late-1", "--tenant", "acme")
    assert [e["event"] for e in shown["events"]] == ["EXEC_START", "TOOL_EXEC"]
    code, _, err = run(ro_url, "backtest", "--tenant", "acme", "--policy", write_policy(tmp_path))
    assert code == 2  # a replay reads memory and recorded outcomes from the views: all of them
    assert err == (f"Error: SQLite store {ro_url} {READ_ONLY_WHY}bring the views that replays "
                   "read up to date; work on a copy in a folder you may write in\n")


def test_views_never_built_cannot_be_built_on_a_read_only_mount(
        tmp_path: Path, read_only: Callable[[Path], Path]) -> None:
    store_in(tmp_path / "evidence", tmp_path, "--no-projections")
    ro_url = f"sqlite:///{read_only(tmp_path / 'evidence') / 'ledger.db'}"
    code, _, err = run(ro_url, "failures", "--tenant", "acme")
    assert code == 2
    assert err.startswith(f"Error: SQLite store {ro_url} {READ_ONLY_WHY}build the views of "
                          "failures;")  # the views this command reads
    code, _, err = run(ro_url, "projections", "status")
    assert code == 2
    assert err.startswith(f"Error: SQLite store {ro_url} {READ_ONLY_WHY}build the views of "
                          "memory, failures, attribution, analytics, findings;")
    assert run_json(ro_url, "verify")["ok"] is True


def test_views_another_version_built_stop_only_the_commands_that_read_them(
        tmp_path: Path, read_only: Callable[[Path], Path]) -> None:
    """After an upgrade that changed one projection, an auditor's read-only copy still
    answers every query of the others; `projections status` says which needs a rebuild."""
    url = store_in(tmp_path / "evidence", tmp_path)
    unaffected = [args for args in READS if args[0] not in ("stats", "projections")]
    expected = [run_json(url, *args) for args in unaffected]
    with closing(sqlite3.connect(tmp_path / "evidence" / "ledger.db")) as db, db:
        db.execute("UPDATE agentledger_projection_state SET version = version - 1 "
                   "WHERE name = 'analytics'")  # as the version before an upgrade built it
    ro_url = f"sqlite:///{read_only(tmp_path / 'evidence') / 'ledger.db'}"
    for args, answer in zip(unaffected, expected, strict=True):
        code, out, err = run(ro_url, *args, "--json")
        assert (code, err) == (0, ""), (args, err)
        assert orjson.loads(out) == answer, args
    code, _, err = run(ro_url, "audit", "export", "--tenant", "acme", str(tmp_path / "e.jsonl"))
    assert (code, err) == (0, "")
    status = {row["name"]: row for row in run_json(ro_url, "projections", "status")}
    assert [n for n, row in status.items() if row["rebuild_needed"]] == ["analytics"]
    assert status["analytics"]["built_version"] == status["analytics"]["version"] - 1
    policy = write_policy(tmp_path)
    for args in (("stats", "fallbacks", "--tenant", "acme"),
                 ("stats", "failures", "--tenant", "acme"),
                 ("backtest", "--tenant", "acme", "--policy", policy)):
        code, _, err = run(ro_url, *args)
        assert code == 2, args
        assert err.startswith(f"Error: SQLite store {ro_url} {READ_ONLY_WHY}build the views "
                              "of analytics;"), (args, err)


def test_commits_still_in_the_write_ahead_log_are_read_or_the_store_refused(
        tmp_path: Path, read_only: Callable[[Path], Path]) -> None:
    """Files copied while a writer had the store open: the last commits are in the
    ``-wal`` file. With its ``-shm`` index beside it SQLite reads them; without it,
    which SQLite cannot make on a read-only mount, the store is refused (exit 2)
    rather than read without those commits."""
    url = store_in(tmp_path / "live", tmp_path)
    late = tmp_path / "late.jsonl"
    late.write_bytes(late_events())
    db = tmp_path / "live" / "ledger.db"
    holder = sqlite3.connect(db)  # keeps the log from being emptied when the ingest ends
    try:
        holder.execute("SELECT count(*) FROM agentledger_events").fetchone()
        holder.execute("PRAGMA wal_autocheckpoint = 0")
        code, _, err = run(url, "ingest", str(late), "--reject-file", str(tmp_path / "r2.jsonl"))
        assert code == 0, err
        for name, files in (("with-index", ("", "-wal", "-shm")), ("without", ("", "-wal"))):
            (tmp_path / name).mkdir()
            for suffix in files:
                shutil.copy(f"{db}{suffix}", tmp_path / name / f"ledger.db{suffix}")
    finally:
        holder.close()
    assert (tmp_path / "without" / "ledger.db-wal").stat().st_size > 0
    with_index = f"sqlite:///{read_only(tmp_path / 'with-index') / 'ledger.db'}"
    shown = run_json(with_index, "trace", "show", "late-1", "--tenant", "acme")
    assert len(shown["events"]) == 2
    without = read_only(tmp_path / "without")
    code, _, err = run(f"sqlite:///{without / 'ledger.db'}", "verify")
    assert code == 2
    assert "SQLite needs to make" in err and "to read the commits in" in err


def read_only_login(url: str, *, privileges: str = "SELECT", read_only_sessions: bool = False,
                    ) -> str:
    """``url`` with a new login that has ``privileges`` on every table of its schema."""
    import uuid

    import psycopg
    from psycopg import sql
    from rawdb import _pg_target

    conninfo, schema = _pg_target(url)
    role = sql.Identifier(name := "auditor_" + uuid.uuid4().hex[:8])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
        conn.execute(sql.SQL("GRANT " + privileges + " ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), role))
        if read_only_sessions:
            conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                role))
    return url.replace("postgres@", name + "@", 1)


def test_a_postgresql_login_that_may_only_read_reads_and_is_told_why_it_cannot_write(
        postgres_url: str, tmp_path: Path) -> None:
    url = postgres_url
    demo = write_demo(tmp_path / "demo.jsonl")
    code, _, err = run(url, "ingest", str(demo), "--reject-file", str(tmp_path / "r.jsonl"))
    assert code == 0, err
    expected = [run_json(url, *args) for args in READS]
    auditor = read_only_login(url)
    for args, answer in zip(READS, expected, strict=True):
        code, out, err = run(auditor, *args, "--json")
        assert (code, err) == (0, ""), (args, err)
        assert orjson.loads(out) == answer, args
    schema = url.rsplit("schema=", 1)[1]
    why = f'role {auditor.split("//")[1].split("@")[0]} may not insert into ' \
          f'"{schema}"."agentledger_events"'
    late = tmp_path / "late.jsonl"
    late.write_bytes(late_events())
    code, _, err = run(auditor, "ingest", str(late), "--reject-file", str(tmp_path / "r2.jsonl"))
    assert (code, err) == (2, f"Error: PostgreSQL store {auditor} is read-only here ({why}): "
                              "cannot ingest into it; connect to the primary server as a login "
                              "that may write\n")
    code, _, err = run(url, "ingest", str(late), "--no-projections",
                       "--reject-file", str(tmp_path / "r3.jsonl"))
    assert code == 0, err
    code, out, err = run(auditor, "failures", "--tenant", "acme", "--trace", "late-1", "--json")
    assert (code, orjson.loads(out)) == (0, [])
    assert "so the views cannot catch up: they leave out the last 2 log entries" in err
    sessions = read_only_login(url, privileges="ALL", read_only_sessions=True)
    code, _, err = run(sessions, "grants", "add", "--tenant", "acme", "--agent", "critic",
                       "--scope", "memory/planner")
    assert code == 2 and "(default_transaction_read_only is on for this login)" in err


def test_a_postgresql_standby_answers_reads_and_is_told_why_it_cannot_write(
        tmp_path: Path) -> None:
    """A hot standby (an auditor's usual PostgreSQL) reads as its primary does, backtest
    and dry-run replay included, and refuses writes in its own words."""
    from pgcluster import PgCluster, pg_required_or_skip

    with PgCluster(pg_required_or_skip()) as primary:
        url = primary.create_database("ledger") + "?schema=evidence"
        demo = write_demo(tmp_path / "demo.jsonl")
        code, _, err = run(url, "ingest", str(demo), "--reject-file", str(tmp_path / "r.jsonl"))
        assert code == 0, err
        expected = [run_json(url, *args) for args in READS]
        policy = write_policy(tmp_path)
        replays = (("backtest", "--tenant", "acme", "--policy", policy),
                   ("replay", "run-d19f0b13", "--tenant", "acme", "--policy", policy,
                    "--dry-run"))
        frozen = freeze_time(  # the connection pool's timers keep real time (frozen: 5 s each)
            "2026-12-01T12:00:00Z", ignore=["psycopg_pool"])
        with frozen:  # replayed events are stamped now
            replayed = [run_json(url, *args) for args in replays]
        with primary.start_standby() as standby:
            standby.wait_for(primary)
            ro_url = standby.url_for("ledger") + "?schema=evidence"
            for args, answer in zip(READS, expected, strict=True):
                code, out, err = run(ro_url, *args, "--json")
                assert (code, err) == (0, ""), (args, err)
                assert orjson.loads(out) == answer, args
            with frozen:
                assert [run_json(ro_url, *args) for args in replays] == replayed
            out_path = tmp_path / "export.jsonl"
            code, _, err = run(ro_url, "audit", "export", "--tenant", "acme", str(out_path))
            assert (code, err) == (0, "") and out_path.stat().st_size > 0
            late = tmp_path / "late.jsonl"
            late.write_bytes(late_events())
            code, _, err = run(ro_url, "ingest", str(late),
                               "--reject-file", str(tmp_path / "r2.jsonl"))
            assert (code, err) == (2, f"Error: PostgreSQL store {ro_url} is read-only here (a "
                                      "standby server, which only reads): cannot ingest into "
                                      "it; connect to the primary server as a login that may "
                                      "write\n")
            code, _, err = run(url, "ingest", str(late), "--no-projections",
                               "--reject-file", str(tmp_path / "r3.jsonl"))
            assert code == 0, err
            standby.wait_for(primary)
            code, out, err = run(ro_url, "failures", "--tenant", "acme", "--trace", "late-1",
                                 "--json")
            assert (code, orjson.loads(out)) == (0, [])
            assert "so the views cannot catch up: they leave out the last 2 log entries" in err


def test_a_postgresql_login_that_may_only_read_reads_views_of_this_version_only(
        postgres_url: str, tmp_path: Path) -> None:
    """The same as on a read-only SQLite mount: after an upgrade that changed one
    projection, a read-only login still gets every answer that does not read it."""
    import psycopg
    from rawdb import _pg_target

    url = postgres_url
    demo = write_demo(tmp_path / "demo.jsonl")
    code, _, err = run(url, "ingest", str(demo), "--reject-file", str(tmp_path / "r.jsonl"))
    assert code == 0, err
    unaffected = [args for args in READS if args[0] not in ("stats", "projections")]
    expected = [run_json(url, *args) for args in unaffected]
    conninfo, schema = _pg_target(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".agentledger_projection_state SET version = version - 1 '
                     "WHERE name = 'analytics'")
    auditor = read_only_login(url)
    for args, answer in zip(unaffected, expected, strict=True):
        code, out, err = run(auditor, *args, "--json")
        assert (code, err) == (0, ""), (args, err)
        assert orjson.loads(out) == answer, args
    status = {row["name"]: row for row in run_json(auditor, "projections", "status")}
    assert [n for n, row in status.items() if row["rebuild_needed"]] == ["analytics"]
    code, _, err = run(auditor, "stats", "retries", "--tenant", "acme")
    assert code == 2 and "cannot build the views of analytics;" in err
