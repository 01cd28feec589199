"""Large events: an ingest batch and a page of the log end by bytes as well as by count,
so memory stays bounded whatever the events' size, and every result is the same."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ingest import ev, rejects, tool, write_lines
from viewdump import dump

from ledger import ingest as ingest_module
from ledger.ingest import ingest
from ledger.store import Store
from ledger.verify import verify
from ledger.workload import demo_events
from projections import Projector, runner
from projections.export import export_audit


def test_an_ingest_batch_ends_once_its_lines_hold_batch_bytes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch stops at the line that brings it to BATCH_BYTES; all are stored."""
    monkeypatch.setattr(ingest_module, "BATCH_BYTES", 1000)
    batches: list[list[int]] = []
    commit = ingest_module._commit

    def spy(app: Any, batch: list[Any], *args: Any) -> None:
        if batch:
            batches.append([len(line.raw) for line, _ in batch])
        commit(app, batch, *args)

    monkeypatch.setattr(ingest_module, "_commit", spy)
    big = {"tool": "fetch", "args": {}, "success": True, "output": "a" * 1500}
    lines = [ev("t1"), tool("t1", 2, big), *[ev(f"s{k}") for k in range(9)],
             tool("t1", 3, big), tool("t1", 4, big), ev("t2")]
    src = write_lines(tmp_path / "in.jsonl", lines)
    summary = ingest(store, [src], reject_file=str(tmp_path / "r.jsonl"))
    assert (summary.accepted, summary.rejected) == (len(lines), 0)
    sizes = [len(orjson.dumps(line)) for line in lines]
    assert [size for batch in batches for size in batch] == sizes
    assert all(sum(batch[:-1]) < 1000 <= sum(batch) for batch in batches[:-1])
    assert len(batches) == 5 and [len(batch) for batch in batches] == [2, 8, 2, 1, 1]


def test_projections_read_in_pages_of_read_bytes_give_the_same_views(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild and a catch-up whose pages end by bytes (ENTRY_BYTES) fill the views as
    pages of any count do; the pages are cut where the bytes say."""
    demo = tmp_path / "demo.jsonl"
    demo.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in demo_events()))
    ingest(store, [str(demo)], reject_file=str(tmp_path / "r.jsonl"))
    Projector(store).rebuild(workers=1)
    whole = dump(store)
    pages: list[list[int]] = []
    read_log = store.backend.read_log

    def spy(after: int, limit: int, max_bytes: int | None = None) -> Any:
        rows = read_log(after, limit, max_bytes)
        if rows:
            pages.append([len(r[4]) for r in rows])
        return rows

    monkeypatch.setattr(store.backend, "read_log", spy)
    monkeypatch.setattr(runner, "ENTRY_BYTES", 30)  # pages of 100 entries: 3,000 bytes
    Projector(store, batch_size=100).rebuild(workers=1)
    assert dump(store) == whole
    assert len(pages) > 10
    assert all(sum(page[:-1]) < 3000 <= sum(page) for page in pages[:-1])
    pages.clear()
    for projection in runner.NAMES:  # a catch-up from zero, page by page
        Projector(store, [projection], batch_size=100).rebuild(workers=1)
    assert dump(store) == whole


def test_large_events_are_ingested_and_projected_in_bounded_memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty events of 1 MiB each, in batches and pages of 4 MiB: the ingest and the
    projections' catch-up allocate less than the input holds (with batches by count
    alone, all forty were held at once, several times over)."""
    monkeypatch.setattr(ingest_module, "BATCH_BYTES", 4 * 2**20)
    monkeypatch.setattr(runner, "ENTRY_BYTES", 4 * 2**20 // runner.CATCH_UP_BATCH)
    src = tmp_path / "in.jsonl"
    output = {"tool": "fetch", "args": {}, "success": True, "output": "é" * 2**19}
    write_lines(src, [ev("big")] + [tool("big", seq, output) for seq in range(2, 42)])
    tracemalloc.start()
    try:
        summary = ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
        read = Projector(store).catch_up()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (summary.accepted, read) == (41, 41), rejects(tmp_path / "r.jsonl")
    assert peak < 40 * 2**20, f"peak {peak:,} bytes of Python allocations"
    assert verify(store).ok


def test_a_long_trace_of_large_events_is_verified_and_exported_in_bounded_memory(
    store: Store, tmp_path: Path
) -> None:
    """Verify reads a stream's rows as they come: forty events of 1 MiB in one trace
    are checked holding a fraction of them (a stream was held whole, and PostgreSQL
    sent them 64 to a message), and an export takes them all away."""
    src = tmp_path / "in.jsonl"
    output = {"tool": "fetch", "args": {}, "success": True, "output": "é" * 2**19}
    write_lines(src, [ev("big")] + [tool("big", seq, output) for seq in range(2, 42)])
    ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
    Projector(store).catch_up()
    tracemalloc.start()
    try:
        report = verify(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.events == 41
    assert peak < 20 * 2**20, f"peak {peak:,} bytes of Python allocations"
    exported = tmp_path / "out.jsonl"
    export_audit(store, "default", exported)
    events = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert [e["seq"] for e in events if e["type"] == "event"] == list(range(1, 42))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_postgres_groups_are_given_out_in_version_order(large: list[bool]) -> None:
    """However large and small states mix in a stream, the groups PostgreSQL sends (per
    block of 64 versions: the small states' group, then each large state alone) come
    out in version order, no run holding more than one large state."""
    from ledger.backends.postgres_scan import GROUP, in_version_order

    rows, groups = [], []
    for key in (b"a", b"b"):  # two streams: the same blocks, one after the other
        mine = [(key, v, v, "t", b"L" if big else b"s") for v, big in enumerate(large, 1)]
        rows += mine
        for block in range(len(mine) // GROUP + 1):
            here = [r for r in mine if r[1] // GROUP == block]
            small = [r for r in here if r[4] == b"s"][::-1]  # an array's order: not promised
            groups += ([small] if small else []) + [[r] for r in here if r[4] == b"L"]
    arrays = [(group[0][0], *map(list, zip(*(r[1:] for r in group), strict=True)))
              for group in groups]
    runs = list(in_version_order(arrays))
    assert [r for run in runs for r in run] == rows
    assert all(len({r[0] for r in run}) == 1 for run in runs)
    assert all(sum(r[4] == b"L" for r in run) <= 1 for run in runs)


def test_trace_show_reads_a_trace_of_large_events_a_record_at_a_time(
    store_url: str, tmp_path: Path
) -> None:
    """The timeline of forty events of 1 MiB is written holding a fraction of them
    (all the records were decoded and held first)."""
    from clirun import run

    src = tmp_path / "in.jsonl"
    output = {"tool": "fetch", "args": {}, "success": True, "output": "é" * 2**19}
    write_lines(src, [ev("big")] + [tool("big", seq, output) for seq in range(2, 42)])
    with Store.open(store_url) as store:
        ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"))
    tracemalloc.start()
    try:
        code, out, err = run(store_url, "trace", "show", "big", "--tenant", "default")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert len(out.splitlines()) == 2 + 41 and "fetch ok" in out
    assert peak < 20 * 2**20, f"peak {peak:,} bytes of Python allocations"
