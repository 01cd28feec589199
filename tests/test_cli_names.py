"""Names a shell passes as bytes that are not UTF-8, and values no store could hold.

A file name may be any bytes. Python holds those that are not UTF-8 as lone
surrogates (``"\\udce9"`` for the Latin-1 ``é``), which neither JSON encoders nor the
databases take. The ledger shows such a name escaped (``caf\\xe9.jsonl``) wherever it
writes one, and refuses such text as an option compared with what is stored (exit 2).
Each of these was an internal error (exit 1), and an ingest that rejected a line of
such a file stored none of its batch, on every re-run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import orjson
import pytest
from clirun import run, run_process, write_demo

from ledger.cli.common import TEXT, printable
from ledger.cli.main import main
from ledger.paths import shown

LATIN1 = "caf\udce9"  # how Python holds an argument or file name of the bytes b"caf\xe9"
SHOWN = "caf\\xe9"


def test_a_name_is_shown_with_the_bytes_that_are_not_utf8_escaped() -> None:
    assert os.fsencode(LATIN1) == b"caf\xe9"
    assert shown(LATIN1 + ".jsonl") == SHOWN + ".jsonl"
    assert shown("café.jsonl") == "café.jsonl"  # valid UTF-8 stays as it is
    assert shown("\ud800") == "\\ud800"  # a surrogate no bytes decode to (made in Python)
    assert printable(f"{LATIN1}.jsonl: no such file\x1b") == f"{SHOWN}.jsonl: no such file\\x1b"


def test_a_file_whose_name_is_not_utf8_is_ingested_and_named_escaped(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source, rejects = LATIN1 + ".jsonl", "rejects-" + LATIN1 + ".jsonl"
    valid = write_demo(tmp_path / "demo.jsonl").read_bytes().splitlines(keepends=True)[:3]
    Path(source).write_bytes(b"".join(valid) + b"{bad\n")

    code, out, err = run(store_url, "ingest", source, "--reject-file", rejects, "--json")
    assert code == 3, err
    summary = json.loads(out)
    assert (summary["accepted"], summary["rejected"]) == (3, 1)
    assert summary["sources"] == [SHOWN + ".jsonl"]
    assert summary["reject_file"] == "rejects-" + SHOWN + ".jsonl"
    saved = [orjson.loads(line) for line in Path(rejects).read_bytes().splitlines()]
    assert [(e["source"], e["line"], e["raw"]) for e in saved] == [(SHOWN + ".jsonl", 4, "{bad")]

    code, out, err = run(store_url, "ingest", source, "--reject-file", rejects, "--json")
    assert (code, json.loads(out)["duplicates"]) == (3, 3), err


def test_human_output_names_the_file_escaped_where_stdout_takes_only_utf8(
        sqlite_url: str, tmp_path: Path) -> None:
    """Outside the C locale Python's stdout refuses lone surrogates (``strict``);
    printing a file name as given failed the command after its work was done."""
    source = tmp_path / (LATIN1 + ".jsonl")
    source.write_bytes(b"{bad\n")
    rejects = tmp_path / ("r" + LATIN1 + ".jsonl")
    entry = "from ledger.cli.main import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", entry, "--store", sqlite_url, "ingest", str(source),
         "--reject-file", str(rejects)], capture_output=True, timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 3, done.stderr
    assert done.stdout.decode().splitlines()[-1] == (
        f"Rejected lines saved to {tmp_path}/r{SHOWN}.jsonl")
    assert rejects.exists()


def test_a_missing_file_whose_name_is_not_utf8_is_named_escaped(store_url: str) -> None:
    code, _, err = run(store_url, "ingest", "none-" + LATIN1 + ".jsonl")
    assert code == 2
    assert err.strip() == f"Error: none-{SHOWN}.jsonl: no such file"


def test_an_export_to_a_name_that_is_not_utf8_reports_it_escaped(
        store_url: str, tmp_path: Path) -> None:
    run(store_url, "ingest", str(write_demo(tmp_path / "demo.jsonl")), "--json")
    out_path = str(tmp_path / (LATIN1 + ".jsonl"))
    code, out, err = run(store_url, "audit", "export", "--tenant", "acme", out_path, "--json")
    assert code == 0, err
    assert json.loads(out)["path"] == str(tmp_path / (SHOWN + ".jsonl"))
    assert os.path.getsize(out_path) > 0


NOT_UTF8 = f"'{SHOWN}' is not valid UTF-8"


@pytest.mark.parametrize(("args", "said"), [
    (["trace", "list", "--tenant", LATIN1], NOT_UTF8),
    (["trace", "show", LATIN1, "--tenant", "acme"], NOT_UTF8),
    (["audit", "writes", "--tenant", "acme", "--by", LATIN1], NOT_UTF8),
    (["memory", "show", "--tenant", "acme", "--trace", "t", "--scope", LATIN1], NOT_UTF8),
    (["grants", "add", "--tenant", "acme", "--agent", LATIN1, "--scope", "memory/a"], NOT_UTF8),
    (["stats", "fallbacks", "--tenant", "acme\x00"], "'acme\\x00' holds the NUL character"),
])
def test_text_no_store_could_hold_is_a_usage_error_naming_the_option(
        store_url: str, args: list[str], said: str) -> None:
    code, _, err = run(store_url, *args)
    assert code == 2, err
    assert "Invalid value for" in err
    assert said in err


def test_every_plain_text_parameter_is_checked_and_file_names_are_not() -> None:
    """Each command's text parameters get the checking type, so one added later
    cannot pass a lone surrogate to a query; file names keep any bytes."""
    def commands(group: click.Group) -> list[click.Command]:
        found: list[click.Command] = []
        for command in group.commands.values():
            found += commands(command) if isinstance(command, click.Group) else [command]
        return found

    texts, paths = 0, set()
    for command in commands(main):
        for param in command.params:
            assert type(param.type) is not click.types.StringParamType, (command.name, param.name)
            texts += param.type is TEXT
            if isinstance(param.type, click.Path):
                paths.add(f"{command.name} {param.name}")
    assert texts > 50
    assert {"ingest files", "ingest reject_file", "export out", "run policy_path",
            "backtest outcomes_path"} <= paths


def test_a_postgres_url_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run(f"postgresql://user@/{LATIN1}?host={tmp_path}", "verify")
    assert code == 2
    assert f"PostgreSQL URL 'postgresql://user@/{SHOWN}?host=" in err


def test_a_sqlite_store_may_have_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / (LATIN1 + '.db')}"
    assert run_process(url, "init", "--json").returncode == 0
    assert (tmp_path / (LATIN1 + ".db")).exists()


@pytest.mark.parametrize("command", [["trace", "list"], ["failures", "--tenant", "acme"],
                                     ["audit", "writes", "--tenant", "acme"]])
def test_a_limit_beyond_64_bits_is_a_usage_error(store_url: str, command: list[str]) -> None:
    code, _, err = run(store_url, *command, "--limit", str(2**64))
    assert code == 2
    assert "'--limit'" in err
    code, _, err = run(store_url, *command, "--limit", str(2**63 - 1), "--json")
    assert code == 0, err
