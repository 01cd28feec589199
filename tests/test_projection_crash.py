"""Projections survive kill -9: views always match their tracking position, re-runs finish.

A child process ingests a workload with the projector attached (or rebuilds the
projections) in small batches and is SIGKILLed mid-way, on SQLite and PostgreSQL.
Before anything catches up, every projection's view rows must equal what the log
prefix up to its tracking position implies. That expectation comes from a naive
fold written here from docs/PROJECTIONS.md, nothing shared with ``projections/``.
Then a re-run completes, applies nothing twice and equals a clean rebuild.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import rawdb
from viewdump import dump

from ledger import chain
from ledger.grants import add_grant, revoke_grant
from ledger.ingest import ingest
from ledger.payloads import is_failure_point
from ledger.store import Store
from ledger.workload import demo_events, synthetic_lines
from projections import Projector
from projections.runner import NAMES, PROJECTIONS
from projections.sql import Cursor, PostgresViewDB, ViewDB, view_db

N_SYNTHETIC = 20_000  # plus the demo's traces, spread among them
INGEST_BATCH = 200
PROJECTOR_BATCH = 25  # several projector commits per ingest commit
INGEST_STEPS = (1_500, 900, 600, 400, 250, 150)  # entries to let pass before each kill
REBUILD_STOPS = (0.35, 0.2, 0.1, 0.3, 0.05)  # share of the log rebuilt before each kill
KILL_DELAYS = (0.0, 0.006, 0.003, 0.009, 0.001, 0.005)  # s from "ready" to SIGKILL, per try
KILLS = 2  # kills that must land while projections are behind the log
DEADLINE_S = 60.0
REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys
from ledger.ingest import ingest
from ledger.store import Store
from projections import Projector
mode, url, batch, *rest = sys.argv[1:]
with Store.open(url) as store:
    projector = Projector(store, batch_size=int(batch))
    if mode == "rebuild":
        projector.rebuild()
    else:
        src, rejects, ingest_batch = rest
        projector.attach()
        ingest(store, [src], reject_file=rejects, batch_size=int(ingest_batch))
"""

# per projection, its view tables: (how many leading columns are the key, the query)
TABLES: dict[str, dict[str, tuple[int, str]]] = {
    "memory": {"memory_writes": (3, "SELECT tenant, trace_id, seq, scope, key, op, "
                                    "memory_hash FROM {memory_writes}")},
    "failures": {"failures": (3, "SELECT tenant, trace_id, seq, event, tool, executed_by, "
                                 "reason FROM {failures}")},
    "attribution": {
        "write_attribution": (3, "SELECT tenant, trace_id, seq, scope, key, op, executed_by, "
                                 "cross_agent, authorized, basis FROM {write_attribution}"),
        "grants": (2, "SELECT tenant, grant_id, agent, scope, "
                      "CASE WHEN revoked_at IS NULL THEN 0 ELSE 1 END FROM {grants}"),
    },
    "analytics": {
        "tool_calls": (3, "SELECT tenant, trace_id, seq, tool, executed_by, success, attempt "
                          "FROM {tool_calls}"),
        "tool_hourly": (4, "SELECT tenant, hour, tool, executed_by, execs, failures "
                           "FROM {tool_hourly}"),
        "recoveries": (3, "SELECT tenant, trace_id, seq, kind, tool, fallback_tool, recovered, "
                          "recovered_seq FROM {recoveries}"),
    },
    "findings": {"findings": (2, "SELECT tenant, finding_seq, kind, trace_id, seq "
                                 "FROM {findings}")},
}
STOPS_RECOVERY = frozenset({"REASONER_ACTION", "CALLBACK_FALLBACK", "EXEC_TERMINATED"})
BOGUS_HASH = "sha256:" + "0" * 64

View = dict[tuple[Any, ...], tuple[Any, ...]]
Record = dict[str, Any]

pytestmark = pytest.mark.slow


# -- the workload ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Synthetic traces with the demo's traces spread among them; every 7th synthetic write
    goes to another agent's scope and every 23rd claims a wrong memory hash (a finding)."""
    demo = [orjson.dumps(e) for e in demo_events()]
    every = N_SYNTHETIC // len(demo)
    lines: list[bytes] = []
    writes = 0
    for i, line in enumerate(synthetic_lines(N_SYNTHETIC)):
        event = orjson.loads(line)
        if event["event"] == "CALLBACK_MEMORY_WRITE":
            writes += 1
            if writes % 7 == 0:
                event["write_scope"] = "memory/planner"
            elif writes % 23 == 0:
                event["memory_hash"] = BOGUS_HASH
        lines.append(orjson.dumps(event))
        if i % every == 0 and demo:
            lines.append(demo.pop(0))
    lines += demo
    path = tmp_path_factory.mktemp("projection-crash") / "workload.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, len(lines)


def record_grants(store: Store) -> None:
    """Tenant grants the attribution view must fold in (one later revoked)."""
    add_grant(store, "tenant-000", "researcher", "memory/planner",
              valid_from="2026-11-17T07:40:00Z", by="user:test")
    grant = add_grant(store, "tenant-001", "writer", "memory/planner",
                      valid_from="2026-11-17", by="user:test")
    revoke_grant(store, "tenant-001", grant.grant_id, at="2026-11-17T08:00:00Z", by="user:test")
    add_grant(store, "acme", "researcher", "memory/planner", valid_from="2026-11-01",
              by="user:test")


# -- an independent fold of a log prefix into every checked view ------------------------


def instant(ts: str) -> datetime:
    return datetime.fromisoformat(ts).astimezone(UTC)


def tool_named(event: str, payload: dict[str, Any]) -> str | None:
    """The tool an event is about, when it names one (docs: "Tool in play")."""
    if event in ("TOOL_EXEC", "TOOL_FAIL", "CALLBACK_RESULT", "CALLBACK_RETRY"):
        tool = payload.get("tool")
    elif event == "REASONER_ACTION":
        tool = (payload.get("action") or {}).get("tool")
    elif event == "CALLBACK_FALLBACK":
        tool = payload.get("fallback_tool")
    else:
        tool = None
    return tool if isinstance(tool, str) else None


def authorization(r: Record, scope: str, perms: dict[tuple[str, str], tuple[bool, int]],
                  grants: dict[tuple[str, str], Record]) -> tuple[int, int, str | None]:
    """(cross_agent, authorized, basis) of a memory write."""
    writer = r["executed_by"]
    if scope == "memory/" + writer:
        return 0, 1, "own_scope"
    granted, seq = perms.get((writer, scope), (False, 0))
    if granted:
        return 1, 1, f"permission:{seq}"
    at = instant(r["ts"])
    covering = sorted(
        (instant(g["valid_from"]), grant_id) for (tenant, grant_id), g in grants.items()
        if tenant == r["tenant"] and g["agent"] == writer and g["scope"] == scope
        and instant(g["valid_from"]) <= at
        and (g["valid_until"] is None or at < instant(g["valid_until"]))
        and (g.get("revoked") is None or at < instant(g["revoked"])))
    return (1, 1, "grant:" + covering[0][1]) if covering else (1, 0, None)


def recovery(r: Record, later: list[Record]) -> tuple[Any, ...]:
    """(kind, tool, fallback_tool, recovered, recovered_seq) of a retry or fallback."""
    p = r["payload"]
    if r["event"] == "CALLBACK_RETRY":
        kind, tool, fallback, target = "retry", p["tool"], None, p["tool"]
    else:
        kind, tool, fallback, target = ("fallback", p["original_tool"], p["fallback_tool"],
                                        p["fallback_tool"])
    for nxt in later:
        if nxt["event"] in STOPS_RECOVERY:
            break
        if nxt["event"] == "TOOL_EXEC" and nxt["payload"]["tool"] == target:
            if nxt["payload"]["success"] is True:
                return kind, tool, fallback, 1, nxt["seq"]
            if kind == "retry":
                break
    return kind, tool, fallback, 0, None


def fold_trace(events: list[Record], grants: dict[tuple[str, str], Record],
               views: dict[str, View], daily: dict[tuple[Any, ...], list[int]]) -> None:
    tool: str | None = None
    perms: dict[tuple[str, str], tuple[bool, int]] = {}
    for i, r in enumerate(events):
        key = (r["tenant"], r["trace_id"], r["seq"])
        event, p, by = r["event"], r["payload"], r["executed_by"]
        tool = tool_named(event, p) or tool
        if is_failure_point(event, p):
            reason = p.get("error_reason" if event == "TOOL_EXEC" else "reason")
            views["failures"][key] = (event, tool, by, reason)
        if event == "CALLBACK_PERMISSION":
            perms[(p["executing_agent"], p["scope"])] = (p["granted"] is True, r["seq"])
        elif event == "CALLBACK_MEMORY_WRITE":
            scope = r.get("write_scope") or "memory/" + r["agent_owner"]
            op = "delete" if p.get("op") == "delete" else "set"
            views["memory_writes"][key] = (scope, p["key"], op, r["ledger_memory_hash"])
            views["write_attribution"][key] = (
                scope, p["key"], op, by, *authorization(r, scope, perms, grants))
        elif event == "TOOL_EXEC":
            ok = p["success"] is True
            views["tool_calls"][key] = (p["tool"], by, int(ok), p.get("attempt", 1))
            hour = instant(r["ts"]).strftime("%Y-%m-%dT%H")
            counts = daily.setdefault((r["tenant"], hour, p["tool"], by), [0, 0])
            counts[0] += 1
            counts[1] += not ok
        elif event in ("CALLBACK_RETRY", "CALLBACK_FALLBACK"):
            views["recoveries"][key] = recovery(r, events[i + 1:])


def expected_views(entries: list[tuple[int, str, int, Record]]) -> dict[str, View]:
    """Every checked view table after exactly these log entries (in log order)."""
    views: dict[str, View] = {t: {} for tables in TABLES.values() for t in tables}
    grants: dict[tuple[str, str], Record] = {}
    traces: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for _, topic, version, r in entries:
        if topic == chain.GRANT_TOPIC and r["action"] == "add":
            grants[(r["tenant"], r["grant_id"])] = dict(r)
        elif topic == chain.GRANT_TOPIC and r["action"] == "revoke":
            grant = grants.get((r["tenant"], r["grant_id"]))
            if grant is not None and grant.get("revoked") is None:
                grant["revoked"] = r["at"]
        elif topic == chain.FINDING_TOPIC:
            views["findings"][(r["tenant"], version)] = (r["finding"], r.get("trace_id"),
                                                     r.get("seq"))
        elif topic == chain.EVENT_TOPIC:
            traces[(r["tenant"], r["trace_id"])].append(r)
    for (tenant, grant_id), g in grants.items():
        views["grants"][(tenant, grant_id)] = (g["agent"], g["scope"], int("revoked" in g))
    daily: dict[tuple[Any, ...], list[int]] = {}
    for events in traces.values():
        fold_trace(sorted(events, key=lambda r: r["seq"]), grants, views, daily)
    views["tool_hourly"] = {k: tuple(v) for k, v in daily.items()}
    return views


def read_log(store: Store, upto: int) -> list[tuple[int, str, int, Record]]:
    """Decoded log entries with notification id <= upto."""
    entries: list[tuple[int, str, int, Record]] = []
    after = 0
    while rows := store.backend.read_log(after, 5_000):
        for nid, topic, _, version, state in rows:
            if nid > upto:
                return entries
            entries.append((nid, topic, version, chain.decode(state)))
        after = rows[-1][0]
    return entries


# -- reading views, positions and the log head in one snapshot --------------------------


@contextmanager
def snapshot(db: ViewDB) -> Iterator[Cursor]:
    """One read transaction that sees a single committed state (a killed PostgreSQL
    client's last COMMIT may still land while we read)."""
    with db.read() as cur:
        if db.dialect == "postgres":
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield cur


def fetch(db: ViewDB, cur: Cursor, template: str) -> list[tuple[Any, ...]]:
    cur.execute(db.render(template))
    return [tuple(r) for r in cur.fetchall()]


def positions_and_head(db: ViewDB, cur: Cursor) -> tuple[dict[str, int], int]:
    rows = fetch(db, cur, "SELECT application_name, notification_id FROM {tracking}")
    positions = {name: 0 for name in NAMES} | {n: int(p) for n, p in rows if n in NAMES}
    [(head,)] = fetch(db, cur, "SELECT COALESCE(MAX(notification_id), 0) FROM {events}")
    return positions, int(head)


def progress(store: Store) -> tuple[dict[str, int], int]:
    db = view_db(store.backend)
    with snapshot(db) as cur:
        return positions_and_head(db, cur)


def differences(table: str, actual: View, expected: View) -> str:
    missing = sorted(set(expected) - set(actual), key=repr)
    extra = sorted(set(actual) - set(expected), key=repr)
    changed = sorted((k for k in set(actual) & set(expected) if actual[k] != expected[k]),
                     key=repr)
    return (f"{table}: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
            f"{len(changed)} differ {[(k, actual[k], expected[k]) for k in changed[:3]]}")


def assert_views_match_positions(store: Store) -> tuple[dict[str, int], int]:
    """Each projection's views equal the fold of the log up to its tracking position."""
    assert set(TABLES) == set(NAMES), "a projection this test does not check"
    db = view_db(store.backend)
    actual: dict[str, View] = {}
    with snapshot(db) as cur:
        positions, head = positions_and_head(db, cur)
        for tables in TABLES.values():
            for table, (width, query) in tables.items():
                rows = fetch(db, cur, query)
                actual[table] = {row[:width]: row[width:] for row in rows}
                assert len(actual[table]) == len(rows), f"{table}: a key stored twice"
    log = read_log(store, max(positions.values()))
    folds: dict[int, dict[str, View]] = {}
    for name, tables in TABLES.items():
        at = positions[name]
        if at not in folds:
            folds[at] = expected_views([e for e in log if e[0] <= at])
        for table in tables:
            assert actual[table] == folds[at][table], \
                f"{name} at position {at}: " + differences(table, actual[table], folds[at][table])
    return positions, head


# -- killing a child mid-way ------------------------------------------------------------


def run_and_kill(argv: list[str], ready: Callable[[], bool], delay: float) -> None:
    """Start a child, SIGKILL it ``delay`` s after ``ready()``; fail if it ends on its own."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not ready():
            if child.poll() is not None:
                err = child.stderr.read().decode() if child.stderr else ""
                pytest.fail(f"child {argv[0]} exited ({child.returncode}) before the kill: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"child {argv[0]} made too little progress in time")
            time.sleep(0.002)
        time.sleep(delay)  # varied, so kills land anywhere in a batch's work
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def count_trace_events(url: str) -> int:
    [(n,)] = rawdb.execute(url, "SELECT COUNT(*) FROM {events} WHERE topic = ?",
                           (chain.EVENT_TOPIC,))
    return int(n)


def midway(positions: dict[str, int], head: int) -> bool:
    return any(0 < p < head for p in positions.values())


def assert_complete_and_equal_to_rebuild(store: Store) -> None:
    positions, head = assert_views_match_positions(store)
    assert set(positions.values()) == {head}
    incremental = dump(store)
    Projector(store).rebuild()
    assert dump(store) == incremental
    assert query_indexes() <= index_names(store)


# -- the tests ----------------------------------------------------------------------------


def test_ingest_killed_with_projections_attached_leaves_views_at_their_positions(
    store: Store, store_url: str, workload: tuple[Path, int], tmp_path: Path
) -> None:
    """kill -9 during an ingest with projections attached: views match their positions at
    every kill, and a re-run ingests the rest, applies nothing twice, equals a rebuild."""
    src, lines = workload
    record_grants(store)
    Projector(store).status()  # create the view tables, so progress can be polled
    landed = 0
    for attempt, (step, delay) in enumerate(zip(INGEST_STEPS, KILL_DELAYS, strict=True)):
        start = min(progress(store)[0].values())

        def ready(start: int = start, step: int = step) -> bool:
            positions, head = progress(store)
            return min(positions.values()) >= start + step and midway(positions, head)

        run_and_kill(["ingest", store_url, str(PROJECTOR_BATCH), str(src),
                      str(tmp_path / f"rejects-{attempt}.jsonl"), str(INGEST_BATCH)], ready, delay)
        positions, head = assert_views_match_positions(store)
        landed += midway(positions, head)
        if landed == KILLS:
            break
    assert landed == KILLS, f"only {landed} kills landed while projections were behind the log"
    trace_events = count_trace_events(store_url)
    assert 0 < trace_events < lines, "the ingest was not cut short"

    add_grant(store, "tenant-002", "critic", "memory/planner", valid_from="2026-11-17",
              by="user:test")  # re-evaluates writes already projected
    Projector(store, batch_size=1_000).attach()  # resumes from the positions left behind
    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "rejects.jsonl"),
                     batch_size=2_000)
    assert summary.rejected == 0 and summary.accepted + summary.duplicates == lines
    assert summary.duplicates >= trace_events  # (a killed client's last COMMIT may land late)
    assert count_trace_events(store_url) == lines
    assert_complete_and_equal_to_rebuild(store)
    findings = view_db(store.backend).query("SELECT kind, tenant, trace_id, seq FROM {findings}")
    assert findings and len(set(findings)) == len(findings), "a finding recorded twice"


def test_rebuild_killed_midway_leaves_views_at_their_positions(
    store: Store, store_url: str, workload: tuple[Path, int], tmp_path: Path
) -> None:
    """kill -9 during a rebuild: views match their positions, and catching up gives
    exactly the views a complete build gives."""
    src, _ = workload
    record_grants(store)
    ingest(store, [str(src)], reject_file=str(tmp_path / "rejects.jsonl"), batch_size=5_000)
    Projector(store).catch_up()
    built = dump(store)
    landed = 0
    for share, delay in zip(REBUILD_STOPS, KILL_DELAYS, strict=False):
        head = progress(store)[1]

        def ready(stop: int = int(head * share)) -> bool:
            positions, head = progress(store)
            return stop <= min(positions.values()) and midway(positions, head)

        run_and_kill(["rebuild", store_url, str(PROJECTOR_BATCH)], ready, delay)
        positions, head = assert_views_match_positions(store)
        landed += midway(positions, head)
        if landed == KILLS:
            break
    assert landed == KILLS, f"only {landed} kills landed mid-rebuild"
    assert query_indexes() - index_names(store), "a rebuild builds them after the rows"
    Projector(store).catch_up()
    assert query_indexes() <= index_names(store), "the next projector builds them"
    assert dump(store) == built
    assert_complete_and_equal_to_rebuild(store)


def query_indexes() -> set[str]:
    """Names of the indexes the projections' queries use."""
    return {statement.split("EXISTS ")[1].split()[0]
            for p in PROJECTIONS for statement in p.query_indexes}


def index_names(store: Store) -> set[str]:
    """Names of the AgentLedger indexes in the store's database."""
    db = view_db(store.backend)
    if isinstance(db, PostgresViewDB):  # this test's schema only
        rows = db.query("SELECT indexname FROM pg_indexes WHERE schemaname = ?", (db.schema,))
    else:
        rows = db.query("SELECT name FROM sqlite_master WHERE type = 'index'")
    return {name for (name,) in rows}
