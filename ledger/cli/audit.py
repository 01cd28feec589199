"""The ``audit`` commands: who wrote what memory, integrity findings, evidence export.

Library modules are imported inside the commands so ``agentledger --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import closing
from typing import Any

import click

from ledger.cli.common import (
    EXIT_PROBLEMS,
    LIMIT,
    all_or_nothing,
    emit_json,
    emit_json_array,
    emit_table,
    handle_errors,
    json_option,
    open_store,
    printable,
    tenant_option,
)
from ledger.cli.views import catch_up, open_views, progress_bar, short

FINDING_KINDS = ("conflict", "memory_hash_mismatch", "unauthorized_write", "unreadable_record")


@click.group("audit")
def audit_group() -> None:
    """For auditors: memory-write attribution, integrity findings, evidence export."""


@audit_group.command("writes")
@tenant_option()
@click.option("--scope", metavar="memory/AGENT", help="Only writes to this scope.")
@click.option("--by", metavar="AGENT", help="Only writes executed by this agent.")
@click.option("--key", help="Only writes of this memory key.")
@click.option("--trace", "trace_id", metavar="ID", help="Only this trace.")
@click.option("--since", metavar="TIME", help="At or after this time (RFC 3339 or date).")
@click.option("--until", metavar="TIME", help="At or before this time.")
@click.option("--limit", type=LIMIT, help="At most this many rows.")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (a header row, then rows).")
@click.pass_context
@handle_errors
def audit_writes(ctx: click.Context, tenant: str, scope: str | None, by: str | None,
                 key: str | None, trace_id: str | None, since: str | None, until: str | None,
                 limit: int | None, as_json: bool, as_csv: bool) -> None:
    """Every memory write of a tenant with who made it and with what right, oldest first."""
    from ledger.errors import UsageError
    from projections.queries import stream_audit_writes

    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    filters: dict[str, Any] = {"scope": scope, "by": by, "key": key, "trace_id": trace_id,
                               "since": since, "until": until, "limit": limit}
    # a row at a time, in any form: a tenant's whole history may be asked for
    with open_views(ctx, "audit_writes") as store, closing(
        stream_audit_writes(store, tenant, **filters)
    ) as streamed:
        if as_json:
            emit_json_array(r.as_json() for r in streamed)
        elif as_csv:
            _print_csv((r.as_json() for r in streamed), WRITE_COLUMNS)
        else:
            emit_table(([r.ts[:23], r.trace_id, str(r.seq), r.scope, r.key, r.op,
                         r.executed_by, "cross-agent" if r.cross_agent else "",
                         r.basis or "UNAUTHORIZED"] for r in streamed),
                       ["ts", "trace_id", "seq", "scope", "key", "op", "executed_by", "cross",
                        "authorized by"], empty="No memory writes.")


WRITE_COLUMNS = ("tenant", "trace_id", "seq", "ts", "scope", "key", "op", "executed_by",
                 "agent_owner", "cross_agent", "authorized", "basis")
"""``audit writes --csv`` columns (the ``--json`` fields, in this order)."""


def _print_csv(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """A header row, then the rows, taken one at a time (see ``all_or_nothing``)."""
    import csv
    import io

    from projections.export import csv_cell

    with all_or_nothing() as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        out = csv.writer(text, lineterminator="\r\n")
        out.writerow(columns)
        out.writerows([csv_cell(row.get(c)) for c in columns] for row in rows)
        text.flush()
        text.detach()  # the file stays open for all_or_nothing to print


@audit_group.command("findings")
@tenant_option()
@click.option("--kind", type=click.Choice(FINDING_KINDS), help="Only findings of this kind.")
@click.option("--trace", "trace_id", metavar="ID", help="Only this trace.")
@json_option
@click.pass_context
@handle_errors
def audit_findings(ctx: click.Context, tenant: str, kind: str | None, trace_id: str | None,
                   as_json: bool) -> None:
    """Integrity findings: conflicts, memory-hash mismatches and unauthorized writes."""
    from projections.queries import stream_audit_findings

    with open_views(ctx, "audit_findings") as store, closing(
        stream_audit_findings(store, tenant, kind=kind, trace_id=trace_id)
    ) as streamed:
        if as_json:
            emit_json_array(r.as_json() for r in streamed)
        else:
            emit_table(([r.trace_id or "", "" if r.seq is None else str(r.seq), r.kind,
                         (r.at or "")[:23], short(r.detail, 100)] for r in streamed),
                       ["trace_id", "seq", "kind", "at", "detail"], empty="No findings.")


@audit_group.command("export")
@click.argument("out", metavar="OUT.jsonl|OUT.csv", type=click.Path(dir_okay=False))
@tenant_option()
@click.option("--since", metavar="TIME", help="Events at or after this time (RFC 3339 or date).")
@click.option("--until", metavar="TIME", help="Events at or before this time.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option
@click.pass_context
@handle_errors
def audit_export(ctx: click.Context, out: str, tenant: str, since: str | None,
                 until: str | None, force: bool, as_json: bool) -> None:
    """Write a tenant's events and findings in a window, verified, to OUT (JSONL or CSV).

    Exit 0 when every record verifies, 4 when verification found a problem (the
    file is written either way and says which events are affected).
    """
    from projections.export import export_audit

    with open_store(ctx) as store, progress_bar("Exporting") as progress:
        catch_up(store, query="audit_findings")
        summary = export_audit(store, tenant, out, since=since, until=until, force=force,
                               progress=progress)
    if as_json:
        emit_json(summary.as_json())
    else:
        state = "every record verifies" if summary.verified_ok else click.style(
            f"ALTERED: {summary.problems} problem(s), {summary.events_not_ok} exported "
            "event(s) affected", fg="red")
        if summary.verified_streams == 0:  # a mistyped tenant must not read as a clean bill
            state = printable(f"nothing to verify: tenant {tenant!r} has no streams")
        click.echo(printable(f"Wrote {summary.events:,} events of {summary.traces:,} traces "
                             f"and {summary.findings:,} findings of tenant {tenant!r} to "
                             f"{summary.path} (") + state + ").")  # its colour is ours
    if not summary.verified_ok:
        sys.exit(EXIT_PROBLEMS)
