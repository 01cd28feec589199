"""The docs' promises are executable: schema file, auditor script, README example."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run, write_demo

from ledger.ingest import ingest
from ledger.schema import trace_event_schema
from ledger.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _code_block(doc: str, marker: str) -> str:
    text = (ROOT / doc).read_text()
    match = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"no python block after {marker} in {doc}"
    return match.group(1)


def test_shipped_json_schema_is_generated_from_the_models() -> None:
    """docs/trace-event.schema.json equals `python -m ledger.schema` output."""
    shipped = json.loads((ROOT / "docs" / "trace-event.schema.json").read_text())
    assert shipped == json.loads(json.dumps(trace_event_schema()))


@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("audit")
    source = write_demo(folder / "demo.jsonl")
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        ingest(store, [str(source)], reject_file=str(folder / "r.jsonl"))
    return folder / "ledger.db"


def _audit(db: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "audit.py"
    script.write_text(_code_block("docs/VERIFY.md", "<!-- auditor-script -->"))
    return subprocess.run([sys.executable, str(script), str(db)], capture_output=True, text=True)


def test_auditor_script_accepts_an_intact_ledger(demo_ledger: Path, tmp_path: Path) -> None:
    """The stdlib-only script in VERIFY.md says OK for an untouched ledger."""
    result = _audit(demo_ledger, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


EDITS = {
    "byte": "UPDATE agentledger_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
            "'planner', 'plannex') AS BLOB) WHERE notification_id = 5",
    "delete": "DELETE FROM agentledger_events WHERE notification_id = 7",
    "swap": "UPDATE agentledger_events SET state = (SELECT e2.state FROM agentledger_events e2"
            " WHERE e2.originator_id = agentledger_events.originator_id AND"
            " e2.originator_version = 5 - agentledger_events.originator_version)"
            " WHERE originator_id = (SELECT originator_id FROM agentledger_events"
            " WHERE notification_id = 1) AND originator_version IN (2, 3)",
    "truncate": "DELETE FROM agentledger_events WHERE notification_id = (SELECT "
                "MAX(notification_id) FROM agentledger_events WHERE topic LIKE '%trace%')",
    "garbage": "UPDATE agentledger_events SET state = x'7b6e6f74' WHERE notification_id = 9",
    "text": "UPDATE agentledger_events SET state = '[1]' WHERE notification_id = 11",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_auditor_script_catches_each_kind_of_edit(demo_ledger: Path, tmp_path: Path,
                                                  edit: str) -> None:
    """The VERIFY.md script reports an edited, deleted, reordered or truncated row, and
    one that is no longer a JSON object (in bytes or as text)."""
    copy = tmp_path / "ledger.db"
    shutil.copy(demo_ledger, copy)
    db = sqlite3.connect(copy)
    db.execute(EDITS[edit])
    db.commit()
    db.close()
    result = _audit(copy, tmp_path)
    assert result.returncode == 1, result.stdout
    assert "problem(s)" in result.stdout


def test_auditor_script_reads_replays_and_grants_and_catches_an_edit_in_a_replay(
        demo_ledger: Path, tmp_path: Path) -> None:
    """A ledger holding a stored replay (link, then events numbered on from the fork) and
    a grant is intact to the script, as to verify; an edited replay event is not."""
    copy = tmp_path / "ledger.db"
    shutil.copy(demo_ledger, copy)
    url = f"sqlite:///{copy}"
    policy = tmp_path / "policy.json"
    policy.write_text('{"retry": {"max_attempts": 3}}')
    assert run(url, "replay", "contract-fetch", "--tenant", "acme", "--policy",
               str(policy))[0] == 0
    assert run(url, "grants", "add", "--tenant", "acme", "--agent", "critic",
               "--scope", "memory/planner")[0] == 0
    result = _audit(copy, tmp_path)
    assert result.returncode == 0, result.stdout
    db = sqlite3.connect(copy)
    assert db.execute("SELECT count(*) FROM agentledger_events WHERE topic = "
                      "'agentledger.replay.v1'").fetchone()[0] > 2
    db.execute("UPDATE agentledger_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
               "'\"seq\":4', '\"seq\":5') AS BLOB) WHERE topic = 'agentledger.replay.v1' "
               "AND originator_version = 3")
    db.commit()
    db.close()
    result = _audit(copy, tmp_path)
    assert result.returncode == 1 and "seq does not match position" in result.stdout


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's TraceWriter example runs as written and records two events."""
    monkeypatch.chdir(tmp_path)
    exec(_code_block("README.md", "From Python, a runtime records events directly:"), {})
    with Store.open("sqlite:///agentledger.db") as store:
        from ledger.reader import get_trace

        assert get_trace(store, "acme", "run-1").summary.events == 2
