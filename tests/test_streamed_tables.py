"""Human tables and ``audit findings`` take their rows one at a time.

``emit_table`` prints exactly what ``table`` printed of the whole list, whatever the
cells hold. ``failures``, ``audit writes``, ``trace list`` and ``audit findings`` print
a table row for each row their ``--json`` gives, in its order. ``audit findings`` reads
its three sources (the ledger's findings, unauthorized writes, unreadable records) in
one query ordered by trace, seq and kind, by code point on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import rawdb
from clirun import run, run_json
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import chain
from ledger.cli.common import emit_table, table
from ledger.store import Store
from ledger.workload import demo_events
from projections import queries, streamed

NAMES = ["B", "a", "_x", "é", "Z9", "a+b", "ß", "A", "日本", "a-1", "a.1", "0", "\u00e9\u0301"]
"""Trace ids whose code point order differs from most collations' (case, accents, signs)."""

cells = st.text(st.characters(codec="utf-8", exclude_characters="\ud800"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.text("abc_ ", min_size=1, max_size=6), min_size=n, max_size=n),
    st.lists(st.lists(cells, min_size=n, max_size=n), max_size=6))))
def test_emit_table_prints_what_table_printed(case: tuple[list[str], list[list[str]]]) -> None:
    headers, rows = case
    import io
    import sys

    out = io.BytesIO()
    real, sys.stdout = sys.stdout, io.TextIOWrapper(out, encoding="utf-8")
    try:
        emit_table(iter(rows), headers, empty="Nothing.")
    finally:
        sys.stdout, captured = real, sys.stdout
        captured.detach()  # flushed; ``out`` stays open
    expected = table(rows, headers) if rows else "Nothing."
    assert out.getvalue().decode() == expected + "\n"


def _mixed_lines(tmp_path: Path) -> tuple[Path, Path]:
    """The demo's events with acme's traces renamed to NAMES (two apiece), and some of
    them again at another time: conflicts."""
    renamed: dict[str, str] = {}
    lines, again = [], []
    for k, event in enumerate(e for e in demo_events() if e["tenant"] == "acme"):
        name = renamed.setdefault(event["trace_id"], f"{NAMES[len(renamed) % len(NAMES)]}"
                                                     f"-{len(renamed) // len(NAMES)}")
        event = {**event, "trace_id": name}
        lines.append(orjson.dumps(event))
        if k % 7 == 0:
            again.append(orjson.dumps({**event, "ts": "2026-01-01T00:00:00Z"}))
    (first := tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (second := tmp_path / "again.jsonl").write_bytes(b"\n".join(again) + b"\n")
    return first, second


@pytest.fixture
def mixed(store_url: str, tmp_path: Path) -> str:
    first, second = _mixed_lines(tmp_path)
    code, _, err = run(store_url, "ingest", str(first), "--reject-file", str(tmp_path / "r"))
    assert code in (0, 3), err
    code, _, err = run(store_url, "ingest", str(second), "--reject-file", str(tmp_path / "r2"))
    assert code == 3, err  # conflicts
    return store_url


def test_findings_of_every_source_in_code_point_order(mixed: str, tmp_path: Path) -> None:
    trace = "日本-0"
    sid = chain.trace_stream_id("acme", trace)
    rawdb.set_state(mixed, sid, 3, b"X" + rawdb.get_state(mixed, sid, 3)[1:])
    code, _, err = run(mixed, "projections", "rebuild")
    assert code == 0, err
    found = run_json(mixed, "audit", "findings", "--tenant", "acme")
    kinds = {f["kind"] for f in found}
    assert {"conflict", "unauthorized_write", "unreadable_record"} <= kinds, kinds
    key = [(f["trace_id"] or "", f["seq"] or 0, f["kind"]) for f in found]
    assert key == sorted(key)  # Python compares strings by code point
    assert len({f["trace_id"] for f in found}) > 5
    assert [f for f in found if f["kind"] == "unreadable_record"] == [
        {"tenant": "acme", "trace_id": trace, "seq": 3, "kind": "unreadable_record",
         "detail": found[key.index((trace, 3, "unreadable_record"))]["detail"], "at": None}]
    writes = [w for w in run_json(mixed, "audit", "writes", "--tenant", "acme")
              if not w["authorized"]]
    assert sorted((f["trace_id"], f["seq"]) for f in found if f["kind"] == "unauthorized_write"
                  ) == sorted((w["trace_id"], w["seq"]) for w in writes if w["trace_id"] != trace
                              or w["seq"] != 3)
    conflicts = [f for f in found if f["kind"] == "conflict"]
    rejected = [orjson.loads(line) for line in (tmp_path / "r2").read_bytes().splitlines()]
    assert sorted((f["trace_id"], f["seq"]) for f in conflicts) == sorted(
        (orjson.loads(r["raw"])["trace_id"], orjson.loads(r["raw"])["seq"]) for r in rejected
        if r["reason"].startswith("conflict"))
    for kind in queries.FINDING_KINDS:  # each kind alone: the same rows, in the same order
        assert run_json(mixed, "audit", "findings", "--tenant", "acme", "--kind", kind) == [
            f for f in found if f["kind"] == kind]
    assert run_json(mixed, "audit", "findings", "--tenant", "acme", "--trace", trace) == [
        f for f in found if f["trace_id"] == trace]
    assert run_json(mixed, "audit", "findings", "--tenant", "globex") == []


def _table_rows(out: str) -> list[list[str]]:
    """A printed table's rows, cut at the columns its dashes give."""
    lines = out.splitlines()
    spans, at = [], 0
    for dashes in lines[1].split("  "):
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    return [[line[a:b].strip() for a, b in spans] for line in lines[2:]]


READS: list[tuple[list[str], list[str], str]] = [
    (["failures"], ["trace_id", "seq"], "No failures."),
    (["audit", "writes"], ["trace_id", "seq"], "No memory writes."),
    (["audit", "findings"], ["trace_id", "seq"], "No findings."),
    (["trace", "list"], ["trace_id"], "No traces."),
]


@pytest.mark.parametrize(("command", "fields", "empty"), READS)
def test_a_table_row_for_each_json_row_in_its_order(
        mixed: str, command: list[str], fields: list[str], empty: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamed, "FETCH_ROWS", 2)  # SQLite: many fetches
    rows = run_json(mixed, *command, "--tenant", "acme")
    code, out, err = run(mixed, *command, "--tenant", "acme")
    assert code == 0, err
    header = out.splitlines()[0].split()
    shown = _table_rows(out)
    assert len(rows) > 3 and len(shown) == len(rows)
    assert [[r[header.index(f)] for f in fields] for r in shown] == [
        [str(j[f]) for f in fields] for j in rows]
    assert run(mixed, *command, "--tenant", "nobody") == (
        0, empty + "\n", "warning: tenant 'nobody' has no traces in this store\n")


def test_an_unknown_kind_is_refused_before_any_read(mixed: str) -> None:
    from ledger.errors import UsageError

    with Store.open(mixed) as store, pytest.raises(UsageError, match="unknown finding kind"):
        queries.stream_audit_findings(store, "acme", kind="nope")
