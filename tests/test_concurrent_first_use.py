"""Several processes using a new store at once: the first use creates the ledger's
schema and the views, and every one of them must succeed, whichever gets there first.

Each round starts three ``agentledger ingest`` processes of the same file on a store
that does not exist yet (on PostgreSQL, a schema that does not), released together
once their imports are done. Before the fix, eight rounds in nine failed on SQLite
("database is locked", a duplicate schema version) and every one on PostgreSQL (a
duplicate key in ``pg_type`` or ``pg_namespace``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ledger.store import Store
from ledger.verify import verify
from ledger.workload import synthetic_lines

PROCESSES, ROUNDS, EVENTS = 3, 3, 3000
_CLI = ("import os, time\nfrom ledger.cli.main import main\n"
        "import ledger.cli.views, ledger.ingest, ledger.store, projections.runner\n"
        "while not os.path.exists({go!r}): time.sleep(0.001)\nmain()")


def _fresh_url(store_url: str, tmp_path: Path, k: int) -> str:
    if store_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'round{k}.db'}"
    return store_url.split("?")[0] + f"?schema=r{k}_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_starting_on_a_new_store_all_succeed(store_url: str, tmp_path: Path,
                                                       round_: int) -> None:
    """Three processes ingest the same file into a new store at once: each exits 0, the
    events are stored once (the others count duplicates) and the ledger verifies."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(synthetic_lines(EVENTS, events_per_trace=10, tenants=2)))
    url = _fresh_url(store_url, tmp_path, round_)
    go = tmp_path / "go"  # every process waits for it, so they open the store together
    procs = [subprocess.Popen(
        [sys.executable, "-c", _CLI.format(go=str(go)), "--store", url, "ingest", str(source),
         "--json", "--reject-file", str(tmp_path / f"rejected-{k}.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(PROCESSES)]
    time.sleep(1.5)  # the interpreters start and import what the CLI will, then poll
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()
    summaries = [json.loads(out) for out, _ in results]
    assert sum(s["accepted"] for s in summaries) == EVENTS
    assert all(s["accepted"] + s["duplicates"] == EVENTS for s in summaries)
    with Store.open(url) as store:
        report = verify(store)
    assert report.ok and report.events == EVENTS
