"""The ``grants`` commands: add, revoke and list a tenant's write grants.

Each is one call of :mod:`ledger.grants` (imported inside the command, so
``agentledger --help`` stays fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ledger.cli.common import (
    emit_json,
    handle_errors,
    json_option,
    open_store,
    printable,
    table,
    tenant_option,
)

if TYPE_CHECKING:
    from ledger.grants import Grant


@click.group()
def grants() -> None:
    """Tenant grants: standing permissions to write another agent's memory."""


@grants.command("add")
@tenant_option()
@click.option("--agent", required=True, help="The agent allowed to write.")
@click.option("--scope", required=True, metavar="memory/AGENT", help="The scope it may write.")
@click.option("--from", "valid_from", metavar="TIME",
              help="Start (RFC 3339 or YYYY-MM-DD = midnight UTC). Default: now.")
@click.option("--until", "valid_until", metavar="TIME",
              help="End, exclusive (RFC 3339 or YYYY-MM-DD). Default: open-ended.")
@click.option("--by", help="Who grants it. Default: user:<login name>.")
@click.option("--reason", help="Why (kept on the record).")
@json_option
@click.pass_context
@handle_errors
def grants_add(ctx: click.Context, tenant: str, agent: str, scope: str, valid_from: str | None,
               valid_until: str | None, by: str | None, reason: str | None,
               as_json: bool) -> None:
    """Record a grant letting --agent write --scope in every trace of --tenant."""
    from ledger.grants import add_grant

    with open_store(ctx, writes="record a grant in it") as store:
        grant = add_grant(store, tenant, agent, scope, valid_from=valid_from,
                          valid_until=valid_until, by=by, reason=reason)
    if as_json:
        emit_json(grant.as_json())
    else:
        click.echo(printable(f"Granted {grant.grant_id}: {grant.agent} may write {grant.scope} "
                             f"from {grant.valid_from} {_until(grant)} (tenant {grant.tenant!r})."))


@grants.command("revoke")
@click.argument("grant_id")
@tenant_option()
@click.option("--at", metavar="TIME", help="When the grant ends (RFC 3339). Default: now.")
@click.option("--by", help="Who revokes it. Default: user:<login name>.")
@click.option("--reason", help="Why (kept on the record).")
@json_option
@click.pass_context
@handle_errors
def grants_revoke(ctx: click.Context, grant_id: str, tenant: str, at: str | None,
                  by: str | None, reason: str | None, as_json: bool) -> None:
    """End grant GRANT_ID of --tenant at --at (exit 5 if the tenant has no such grant)."""
    from ledger.grants import revoke_grant

    with open_store(ctx, writes="record a revocation in it") as store:
        grant = revoke_grant(store, tenant, grant_id, at=at, by=by, reason=reason)
    if as_json:
        emit_json(grant.as_json())
    else:
        click.echo(printable(f"Revoked {grant.grant_id} ({grant.agent} on {grant.scope}) at "
                             f"{grant.revoked_at}."))


@grants.command("list")
@tenant_option()
@json_option
@click.pass_context
@handle_errors
def grants_list(ctx: click.Context, tenant: str, as_json: bool) -> None:
    """List a tenant's grants, oldest first, revoked ones included."""
    from ledger.grants import list_grants

    with open_store(ctx) as store:
        found = list_grants(store, tenant)
    if as_json:
        emit_json([g.as_json() for g in found])
        return
    if not found:
        click.echo("No grants.")
        return
    click.echo(table([[g.grant_id, g.agent, g.scope, g.valid_from[:19], (g.valid_until or "")[:19],
                       (g.revoked_at or "")[:19], g.by, g.reason or ""] for g in found],
                     ["grant_id", "agent", "scope", "valid_from", "valid_until", "revoked_at",
                      "by", "reason"]))


def _until(grant: Grant) -> str:
    return f"until {grant.valid_until}" if grant.valid_until else "with no end"
