"""The ``attribution`` projection: who wrote what memory, with what right.

Every memory write gets a row: owner, executor, scope, key, op, whether it is
cross-agent, and whether it was authorized and on what basis (its own scope, an
earlier in-trace ``CALLBACK_PERMISSION``, or a tenant grant). Tenant grants come
from the tenant's ``$grants`` stream; a grant or revocation re-evaluates the writes
it can cover, so the table always equals a fold over the whole log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger import chain
from ledger.timestamps import normalize_ts
from projections.base import Batch, Entry, Projection, indexed, name_equals, utc_ts

INSERT_WRITE = (
    "INSERT INTO {write_attribution} (tenant, trace_id, seq, ts, scope, key, op, executed_by, "
    "agent_owner, cross_agent, authorized, basis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_GRANT = (
    "INSERT INTO {grants} (tenant, grant_id, agent, scope, valid_from, valid_until, granted_by, "
    "reason, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
REVOKE_GRANT = (
    "UPDATE {grants} SET revoked_at = ?, revoked_by = ?, revoke_reason = ? "
    "WHERE tenant = ? AND grant_id = ? AND revoked_at IS NULL"
)
# The earliest grant covering a write (NULL when none does).
_COVERING_GRANT = (
    "(SELECT 'grant:' || g.grant_id FROM {grants} g WHERE g.tenant = w.tenant "
    f"AND {indexed('g.agent')} = {indexed('w.executed_by')} "
    f"AND {indexed('g.scope')} = {indexed('w.scope')} "
    "AND g.agent = w.executed_by AND g.scope = w.scope AND g.valid_from <= w.ts "
    "AND (g.valid_until IS NULL OR w.ts < g.valid_until) "
    "AND (g.revoked_at IS NULL OR w.ts < g.revoked_at) "
    "ORDER BY g.valid_from, g.grant_id LIMIT 1)"
)


def _reevaluations(tenant: str, agent: str, scope: str) -> list[tuple[str, tuple[str, ...]]]:
    """The statements (and parameters) that re-evaluate ``agent``'s writes to ``scope``
    against the tenant's grants, after a grant of them changed."""
    by, by_values = name_equals("w.executed_by", agent)
    to, to_values = name_equals("w.scope", scope)
    where = f"w.tenant = ? AND {by} AND {to} AND w.cross_agent = 1"
    params = (tenant, *by_values, *to_values)
    return [
        ("UPDATE {write_attribution} AS w SET basis = " + _COVERING_GRANT + f" WHERE {where} "
         "AND (w.basis IS NULL OR substr(w.basis, 1, 6) = 'grant:')", params),
        ("UPDATE {write_attribution} AS w SET authorized = CASE WHEN basis IS NULL THEN 0 "
         f"ELSE 1 END WHERE {where}", params),
    ]


_GRANT_TARGET = "SELECT agent, scope FROM {grants} WHERE tenant = ? AND grant_id = ?"
# After a rebuild shared out by stream, whose parts saw either a tenant's grants or
# its traces' writes: every grant-dependent write, against every grant.
_SETTLE = (
    "UPDATE {write_attribution} AS w SET basis = " + _COVERING_GRANT
    + " WHERE w.cross_agent = 1 AND (w.basis IS NULL OR substr(w.basis, 1, 6) = 'grant:')",
    "UPDATE {write_attribution} SET authorized = CASE WHEN basis IS NULL THEN 0 ELSE 1 END "
    "WHERE cross_agent = 1",
)


class AttributionProjection(Projection):
    name = "attribution"
    # 2: the key a unique index, built after the rows in a rebuild; 3: indexes hold names of
    # any length (``indexed``)
    version = 3
    topics = frozenset({chain.EVENT_TOPIC, chain.GRANT_TOPIC})
    tables = ("write_attribution", "grants")
    description = "who wrote what memory, cross-agent writes and their authorization"
    ddl = (
        "CREATE TABLE IF NOT EXISTS {write_attribution} (tenant TEXT NOT NULL, "
        "trace_id TEXT NOT NULL, seq {bigint} NOT NULL, ts TEXT NOT NULL, scope TEXT NOT NULL, "
        "key TEXT NOT NULL, op TEXT NOT NULL, executed_by TEXT NOT NULL, "
        "agent_owner TEXT NOT NULL, cross_agent INTEGER NOT NULL, authorized INTEGER NOT NULL, "
        "basis TEXT)",
        "CREATE INDEX IF NOT EXISTS agentledger_writes_by "  # re-evaluating grants uses it
        f"ON {{write_attribution}} (tenant, {indexed('executed_by')}, {indexed('scope')}, ts)",
        "CREATE TABLE IF NOT EXISTS {grants} (tenant TEXT NOT NULL, grant_id TEXT NOT NULL, "
        "agent TEXT NOT NULL, scope TEXT NOT NULL, valid_from TEXT NOT NULL, valid_until TEXT, "
        "granted_by TEXT, reason TEXT, recorded_at TEXT, revoked_at TEXT, revoked_by TEXT, "
        "revoke_reason TEXT, PRIMARY KEY (tenant, grant_id))",
        "CREATE INDEX IF NOT EXISTS agentledger_grants_target "
        f"ON {{grants}} (tenant, {indexed('agent')}, {indexed('scope')})",
    )
    settle = _SETTLE
    query_indexes = (
        "CREATE UNIQUE INDEX IF NOT EXISTS agentledger_write_attribution_key "
        "ON {write_attribution} (tenant, trace_id, seq)",
        "CREATE INDEX IF NOT EXISTS agentledger_writes_ts ON {write_attribution} (tenant, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_writes_scope "
        f"ON {{write_attribution}} (tenant, {indexed('scope')}, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_writes_key "
        f"ON {{write_attribution}} (tenant, {indexed('key')}, ts)",
        "CREATE INDEX IF NOT EXISTS agentledger_writes_unauthorized "
        "ON {write_attribution} (tenant, authorized, trace_id, seq)",
    )

    def apply(self, entries: Sequence[Entry], batch: Batch) -> None:
        # (tenant, agent, scope) whose writes finish re-evaluates; grants added in this batch
        recheck: dict[tuple[str, str, str], None] = batch.carry.setdefault("recheck", {})
        added: dict[tuple[str, str], tuple[str, str]] = batch.carry.setdefault("added", {})
        for entry in entries:
            r = entry.record
            if entry.topic == chain.GRANT_TOPIC:
                self._grant(r, batch, recheck, added)
                continue
            event = r["event"]
            if event == "CALLBACK_PERMISSION":
                p = r["payload"]
                ctx = batch.context(entry.stream)
                perms = ctx.setdefault("perm", {})
                perms[f"{p['executing_agent']}\t{p['scope']}"] = [bool(p["granted"]), r["seq"]]
                batch.touch(entry.stream)
            elif event == "CALLBACK_MEMORY_WRITE":
                self._write(entry, batch, recheck)

    def finish(self, batch: Batch) -> None:
        for tenant, agent, scope in batch.carry.get("recheck", {}):
            for statement, params in _reevaluations(tenant, agent, scope):
                batch.run(statement, params, late=True)

    def _write(self, entry: Entry, batch: Batch, recheck: dict[tuple[str, str, str], None]) -> None:
        r = entry.record
        scope, writer, payload = r["write_scope"], r["executed_by"], r["payload"]
        cross = scope != "memory/" + writer
        basis: str | None = "own_scope"
        if cross:
            perm = batch.context(entry.stream).get("perm", {}).get(f"{writer}\t{scope}")
            basis = f"permission:{perm[1]}" if perm and perm[0] else None
            if basis is None:
                recheck[(r["tenant"], writer, scope)] = None
        batch.insert(INSERT_WRITE, (
            r["tenant"], r["trace_id"], r["seq"], utc_ts(r), scope, payload["key"],
            "delete" if payload.get("op") == "delete" else "set", writer, r["agent_owner"],
            int(cross), int(basis is not None), basis))

    def _grant(self, r: dict[str, Any], batch: Batch,
               recheck: dict[tuple[str, str, str], None],
               added: dict[tuple[str, str], tuple[str, str]]) -> None:
        tenant, grant_id = r["tenant"], r["grant_id"]
        if r.get("action") == "add":
            until = r.get("valid_until")
            batch.insert(INSERT_GRANT, (
                tenant, grant_id, r["agent"], r["scope"], normalize_ts(r["valid_from"]),
                None if until is None else normalize_ts(until), r.get("by"), r.get("reason"),
                r.get("recorded_at")))
            added[(tenant, grant_id)] = (r["agent"], r["scope"])
            recheck[(tenant, r["agent"], r["scope"])] = None
        elif r.get("action") == "revoke":
            batch.run(REVOKE_GRANT, (normalize_ts(r["at"]), r.get("by"), r.get("reason"),
                                     tenant, grant_id))
            target = added.get((tenant, grant_id))
            if target is None:
                rows = batch.query(_GRANT_TARGET, (tenant, grant_id))
                target = (rows[0][0], rows[0][1]) if rows else None
            if target is not None:
                recheck[(tenant, *target)] = None
