"""Large events: an ingest batch and a page of the log end by bytes as well as by count,
so memory stays bounded whatever the events' size, and every result is the same."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_ingest import ev, rejects, tool, write_lines
from viewdump import dump

from ledger import ingest as ingest_module
from ledger.ingest import ingest
from ledger.store import Store
from ledger.verify import verify
from ledger.workload import demo_events
from projections import Projector, runner


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
    """A rebuild and a catch-up whose pages end at READ_BYTES fill the views as
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
    monkeypatch.setattr(runner, "READ_BYTES", 3000)
    Projector(store).rebuild(workers=1)
    assert dump(store) == whole
    assert len(pages) > 10
    assert all(sum(page[:-1]) < 3000 <= sum(page) for page in pages[:-1])
    pages.clear()
    for projection in runner.NAMES:  # a catch-up from zero, page by page
        Projector(store, [projection]).rebuild(workers=1)
    assert dump(store) == whole


def test_large_events_are_ingested_and_projected_in_bounded_memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty events of 1 MiB each, in batches and pages of 4 MiB: the ingest and the
    projections' catch-up allocate less than the input holds (with batches by count
    alone, all forty were held at once, several times over)."""
    monkeypatch.setattr(ingest_module, "BATCH_BYTES", 4 * 2**20)
    monkeypatch.setattr(runner, "READ_BYTES", 4 * 2**20)
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
