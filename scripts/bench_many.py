"""A busy tenant: many short traces, through the CLI.

One tenant of ``TRACES`` traces of two events each is ingested; then the commands
that read every trace of a tenant (``verify`` in one process and in the default
number, ``trace list --json``, ``audit export``) each run in a child process whose
peak RSS is measured. None of them should hold the tenant's catalog rows: before
the changes of 2026-12-06 an export held them twice (482 MB for 200,000 traces).

Run through ``scripts/bench.py --only many`` (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench_tampered import run_each

from ledger.workload import synthetic_lines

TRACES = 200_000
TENANT = "tenant-000"
COMMANDS = {  # name: (arguments, the exit code it must give)
    "ingest": (["ingest", "{input}", "--reject-file", "{work}/m-rejects.jsonl", "--json"], 0),
    "verify --workers 1": (["verify", "--workers", "1"], 0),
    "verify": (["verify"], 0),
    "trace list --json": (["trace", "list", "--tenant", TENANT, "--json"], 0),
    "audit export": (["audit", "export", "--tenant", TENANT, "--force",
                      "{work}/m-export.jsonl"], 0),
}


def run_commands(store_url: str, work: Path,
                 measure: Callable[[list[str]], tuple[float, float, float, int]]
                 ) -> dict[str, tuple[float, float]]:
    """Each command of COMMANDS on ``store_url``: (seconds, peak RSS of all its
    processes in MB). ``measure(args)`` runs ``agentledger --store URL args`` and gives
    (seconds, largest process's MB, all processes' MB, exit code)."""
    source = work / "many.jsonl"
    with source.open("wb") as fh:
        fh.writelines(synthetic_lines(2 * TRACES, events_per_trace=2, tenants=1))
    try:
        return run_each(COMMANDS, store_url, {"input": source, "work": work}, measure)
    finally:
        for path in (source, work / "m-export.jsonl", work / "m-rejects.jsonl"):
            path.unlink(missing_ok=True)
