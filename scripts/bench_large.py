"""Large events: one trace of N events of 1 MiB each, through the CLI.

Ingest (with projections), a rebuild of the projections, verify and an audit export
of it, each in a child process whose peak RSS is measured. Batches and pages end by
bytes as well as by count, and scans give a stream's rows as they arrive, so none of
them should hold the trace, or a few hundred of its events, at once.

Run through ``scripts/bench.py --only large`` (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

EVENT_BYTES = 2**20  # the tool output of each event
COMMANDS = {  # what is measured, and the exit code it must give
    "ingest": (["ingest", "{input}", "--reject-file", "{work}/large-rejects.jsonl", "--json"], 0),
    "projections rebuild": (["projections", "rebuild", "--json"], 0),
    "verify": (["verify", "--json"], 0),
    "audit export": (["audit", "export", "--tenant", "default", "--force",
                      "{work}/large-export.jsonl"], 0),
}


def write_trace(path: Path, events: int) -> int:
    """One trace of ``events`` TOOL_EXEC events, each with an output of EVENT_BYTES
    (of two-byte characters); the file's size."""
    output = "é" * (EVENT_BYTES // 2)
    with path.open("wb") as fh:
        for seq in range(1, events + 1):
            fh.write(orjson.dumps({
                "trace_id": "large", "seq": seq, "event": "TOOL_EXEC",
                "ts": f"2026-11-20T10:{seq // 60 % 60:02d}:{seq % 60:02d}Z",
                "agent_owner": "agent", "executed_by": "agent",
                "payload": {"tool": "fetch", "args": {"n": seq}, "success": True,
                            "output": output}}) + b"\n")
        return fh.tell()


def run_commands(store_url: str, input_path: Path, work: Path,
                 measure: Callable[[list[str]], tuple[float, float, float, int]]
                 ) -> dict[str, tuple[float, float]]:
    """Each command of COMMANDS on ``store_url``: (seconds, peak RSS of all its
    processes in MB). ``measure(args)`` runs ``agentledger --store URL args`` and
    gives (seconds, largest process's MB, all processes' MB, exit code)."""
    found = {}
    for name, (args, code) in COMMANDS.items():
        argv = ["--store", store_url, *(a.format(input=input_path, work=work) for a in args)]
        secs, _, total_mb, returncode = measure(argv)
        if returncode != code:
            raise SystemExit(f"large: agentledger {' '.join(argv)} exited {returncode}")
        found[name] = (secs, total_mb)
    return found
