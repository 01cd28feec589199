"""The cyclic collector is paused only for the work, and restored as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.errors import InputError
from ledger.gcpause import paused_gc
from ledger.ingest import ingest
from ledger.store import Store


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()


def test_paused_inside_and_enabled_after_even_on_error() -> None:
    gc.enable()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_caller_that_disabled_it_keeps_it_disabled() -> None:
    gc.disable()
    with paused_gc():
        pass
    assert not gc.isenabled()


def test_ingest_restores_the_collector(store: Store, tmp_path: Path) -> None:
    gc.enable()
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"not json\n" * 7)
    summary = ingest(store, [str(src)], reject_file=str(tmp_path / "r.jsonl"), batch_size=3)
    assert summary.rejected == 7 and gc.isenabled()
    with pytest.raises(InputError):
        ingest(store, [str(tmp_path / "missing.jsonl")], reject_file=str(tmp_path / "r2.jsonl"))
    assert gc.isenabled()
