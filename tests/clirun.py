"""What CLI tests share: the CLI run in process (click's CliRunner), and the demo input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from ledger.cli.main import main
from ledger.workload import demo_events


def run(url: str, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
    """``agentledger --store URL ARGS...``: exit code, stdout, stderr."""
    result = CliRunner().invoke(main, ["--store", url, *args], input=input)
    return result.exit_code, result.stdout, result.stderr


def run_json(url: str, *args: str) -> Any:
    """The command with ``--json``, which must exit 0; its output decoded."""
    code, out, err = run(url, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def run_process(url: str, *args: str, stdout: Any = subprocess.PIPE,
                before: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """``agentledger --store URL ARGS`` in a process of its own (stdout as given, stderr
    captured), for what CliRunner cannot show: real file descriptors, signals, limits.
    ``before`` runs in the child before the command starts (``preexec_fn``)."""
    entry = "from ledger.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", entry, "--store", url, *args],
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=before)


def write_demo(path: Path) -> Path:
    """The demo workload's valid events as a JSONL file at ``path``."""
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in demo_events()))
    return path
