"""A ledger under attack: a finding per event, then a problem per event, through the CLI.

The workload (tenants of traces of ten events) is ingested; then the same file,
each event's ``executed_by`` changed, is submitted again: every line a conflict,
recorded as a finding. ``audit findings --json`` and ``audit export`` of one tenant
are measured. Then every stored record is altered behind the ledger's back (a byte
appended), so ``verify`` finds a problem for each event: ``verify --json``,
``verify`` (the table) and ``audit export`` of one tenant are measured again. Each
command runs in a child process whose peak RSS is measured: none of them should
hold the findings or the problems.

Run through ``scripts/bench.py --only tampered`` (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import psycopg

from ledger.workload import synthetic_lines

TENANTS = 4
TENANT = "tenant-000"  # the one whose findings are read and which is exported
BEFORE = {  # name: (arguments, the exit code it must give)
    "ingest": (["ingest", "{input}", "--reject-file", "{work}/t-rejects.jsonl", "--json"], 0),
    "ingest of the file changed": (["ingest", "{changed}", "--reject-file",
                                    "{work}/t-rejects2.jsonl", "--json"], 3),
    "audit findings --json": (["audit", "findings", "--tenant", TENANT, "--json"], 0),
    "audit export (a finding per event)": (["audit", "export", "--tenant", TENANT, "--force",
                                            "{work}/t-export.jsonl"], 0),
}
AFTER = {  # once every stored record is altered
    "verify --json (a problem per event)": (["verify", "--json"], 4),
    "verify (a problem per event)": (["verify"], 4),
    "audit export (a problem per event)": (["audit", "export", "--tenant", TENANT, "--force",
                                            "{work}/t-export.jsonl"], 4),
}


def write_files(work: Path, events: int) -> tuple[Path, Path]:
    """The workload, and the same lines each with another ``executed_by``."""
    first, changed = work / "tampered.jsonl", work / "tampered-changed.jsonl"
    with first.open("wb") as a, changed.open("wb") as b:
        for line in synthetic_lines(events, events_per_trace=10, tenants=TENANTS):
            a.write(line)
            b.write(orjson.dumps({**orjson.loads(line), "executed_by": "intruder"}) + b"\n")
    return first, changed


def alter_every_record(url: str) -> None:
    """Append a space to every stored record's bytes, as someone with write access could."""
    if url.startswith("sqlite:"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as con, con:
            con.execute("UPDATE agentledger_events SET state = CAST(state || ' ' AS BLOB)")
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE agentledger_events SET state = state || '\\x20'::bytea")


def run_commands(store_url: str, work: Path, events: int,
                 measure: Callable[[list[str]], tuple[float, float, float, int]]
                 ) -> dict[str, tuple[float, float]]:
    """Each command of BEFORE, then (every record altered) of AFTER, on ``store_url``:
    (seconds, peak RSS of all its processes in MB). ``measure(args)`` runs ``agentledger
    --store URL args`` and gives (seconds, largest process's MB, all processes' MB,
    exit code)."""
    first, changed = write_files(work, events)
    try:
        values = {"input": first, "changed": changed, "work": work}
        found = run_each(BEFORE, store_url, values, measure)
        alter_every_record(store_url)
        return {**found, **run_each(AFTER, store_url, values, measure)}
    finally:
        for path in (first, changed, work / "t-export.jsonl", work / "t-rejects.jsonl",
                     work / "t-rejects2.jsonl"):
            path.unlink(missing_ok=True)


def run_each(commands: dict[str, tuple[list[str], int]], store_url: str,
             values: dict[str, Any],
             measure: Callable[[list[str]], tuple[float, float, float, int]]
             ) -> dict[str, tuple[float, float]]:
    """Each of ``commands`` (name: arguments with ``{...}`` filled from ``values``, and
    the exit code it must give) on ``store_url``: (seconds, peak RSS of all its
    processes in MB). A command that exits otherwise stops the benchmark."""
    found = {}
    for name, (args, code) in commands.items():
        argv = ["--store", store_url, *(a.format(**values) for a in args)]
        secs, _, total_mb, returncode = measure(argv)
        if returncode != code:
            raise SystemExit(f"agentledger {' '.join(argv)} exited {returncode}, not {code}")
        found[name] = (secs, total_mb)
    return found
