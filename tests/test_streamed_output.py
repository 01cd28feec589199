"""``failures --json`` and ``audit writes --json|--csv`` take their rows one at a time
(``projections/streamed.py``) and print what the whole list printed before, on SQLite
and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from contextlib import closing
from pathlib import Path

import pytest
from clirun import run, write_demo

from ledger.store import Store
from projections import queries, streamed


@pytest.fixture
def demo(store_url: str, tmp_path: Path) -> str:
    code, _, err = run(store_url, "ingest", str(write_demo(tmp_path / "demo.jsonl")),
                       "--reject-file", str(tmp_path / "rejected.jsonl"))
    assert code == 0, err
    return store_url


def _indented(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("args", [[], ["--tool", "search"], ["--limit", "3"],
                                  ["--since", "2099-01-01"]])
def test_failures_json_prints_the_list_the_query_gives(
        demo: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamed, "FETCH_ROWS", 2)  # SQLite: many fetches
    code, out, err = run(demo, "failures", "--tenant", "acme", *args, "--json")
    filters = dict(zip([a.lstrip("-") for a in args[::2]], args[1::2], strict=True))
    if "limit" in filters:
        filters["limit"] = int(filters["limit"])  # type: ignore[assignment]
    with Store.open(demo) as store:
        rows = queries.failures(store, "acme", **filters)  # type: ignore[arg-type]
    assert code == 0, err
    assert out == _indented([r.as_json() for r in rows])
    assert (len(json.loads(out)) > 0) == ("--since" not in args)


def test_audit_writes_json_and_csv_print_the_list_the_query_gives(demo: str) -> None:
    with Store.open(demo) as store:
        rows = [r.as_json() for r in queries.audit_writes(store, "acme")]
    code, out, _ = run(demo, "audit", "writes", "--tenant", "acme", "--json")
    assert code == 0 and out == _indented(rows) and len(rows) > 10
    code, out, _ = run(demo, "audit", "writes", "--tenant", "acme", "--csv")
    table = list(csv.reader(io.StringIO(out, newline="")))
    assert code == 0
    assert table[0] == ["tenant", "trace_id", "seq", "ts", "scope", "key", "op",
                        "executed_by", "agent_owner", "cross_agent", "authorized", "basis"]
    assert [(r[1], int(r[2])) for r in table[1:]] == [(r["trace_id"], r["seq"]) for r in rows]


@pytest.mark.parametrize("query", ["failures", "audit_writes", "audit_findings"])
def test_a_stream_left_part_way_gives_its_store_back(demo: str, query: str) -> None:
    """Closed after one row, the read ends; the store then answers and takes writes."""
    whole_of, stream_of = getattr(queries, query), getattr(queries, "stream_" + query)
    with Store.open(demo) as store:
        whole = whole_of(store, "acme")
        with closing(stream_of(store, "acme")) as rows:
            assert next(rows) == whole[0]
        assert whole_of(store, "acme") == whole
    code, _, err = run(demo, "grants", "add", "--tenant", "acme", "--agent", "writer",
                       "--scope", "memory/planner", "--by", "auditor")
    assert code == 0, err


@pytest.mark.parametrize("args", [[], ["--status", "terminated"], ["--limit", "2"]])
def test_trace_list_json_prints_the_list_the_query_gives(demo: str, args: list[str]) -> None:
    from ledger.reader import list_traces

    code, out, err = run(demo, "trace", "list", "--tenant", "acme", *args, "--json")
    status = "terminated" if "--status" in args else None
    with Store.open(demo) as store:
        rows = list_traces(store, "acme", status=status, limit=2 if "--limit" in args else None)
    assert code == 0, err
    assert out == _indented([r.as_json() for r in rows]) and rows


def test_a_catalog_stream_left_part_way_gives_its_store_back(demo: str) -> None:
    from ledger.backends.base import StreamQuery
    from ledger.reader import iter_traces, list_traces

    with Store.open(demo) as store:
        whole = list_traces(store, "acme")
        with closing(iter_traces(store, "acme")) as traces:
            assert next(traces) == whole[0]
        with closing(store.backend.iter_streams(StreamQuery(tenant="acme"))) as heads:
            assert next(heads).name == whole[0].trace_id
        assert list_traces(store, "acme") == whole
    code, _, err = run(demo, "grants", "add", "--tenant", "acme", "--agent", "writer",
                       "--scope", "memory/planner", "--by", "auditor")
    assert code == 0, err
