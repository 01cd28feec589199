"""``projections check``: the views compared with a fresh fold of the log, on both backends.

The views are edited directly in the database (``rawdb``), as someone with write
access to it could; the check must name every table that changed, and nothing else,
without writing to the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb
from clirun import run, run_json
from viewdump import dump

from ledger.grants import add_grant
from ledger.ingest import ingest
from ledger.store import Store
from ledger.workload import demo_events
from projections import Projector, parts
from projections import check as check_module
from projections.check import check_views

TABLES = {"memory": ("memory_writes",), "failures": ("failures", "failure_hourly"),
          "attribution": ("write_attribution", "grants"),
          "analytics": ("tool_calls", "tool_hourly", "recoveries", "unknown_callbacks"),
          "findings": ("findings",)}


@pytest.fixture
def viewed(store: Store, tmp_path: Path) -> Store:
    """The demo workload ingested with its views, and a grant."""
    src = tmp_path / "demo.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in demo_events()))
    Projector(store).attach()
    ingest(store, [str(src)], reject_file=str(tmp_path / "rejected.jsonl"))
    add_grant(store, "acme", "researcher", "memory/planner", valid_from="2026-01-01")
    return store


@pytest.fixture(params=[1, 2], ids=["one-process", "two-processes"])
def workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Processes the fresh fold is shared between, as a rebuild's (``projections.parts``);
    with 2 even the demo's short log is cut in two, and the test fails unless it was."""
    if request.param > 1:
        monkeypatch.setattr(parts, "ENTRIES_PER_PART", 1)
        shared = parts.rebuild_in_parts
        calls: list[int] = []

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return shared(*args, **kwargs)

        monkeypatch.setattr(parts, "rebuild_in_parts", counted)
        yield request.param
        assert calls, "the fresh fold was not shared out"
        return
    yield request.param


def differing(report: Any) -> dict[str, tuple[int, int]]:
    """Each differing table: (rows only in the views, rows only in a fresh fold)."""
    return {t.table: (t.only_live, t.only_fresh) for p in report.projections
            for t in p.tables if not t.ok}


def test_views_as_the_ledger_left_them_check_ok_and_nothing_is_written(
    viewed: Store, store_url: str, workers: int
) -> None:
    """Every table of every projection, per-trace contexts included, is compared, and
    equals a fresh fold; the store (ledger and views) is left as it was."""
    before = rawdb.dump(store_url), dump(viewed)
    report = check_views(viewed, workers=workers)
    assert report.ok and report.entries_read == viewed.backend.last_notification_id()
    head = viewed.backend.last_notification_id()
    assert {p.name: (p.position, tuple(t.table for t in p.tables))
            for p in report.projections} == {
        name: (head, (*tables, "projection_context", "unreadable_entries"))
        for name, tables in TABLES.items()}
    assert sum(t.live_rows for p in report.projections for t in p.tables) > 500
    assert (rawdb.dump(store_url), dump(viewed)) == before


@pytest.mark.parametrize(("edit", "expected"), [
    ("UPDATE {write_attribution} SET authorized = 1 - authorized WHERE cross_agent = 1",
     "write_attribution"),
    ("DELETE FROM {failures} WHERE tool = 'search'", "failures"),
    ("UPDATE {tool_hourly} SET execs = execs + 1", "tool_hourly"),
    ("INSERT INTO {findings} SELECT tenant, finding_seq + 1000, kind, trace_id, seq, detail, "
     "recorded_at FROM {findings}", "findings"),
    ("UPDATE {projection_context} SET context = '{{}}' WHERE projection = 'analytics'",
     "projection_context"),
    ("DELETE FROM {grants}", "grants"),
], ids=["authorized-flipped", "failures-deleted", "counts-raised", "findings-added",
        "contexts-emptied", "grant-deleted"])
def test_each_edited_view_is_named_with_its_rows(viewed: Store, store_url: str, edit: str,
                                                 expected: str, workers: int) -> None:
    """An edit of any view table is reported in that table alone, with how many rows only
    the views and only a fresh fold have, and examples of them."""
    changed = rawdb.execute_views(store_url, edit)
    assert changed > 0
    report = check_views(viewed, workers=workers)
    assert not report.ok and list(differing(report)) == [expected]
    [table] = [t for p in report.projections for t in p.tables if not t.ok]
    assert table.only_live + table.only_fresh >= 1
    assert table.examples and {x["in"] for x in table.examples} <= {"live", "fresh"}
    assert all(set(x["row"]) and x["occurs"] >= 1 for x in table.examples)


def test_a_flipped_authorization_shows_both_versions_of_the_row(
    viewed: Store, store_url: str
) -> None:
    """The example rows say what the views claim and what the log gives."""
    rawdb.execute_views(store_url, "UPDATE {write_attribution} SET authorized = 1 "
                                   "WHERE authorized = 0 AND cross_agent = 1 AND seq = ("
                                   "SELECT min(seq) FROM {write_attribution} "
                                   "WHERE authorized = 0 AND cross_agent = 1)")
    [table] = [t for p in check_views(viewed, ["attribution"]).projections for t in p.tables
               if not t.ok]
    claimed = {x["in"]: x["row"] for x in table.examples}
    assert (table.only_live, table.only_fresh) == (1, 1)
    assert claimed["live"]["authorized"] == 1 and claimed["fresh"]["authorized"] == 0
    assert {k: v for k, v in claimed["live"].items() if k != "authorized"} == {
        k: v for k, v in claimed["fresh"].items() if k != "authorized"}


def test_views_at_different_positions_are_each_checked_at_their_own(
    store: Store, tmp_path: Path, workers: int
) -> None:
    """Views a writer left behind the log (one projection caught up, the others not)
    are compared with a fold to where each stands, not with the log's head."""
    events = demo_events()
    first, rest = events[: len(events) // 2], events[len(events) // 2:]
    for name, part in (("a.jsonl", first), ("b.jsonl", rest)):
        src = tmp_path / name
        src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in part))
        ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
        if name == "a.jsonl":
            Projector(store).catch_up()
    Projector(store, ["memory"]).catch_up()
    head = store.backend.last_notification_id()
    report = check_views(store, workers=workers)
    positions = {p.name: p.position for p in report.projections}
    assert report.ok and positions["memory"] == head
    assert len(set(positions.values())) == 2 and min(positions.values()) < head


def test_views_a_writer_moves_on_during_the_check_are_followed(
    viewed: Store, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer applies more entries after the fresh fold: the fold follows the views to
    where they now stand, and they still check OK at that position."""
    late = tmp_path / "late.jsonl"
    late.write_bytes(orjson.dumps({
        "trace_id": "late-1", "seq": 1, "event": "EXEC_START", "tenant": "acme",
        "ts": "2026-11-20T10:00:00Z", "agent_owner": "planner", "executed_by": "planner",
        "payload": {}}) + b"\n")
    real_fold, folds = check_module._fold, []

    def fold_then_write(*args: Any) -> int:
        read = real_fold(*args)
        if not folds:
            with Store.open(store_url) as writer:
                Projector(writer).attach()
                ingest(writer, [str(late)], reject_file=str(tmp_path / "r2.jsonl"))
        folds.append(read)
        return read

    monkeypatch.setattr(check_module, "_fold", fold_then_write)
    report = check_views(viewed)
    assert report.ok and len(folds) == 2 and folds[1] == 1
    assert {p.position for p in report.projections} == {viewed.backend.last_notification_id()}


def test_the_cli_exits_4_naming_the_edit_and_0_once_rebuilt(viewed: Store, store_url: str
                                                           ) -> None:
    """``projections check`` prints the differing tables (or OK), exit 4 or 0; ``--json``
    gives the report; a rebuild replaces the edited views."""
    assert rawdb.execute_views(store_url, "DELETE FROM {memory_writes} WHERE seq = "
                                          "(SELECT min(seq) FROM {memory_writes})") > 0
    code, out, _ = run(store_url, "projections", "check")
    assert code == 4 and "ALTERED: 1 table(s)" in out and "memory_writes" in out
    code, out, _ = run(store_url, "projections", "check", "memory", "--json")
    report = orjson.loads(out)
    assert code == 4 and report["ok"] is False
    assert [(p["name"], [t["table"] for t in p["tables"] if not t["ok"]])
            for p in report["projections"]] == [("memory", ["memory_writes"])]
    assert set(report["projections"][0]["tables"][0]) == {
        "table", "live_rows", "fresh_rows", "only_live", "only_fresh", "examples", "ok"}
    assert run(store_url, "projections", "rebuild")[0] == 0
    assert run_json(store_url, "projections", "check")["ok"] is True
    code, out, _ = run(store_url, "projections", "check")
    assert code == 0 and out.startswith("OK: the views of 5 projection(s)")


def test_views_of_another_version_or_none_are_refused(viewed: Store, store_url: str,
                                                       tmp_path: Path) -> None:
    """Views another version built differ by design, and a store without views has
    nothing to check: exit 2 saying so (and an unknown name, as everywhere)."""
    rawdb.execute_views(store_url, "UPDATE {projection_state} SET version = 0 "
                                   "WHERE name = 'failures'")
    code, _, err = run(store_url, "projections", "check")
    assert code == 2 and "built by version 0" in err and "projections rebuild failures" in err
    assert run(store_url, "projections", "check", "memory")[0] == 0
    assert run(store_url, "projections", "check", "nope")[0] == 2
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    assert run(bare, "init")[0] == 0
    code, _, err = run(bare, "projections", "check")
    assert code == 2 and "has no views yet" in err
