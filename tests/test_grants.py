"""Tenant grants: recorded, revoked and listed through the ledger's chained ``$grants`` stream.

Library calls and the ``agentledger grants`` commands; every store test runs on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rawdb
from clirun import run

from ledger import chain
from ledger.errors import ConcurrencyError, NotFoundError, UsageError
from ledger.grants import Grant, add_grant, list_grants, revoke_grant
from ledger.reader import list_traces
from ledger.store import Store
from ledger.verify import verify

ROOT = Path(__file__).resolve().parent.parent
TENANT, OTHER = "acme", "globex"
SID = chain.grants_stream_id(TENANT)
FIELDS = {"grant_id", "tenant", "agent", "scope", "valid_from", "valid_until", "by", "reason",
          "recorded_at", "revoked_at", "revoked_by", "revoke_reason"}
UTC_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def grant(store: Store, tenant: str = TENANT, **kwargs: Any) -> Grant:
    """A grant letting 'writer' write memory/planner from 2026-01-01 (unless overridden)."""
    args: dict[str, Any] = {"valid_from": "2026-01-01T00:00:00Z", "by": "user:alice",
                            "reason": "cover for planner", **kwargs}
    return add_grant(store, tenant, args.pop("agent", "writer"),
                     args.pop("scope", "memory/planner"), **args)


# -- the library API --------------------------------------------------------------


def test_add_list_revoke_round_trip(store: Store) -> None:
    """An added grant is listed as given; revoking it folds the revocation into it."""
    added = grant(store, valid_until="2026-02-01T00:00:00Z")
    assert re.fullmatch(r"g-[0-9a-f]{12}", added.grant_id)
    assert (added.tenant, added.agent, added.scope, added.by, added.reason) == (
        TENANT, "writer", "memory/planner", "user:alice", "cover for planner")
    assert (added.valid_from, added.valid_until) == (
        "2026-01-01T00:00:00.000000Z", "2026-02-01T00:00:00.000000Z")
    assert added.revoked_at is None and list_grants(store, TENANT) == [added]
    revoked = revoke_grant(store, TENANT, added.grant_id, at="2026-01-15T12:00:00Z",
                           by="user:bob", reason="no longer needed")
    assert revoked == Grant(**{**added.as_json(), "revoked_at": "2026-01-15T12:00:00.000000Z",
                               "revoked_by": "user:bob", "revoke_reason": "no longer needed"})
    assert list_grants(store, TENANT) == [revoked]


def test_as_json_has_exactly_the_documented_fields(store: Store) -> None:
    """Grant.as_json() gives the documented field names and nothing else."""
    assert set(grant(store).as_json()) == FIELDS


def test_list_is_oldest_first(store: Store) -> None:
    """Grants are listed in the order they were recorded."""
    ids = [grant(store, agent=f"writer-{i}").grant_id for i in range(3)]
    assert [g.grant_id for g in list_grants(store, TENANT)] == ids


def test_times_are_normalised_to_utc(store: Store) -> None:
    """Offsets are converted to UTC; a bare date is midnight UTC."""
    added = grant(store, valid_from="2026-01-01T10:00:00+02:00", valid_until="2026-03-01")
    assert (added.valid_from, added.valid_until) == (
        "2026-01-01T08:00:00.000000Z", "2026-03-01T00:00:00.000000Z")


def test_defaults_are_now_and_the_login_name(store: Store) -> None:
    """valid_from defaults to now, valid_until to open-ended, by to user:<login>."""
    added = add_grant(store, TENANT, "writer", "memory/planner")
    assert UTC_TS.match(added.valid_from) and added.valid_from <= added.recorded_at
    assert added.valid_until is None and added.reason is None
    assert added.by.startswith("user:") and len(added.by) > len("user:")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"agent": ""}, "agent"),
    ({"agent": "  "}, "agent"),
    ({"scope": "planner"}, "scope"),
    ({"scope": "memory/"}, "scope"),
    ({"scope": "mem/planner"}, "scope"),
    ({"valid_from": "yesterday"}, "valid_from"),
    ({"valid_until": "2026-13-01T00:00:00Z"}, "valid_until"),
    ({"valid_until": "2025-12-31T23:59:59Z"}, "valid_until"),
    ({"valid_until": "2026-01-01T00:00:00Z"}, "valid_until"),
    ({"by": ""}, "by"),
    ({"agent": "plan\x00ner"}, "agent"),  # U+0000: PostgreSQL text cannot hold it
    ({"scope": "memory/x\x00"}, "scope"),
    ({"by": "user:\x00"}, "by"),
    ({"reason": "\x00"}, "reason"),
    ({"agent": "plan\udcffner"}, "agent"),  # a lone surrogate: no UTF-8 holds it
    ({"scope": "memory/x\ud800"}, "scope"),
    ({"by": "user:\udce9"}, "by"),
    ({"reason": "why\ud800"}, "reason"),
], ids=lambda v: ascii(v) if isinstance(v, dict) else v)
def test_invalid_grant_names_the_field_and_stores_nothing(
    store: Store, kwargs: dict[str, Any], field: str
) -> None:
    """A malformed grant is a UsageError whose message starts with the field; nothing is stored."""
    with pytest.raises(UsageError, match=rf"^{field}: "):
        grant(store, **kwargs)
    assert list_grants(store, TENANT) == [] and verify(store).streams == 0


@pytest.mark.parametrize("tenant", ["", "acme\x00", "t" * 101], ids=["empty", "nul", "101-chars"])
def test_a_tenant_without_a_usable_name_is_refused(store: Store, tenant: str) -> None:
    """A grant must belong to a named tenant, whose name every backend can hold."""
    with pytest.raises(UsageError, match=r"^tenant: "):
        grant(store, tenant=tenant)


def test_revoking_an_unknown_grant_is_not_found(store: Store) -> None:
    """Revoking a grant id the tenant does not have raises NotFoundError (exit 5)."""
    grant(store)
    with pytest.raises(NotFoundError, match="no grant 'g-000000000000' in tenant 'acme'"):
        revoke_grant(store, TENANT, "g-000000000000")


def test_revoking_twice_is_refused_and_records_once(store: Store, store_url: str) -> None:
    """A second revocation of the same grant is a UsageError; only one is stored."""
    added = grant(store)
    first = revoke_grant(store, TENANT, added.grant_id, at="2026-01-10T00:00:00Z")
    with pytest.raises(UsageError, match=rf"^grant_id: {added.grant_id} was already revoked"):
        revoke_grant(store, TENANT, added.grant_id)
    assert list_grants(store, TENANT) == [first]
    assert len(rawdb.rows(store_url, SID)) == 2


def test_bad_revocation_time_names_the_field(store: Store) -> None:
    """An unparseable --at is a UsageError naming 'at'."""
    added = grant(store)
    with pytest.raises(UsageError, match=r"^at: 'soon' is not an RFC 3339 timestamp"):
        revoke_grant(store, TENANT, added.grant_id, at="soon")


def test_grants_are_confined_to_their_tenant(store: Store) -> None:
    """A grant of tenant A is neither listed nor revocable in tenant B."""
    added = grant(store)
    assert list_grants(store, OTHER) == []
    with pytest.raises(NotFoundError):
        revoke_grant(store, OTHER, added.grant_id)
    assert list_grants(store, TENANT) == [added]


def test_grants_stream_is_not_a_trace(store: Store) -> None:
    """The $grants stream is catalogued under its own kind, not among the tenant's traces."""
    grant(store)
    assert list_traces(store, TENANT) == []
    head = store.backend.load_heads([SID])[SID]
    assert (head.kind, head.tenant, head.name, head.last_seq) == (
        chain.GRANTS_KIND, TENANT, chain.GRANTS_STREAM_NAME, 1)


def test_records_are_chained_in_the_documented_format(store: Store, store_url: str) -> None:
    """Stored records have the PROJECTIONS.md fields, topic grant.v1, and a prev_hash chain."""
    added = grant(store)
    revoke_grant(store, TENANT, added.grant_id, by="user:bob")
    rows = rawdb.rows(store_url, SID)
    assert [r.topic for r in rows] == [chain.GRANT_TOPIC] * 2
    add, revoke = (chain.decode(r.state) for r in rows)
    assert list(add) == ["v", "action", "grant_id", "tenant", "agent", "scope", "valid_from",
                         "valid_until", "by", "reason", "recorded_at", "prev_hash"]
    assert list(revoke) == ["v", "action", "grant_id", "tenant", "at", "by", "reason",
                            "recorded_at", "prev_hash"]
    assert (add["v"], add["action"], revoke["action"]) == (1, "add", "revoke")
    assert add["prev_hash"] == chain.GENESIS_HASH
    assert revoke["prev_hash"] == chain.record_hash(rows[0].state)
    assert store.backend.load_heads([SID])[SID].head_hash == chain.record_hash(rows[1].state)


def test_each_write_notifies_commit_listeners(store: Store) -> None:
    """add and revoke each call store.committed() once, after the commit."""
    seen: list[int] = []
    store.add_commit_listener(lambda: seen.append(len(list_grants(store, TENANT))))
    added = grant(store)
    revoke_grant(store, TENANT, added.grant_id)
    assert seen == [1, 1]


def test_a_concurrent_revocation_wins_and_is_rechecked(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When another writer appends first, the head is reloaded and the request re-checked."""
    added = grant(store)
    real_append = store.backend.append
    calls: list[int] = []

    def racing_append(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # another process revokes between our read and our write
            with Store.open(store_url) as other:
                revoke_grant(other, TENANT, added.grant_id, by="user:other")
        return real_append(*args)

    monkeypatch.setattr(store.backend, "append", racing_append)
    with pytest.raises(UsageError, match="already revoked"):
        revoke_grant(store, TENANT, added.grant_id, by="user:me")
    assert [g.revoked_by for g in list_grants(store, TENANT)] == ["user:other"]
    assert verify(store).ok


def test_a_concurrent_add_is_retried(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add that loses a race for the next version is retried on the new head."""
    real_append = store.backend.append
    calls: list[int] = []

    def racing_append(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            with Store.open(store_url) as other:
                grant(other, agent="first")
        return real_append(*args)

    monkeypatch.setattr(store.backend, "append", racing_append)
    grant(store, agent="second")
    assert [g.agent for g in list_grants(store, TENANT)] == ["first", "second"]
    assert len(calls) == 2 and verify(store).ok


def test_persistent_contention_raises_concurrency_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a few lost races the ConcurrencyError reaches the caller; nothing is stored."""
    def always_lose(*args: Any) -> Any:
        raise ConcurrencyError("another writer appended first")

    monkeypatch.setattr(store.backend, "append", always_lose)
    with pytest.raises(ConcurrencyError, match="try again"):
        grant(store)
    monkeypatch.undo()
    assert list_grants(store, TENANT) == []


# -- verification ----------------------------------------------------------------


def test_verify_is_ok_with_grants(store: Store) -> None:
    """Grant streams of several tenants verify like any other stream."""
    added = grant(store)
    revoke_grant(store, TENANT, added.grant_id)
    grant(store, tenant=OTHER)
    report = verify(store)
    assert report.ok and report.findings == []
    assert (report.streams, report.events) == (2, 3)
    assert verify(store, tenant=OTHER).ok


def grant_problems(store: Store) -> set[tuple[str, int | None]]:
    """(kind, seq) of each problem, after checking each names the $grants stream of TENANT."""
    report = verify(store)
    assert not report.ok
    for p in report.problems:
        assert (p.tenant, p.trace_id) == (TENANT, chain.GRANTS_STREAM_NAME), p
    return {(p.kind, p.seq) for p in report.problems}


def forge(store_url: str, version: int, **changes: Any) -> bytes:
    """Rewrite one stored grant record with ``changes``; return the new bytes."""
    record = {**chain.decode(rawdb.get_state(store_url, SID, version)), **changes}
    state = chain.encode(record)
    rawdb.set_state(store_url, SID, version, state)
    return state


def test_edited_grant_breaks_the_chain(store: Store, store_url: str) -> None:
    """Widening a stored grant (another agent) breaks the link to the next record."""
    grant(store)
    grant(store, agent="other")
    forge(store_url, 1, agent="intruder")
    assert grant_problems(store) == {("chain_broken", 2)}


def test_edited_last_grant_mismatches_the_head(store: Store, store_url: str) -> None:
    """Extending the last grant's window no longer matches the catalog head."""
    grant(store, valid_until="2026-02-01T00:00:00Z")
    forge(store_url, 1, valid_until=None)
    assert grant_problems(store) == {("head_mismatch", 1)}


def test_deleted_revocation_is_reported(store: Store, store_url: str) -> None:
    """Deleting a revocation (reviving the grant) is reported as a length mismatch."""
    added = grant(store)
    revoke_grant(store, TENANT, added.grant_id)
    rawdb.delete_event(store_url, SID, 2)
    assert {kind for kind, _ in grant_problems(store)} == {"length_mismatch"}


def test_grant_claiming_another_tenant_is_identity_mismatch(
    store: Store, store_url: str
) -> None:
    """A record naming another tenant than its stream's is reported even with a fixed-up head."""
    grant(store)
    state = forge(store_url, 1, tenant=OTHER)
    rawdb.set_catalog(store_url, SID, "head_hash", chain.record_hash(state))
    assert grant_problems(store) == {("identity_mismatch", 1)}


def test_auditor_script_handles_grants(sqlite_url: str, tmp_path: Path) -> None:
    """The stdlib script in VERIFY.md accepts grants, and catches an edited one."""
    match = re.search(r"<!-- auditor-script -->\s*```python\n(.*?)```",
                      (ROOT / "docs" / "VERIFY.md").read_text(), re.S)
    assert match
    script = tmp_path / "audit.py"
    script.write_text(match.group(1))
    db = sqlite_url.removeprefix("sqlite:///")
    with Store.open(sqlite_url) as store:
        added = grant(store)
        revoke_grant(store, TENANT, added.grant_id)

    def audit() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), db], capture_output=True, text=True)

    result = audit()
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stdout
    forge(sqlite_url, 1, scope="memory/admin")
    result = audit()
    assert result.returncode == 1 and "chain broken" in result.stdout


# -- the CLI ---------------------------------------------------------------------


def test_cli_add_revoke_list_json(store_url: str) -> None:
    """grants add/revoke/list --json print the grant's documented fields and exit 0."""
    code, out, _ = run(store_url, "grants", "add", "--tenant", TENANT, "--agent", "writer",
                       "--scope", "memory/planner", "--from", "2026-01-01",
                       "--until", "2026-02-01T00:00:00+01:00", "--by", "user:alice",
                       "--reason", "cover", "--json")
    added = json.loads(out)
    assert code == 0 and set(added) == FIELDS
    assert (added["valid_from"], added["valid_until"], added["by"], added["revoked_at"]) == (
        "2026-01-01T00:00:00.000000Z", "2026-01-31T23:00:00.000000Z", "user:alice", None)
    code, out, _ = run(store_url, "grants", "revoke", added["grant_id"], "--tenant", TENANT,
                       "--at", "2026-01-15T00:00:00Z", "--by", "user:bob", "--reason", "done",
                       "--json")
    revoked = json.loads(out)
    assert code == 0 and revoked == {**added, "revoked_at": "2026-01-15T00:00:00.000000Z",
                                     "revoked_by": "user:bob", "revoke_reason": "done"}
    code, out, _ = run(store_url, "grants", "list", "--tenant", TENANT, "--json")
    assert code == 0 and json.loads(out) == [revoked]
    code, out, _ = run(store_url, "grants", "list", "--tenant", OTHER, "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(store_url, "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_cli_human_output(store_url: str) -> None:
    """Without --json, add and revoke print one line and list prints a table."""
    code, out, _ = run(store_url, "grants", "list", "--tenant", TENANT)
    assert code == 0 and out.strip() == "No grants."
    code, out, _ = run(store_url, "grants", "add", "--tenant", TENANT, "--agent", "writer",
                       "--scope", "memory/planner")
    assert code == 0 and out.startswith("Granted g-")
    grant_id = out.split()[1].rstrip(":")
    code, out, _ = run(store_url, "grants", "revoke", grant_id, "--tenant", TENANT)
    assert code == 0 and out.startswith(f"Revoked {grant_id} (writer on memory/planner) at ")
    code, out, _ = run(store_url, "grants", "list", "--tenant", TENANT)
    assert code == 0 and out.splitlines()[0].split() == [
        "grant_id", "agent", "scope", "valid_from", "valid_until", "revoked_at", "by", "reason"]
    assert grant_id in out.splitlines()[2]


def test_cli_invalid_grant_exits_2_naming_the_field(store_url: str) -> None:
    """A malformed --scope or --until is exit 2 with one Error: line naming the field."""
    code, _, err = run(store_url, "grants", "add", "--tenant", TENANT, "--agent", "writer",
                       "--scope", "planner")
    assert code == 2 and err.strip() == "Error: scope: must look like memory/<agent>, got 'planner'"
    code, _, err = run(store_url, "grants", "add", "--tenant", TENANT, "--agent", "writer",
                       "--scope", "memory/planner", "--from", "2026-02-01",
                       "--until", "2026-01-01")
    assert code == 2 and err.startswith("Error: valid_until: ")


def test_cli_revoke_unknown_exits_5_and_revoked_exits_2(store_url: str) -> None:
    """Revoking an unknown grant is exit 5; revoking a revoked one is exit 2."""
    code, _, err = run(store_url, "grants", "revoke", "g-nope", "--tenant", TENANT)
    assert code == 5 and err.strip() == "Error: no grant 'g-nope' in tenant 'acme'"
    _, out, _ = run(store_url, "grants", "add", "--tenant", TENANT, "--agent", "writer",
                    "--scope", "memory/planner", "--json")
    grant_id = json.loads(out)["grant_id"]
    assert run(store_url, "grants", "revoke", grant_id, "--tenant", TENANT)[0] == 0
    code, _, err = run(store_url, "grants", "revoke", grant_id, "--tenant", TENANT)
    assert code == 2 and err.startswith(f"Error: grant_id: {grant_id} was already revoked")
    code, _, err = run(store_url, "grants", "revoke", grant_id, "--tenant", OTHER)
    assert code == 5


@pytest.mark.parametrize("command", ["add", "revoke g-1", "list"])
def test_cli_tenant_is_required(tmp_path: Path, command: str) -> None:
    """Every grants command refuses to run without --tenant (click usage error, exit 2)."""
    code, _, err = run(f"sqlite:///{tmp_path / 'ledger.db'}", "grants", *command.split())
    assert code == 2 and "--tenant" in err

