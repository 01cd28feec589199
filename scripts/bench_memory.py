"""Memory-heavy traces: one scope written N times, each write to a new key (the state
grows with every write and its hash covers all of it) or to the same key.

Run through ``scripts/bench.py --only memory`` (see docs/BENCHMARKS.md); each function
takes a store URL and returns seconds.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Any

import orjson

from ledger import Store
from ledger.ingest import ingest
from ledger.verify import verify

KEY_ORDERS = ("one key", "new keys in order", "new keys in random order")


def memory_lines(n: int, order: str) -> list[bytes]:
    """``n`` memory writes of trace ``m`` to scope ``memory/a`` (each value ~60 bytes)."""
    keys = [f"key-{i:06d}" for i in range(n)]
    if order == "one key":
        keys = ["key"] * n
    elif order == "new keys in random order":
        random.Random(1).shuffle(keys)
    return [orjson.dumps({
        "trace_id": "m", "seq": seq, "event": "CALLBACK_MEMORY_WRITE",
        "ts": "2026-11-20T10:00:00Z", "agent_owner": "a", "executed_by": "a",
        "write_scope": "memory/a", "payload": {"key": key, "value": {"i": seq, "s": "x" * 40}},
    }) for seq, key in enumerate(keys, 1)]


def ingest_and_verify(url: str, lines: list[bytes]) -> dict[str, Any]:
    """Seconds to ingest ``lines`` into a fresh store (one process, no projections),
    then to verify it."""
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\n".join(lines) + b"\n")
        with Store.open(url) as store:
            start = time.perf_counter()
            summary = ingest(store, [path], workers=1, reject_file=path + ".rejects")
            ingested = time.perf_counter() - start
            if summary.accepted != len(lines):
                raise SystemExit(f"memory ingest accepted {summary.accepted} of {len(lines)}")
            start = time.perf_counter()
            report = verify(store, workers=1)
            verified = time.perf_counter() - start
            if not report.ok:
                raise SystemExit(f"memory verify: {report.problems[:3]}")
        return {"ingest_s": ingested, "verify_s": verified}
    finally:
        os.unlink(path)
