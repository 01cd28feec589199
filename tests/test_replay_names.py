"""The names stored replays are given: ``<source>~replay-<n>``, the first n free.

``write_replay`` finds the first free n by looking up the names themselves, a few
at a time (``ledger.replays.NAMES_AT_ONCE``), so writing a replay costs the same
however many replays the tenant has; ``write_replays`` stores several in one
transaction (a saved backtest's chunk). On both backends.
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger import chain
from ledger import replays as replays_module
from ledger.replays import list_replays, read_replay, write_replay, write_replays
from ledger.store import Store

START = {"seq": 1, "event": "EXEC_START", "ts": "2026-11-20T10:00:00Z", "agent_owner": "a",
         "executed_by": "a", "payload": {}, "memory_hash": chain.GENESIS_HASH}


def replay_of(store: Store, tenant: str, source: str) -> str:
    link = {"tenant": tenant, "source_trace_id": source, "fork_seq": 1, "agent_owner": "a"}
    return write_replay(store, link, [{**START, "tenant": tenant, "trace_id": source}])


def test_each_replay_of_a_source_takes_the_next_number(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replays_module, "NAMES_AT_ONCE", 4)  # several lookups per name
    names = [replay_of(store, "acme", "run-1") for _ in range(11)]
    assert names == [f"run-1~replay-{n}" for n in range(1, 12)]
    listed = list_replays(store, "acme", source="run-1")
    assert [link["replay_trace_id"] for link in listed] == names  # oldest first, not by text
    assert read_replay(store, "acme", "run-1~replay-11").link["source_trace_id"] == "run-1"


def test_numbers_are_counted_per_tenant_and_per_source(store: Store) -> None:
    replay_of(store, "acme", "run-1")
    replay_of(store, "acme", "run-1")
    assert replay_of(store, "globex", "run-1") == "run-1~replay-1"  # another tenant's
    assert replay_of(store, "acme", "run-2") == "run-2~replay-1"
    assert replay_of(store, "acme", "run") == "run~replay-1"  # a prefix of another source
    # A replay of a replay: its name begins like its source's other replays.
    assert replay_of(store, "acme", "run-1~replay-1") == "run-1~replay-1~replay-1"
    assert replay_of(store, "acme", "run-1") == "run-1~replay-3"


def test_a_name_taken_between_the_lookup_and_the_append_is_not_overwritten(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer stores run-1~replay-1 after this one found it free: the append
    fails on the stream's version, and the next free name is looked up again."""
    real = replays_module._free_names
    calls: list[str] = []

    def raced(*args: Any) -> list[str]:
        names = real(*args)
        if not calls:
            replay_of_without_race(store)
        calls.extend(names)
        return names

    def replay_of_without_race(s: Store) -> None:
        monkeypatch.setattr(replays_module, "_free_names", real)
        try:
            assert replay_of(s, "acme", "run-1") == "run-1~replay-1"
        finally:
            monkeypatch.setattr(replays_module, "_free_names", raced)

    monkeypatch.setattr(replays_module, "_free_names", raced)
    assert replay_of(store, "acme", "run-1") == "run-1~replay-2"
    assert calls == ["run-1~replay-1", "run-1~replay-2"]
    links = list_replays(store, "acme")
    assert [link["replay_trace_id"] for link in links] == ["run-1~replay-1", "run-1~replay-2"]


def test_replays_written_together_take_the_names_one_at_a_time_would(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several replays in one transaction: each source's next free numbers, in order,
    the same source twice included, whatever its earlier replays."""
    monkeypatch.setattr(replays_module, "NAMES_AT_ONCE", 2)  # more than one lookup round
    for _ in range(3):
        replay_of(store, "acme", "run-1")
    before = store.backend.last_notification_id()

    def item(tenant: str, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        link = {"tenant": tenant, "source_trace_id": source, "fork_seq": 1, "agent_owner": "a"}
        return link, [{**START, "tenant": tenant, "trace_id": source}]

    names = write_replays(store, [item("acme", "run-1"), item("acme", "run-2"),
                                  item("acme", "run-1"), item("globex", "run-1")])
    assert names == ["run-1~replay-4", "run-2~replay-1", "run-1~replay-5", "run-1~replay-1"]
    assert store.backend.last_notification_id() == before + 8  # a link and an event each
    assert [r.link["tenant"] for r in (read_replay(store, "acme", "run-1~replay-5"),
                                       read_replay(store, "globex", "run-1~replay-1"))] == [
        "acme", "globex"]
    assert [link["replay_trace_id"] for link in list_replays(store, "acme", source="run-1")] == [
        f"run-1~replay-{n}" for n in range(1, 6)]
    assert write_replays(store, []) == []
