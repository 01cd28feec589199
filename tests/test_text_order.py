"""Text sorts by code point on both backends, whatever the PostgreSQL server's locale.

The test database is created with an ICU ``en-US`` collation (``conftest.py``), as
most servers order text: case-insensitively first, punctuation ignored. SQLite
compares bytes. Rows that tie on time are listed by trace id, tool or key, so where
the views compared text by the server's collation, the same query would list them
in another order on PostgreSQL than on SQLite.
"""

from __future__ import annotations

from typing import Any

from clirun import run_json

from ledger.store import Store
from ledger.writer import TraceWriter

TENANT = "acme"
TRACES = ("beta", "Alpha", "_gamma", "Zulu", "\u00e9clair", "alpha", "Beta-2")
TOOLS = ("search", "Search", "_probe", "zeta", "\u00c9tude", "Fetch", "fetch")
TS = "2026-11-20T10:00:0{}.000000Z"  # every trace's n-th event at the same instant


def record_traces(store: Store) -> None:
    writer = TraceWriter(store, tenant=TENANT)
    for trace, tool in zip(TRACES, TOOLS, strict=True):
        steps: list[tuple[str, dict[str, Any], str | None]] = [
            ("EXEC_START", {}, None),
            ("TOOL_EXEC", {"tool": tool, "args": {}, "success": False,
                           "error_reason": "500 down", "error_class": "retryable"}, None),
            ("CALLBACK_MEMORY_WRITE", {"key": tool, "value": 1}, "memory/writer"),
        ]
        for n, (event, payload, scope) in enumerate(steps, 1):
            writer.record(trace, event, payload, agent_owner="planner", executed_by="writer",
                          write_scope=scope, ts=TS.format(n))
    writer.flush()


def by_code_point(values: list[str]) -> list[str]:
    return sorted(values, key=lambda v: v.encode("utf-8"))


def test_rows_that_tie_on_time_are_listed_by_code_point(store: Store) -> None:
    record_traces(store)
    url = store.url
    failures = run_json(url, "failures", "--tenant", TENANT, "--event", "TOOL_EXEC")
    assert [r["trace_id"] for r in failures] == by_code_point(list(TRACES))
    writes = run_json(url, "audit", "writes", "--tenant", TENANT)
    assert [w["trace_id"] for w in writes] == by_code_point(list(TRACES))
    traces = run_json(url, "trace", "list", "--tenant", TENANT)
    assert [t["trace_id"] for t in traces] == by_code_point(list(TRACES))


def test_counts_by_text_keys_are_listed_by_code_point_among_equals(store: Store) -> None:
    record_traces(store)
    rows = run_json(store.url, "stats", "failures", "--tenant", TENANT, "--by", "tool")
    assert [r["tool"] for r in rows] == by_code_point(list(TOOLS))


def test_postgres_views_made_with_the_databases_collation_are_rebuilt(postgres_url: str) -> None:
    """Views made before their text columns were created ``COLLATE "C"`` are rebuilt
    when a projector next prepares them, to the same rows, in code-point order."""
    import psycopg
    from psycopg import sql
    from rawdb import _pg_target
    from viewdump import dump

    from projections import Projector

    with Store.open(postgres_url) as store:
        Projector(store).attach()
        record_traces(store)
        built = dump(store)
    conninfo, schema = _pg_target(postgres_url)
    older = sql.SQL('ALTER TABLE {} ALTER COLUMN trace_id TYPE text COLLATE "default"')
    collations = sql.SQL(
        "SELECT a.attcollation::regcollation::text FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'trace_id'")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(older.format(sql.Identifier(schema, "agentledger_failures")))
        assert conn.execute(collations, (schema, "agentledger_failures")).fetchall() == [
            ("\"default\"",)]
    failures = run_json(postgres_url, "failures", "--tenant", TENANT, "--event", "TOOL_EXEC")
    assert [r["trace_id"] for r in failures] == by_code_point(list(TRACES))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute(collations, (schema, "agentledger_failures")).fetchall() == [
            ("\"C\"",)]
    with Store.open(postgres_url) as store:
        assert dump(store) == built
        assert all(s.lag == 0 and not s.rebuild_needed for s in Projector(store).status())
