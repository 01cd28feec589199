"""The ledger's commands: init, ingest, verify, trace show|list.

Library modules are imported inside the commands so ``agentledger --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from contextlib import closing
from typing import Any

import click

from ledger.cli.common import (
    EXIT_PROBLEMS,
    EXIT_REJECTED,
    LIMIT,
    emit_json,
    emit_json_array,
    emit_json_lists,
    emit_lines,
    emit_table,
    handle_errors,
    is_terminal,
    json_option,
    open_store,
    printable,
    tenant_option,
    warn_unknown_tenant,
    workers_option,
)


@click.command()
@json_option
@click.pass_context
@handle_errors
def init(ctx: click.Context, as_json: bool) -> None:
    """Create or upgrade the store's schema (also done on first use)."""
    from ledger.redact import redact_url
    from ledger.store import open_backend, resolve_url

    backend = open_backend(resolve_url(ctx.obj.get("store")))
    try:
        applied = backend.migrate()
        version = backend.schema_version()
    finally:
        backend.close()
    shown = redact_url(backend.url)
    if as_json:
        emit_json({"store": shown, "schema_version": version, "applied": applied})
    elif applied:
        click.echo(printable(f"Initialized {shown} (schema version {version})."))
    else:
        click.echo(printable(f"{shown} is up to date (schema version {version})."))


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--reject-file", type=click.Path(dir_okay=False),
              help="Where rejected lines go (JSONL). Default: rejected-<time>.jsonl here.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=5000, show_default=True,
              help="Events per transaction (a batch also ends at 8 MiB of lines).")
@click.option("--reorder", is_flag=True,
              help="Hold and reorder events by seq within each batch instead of rejecting gaps.")
@click.option("--no-projections", is_flag=True,
              help="Do not update the read models (then: agentledger projections run --once).")
@workers_option("streams", " Files under 8 MB per process (and stdin) use fewer.")
@json_option
@click.pass_context
@handle_errors
def ingest(ctx: click.Context, files: tuple[str, ...], reject_file: str | None,
           batch_size: int, reorder: bool, no_projections: bool, workers: int,
           as_json: bool) -> None:
    """Append JSONL trace events from FILES (- for stdin) to the ledger.

    Exit 0 when every line was stored or was a duplicate, 3 when some lines were
    rejected (the rest stored; the rejected ones saved to the reject file).
    """
    from ledger.ingest import check_sources
    from ledger.ingest import ingest as run_ingest

    check_sources(files)
    total = sum(os.path.getsize(f) for f in files if f != "-")
    with open_store(ctx, writes="ingest into it") as store:
        if not no_projections:
            from ledger.cli.views import attach_views

            attach_views(store)
        if is_terminal() and total > 1_000_000:
            with click.progressbar(length=total, label="Ingesting", file=sys.stderr,
                                   show_pos=False, show_percent=True, show_eta=True) as bar:
                summary = run_ingest(store, files, reject_file=reject_file,
                                     batch_size=batch_size, reorder=reorder, progress=bar.update,
                                     workers=workers)
        else:
            summary = run_ingest(store, files, reject_file=reject_file, batch_size=batch_size,
                                 reorder=reorder, workers=workers)
    if as_json:
        emit_json(summary.as_json())
    else:
        line = (f"accepted {summary.accepted:,}  duplicates {summary.duplicates:,}  "
                f"rejected {summary.rejected:,}")
        if summary.findings:
            line += f"  findings {summary.findings:,}"
        click.echo(line)
        if summary.reject_file:
            click.echo(printable(f"Rejected lines saved to {summary.reject_file}"))
    if summary.rejected:
        sys.exit(EXIT_REJECTED)


@click.command()
@tenant_option(required=False)
@click.option("--trace", "trace_id",
              help="Verify only this trace (of --tenant, default 'default').")
@workers_option("streams", " A log under 50,000 events per process uses fewer.")
@json_option
@click.pass_context
@handle_errors
def verify(ctx: click.Context, tenant: str | None, trace_id: str | None, workers: int,
           as_json: bool) -> None:
    """Re-derive every hash chain and memory hash; report anything altered.

    Exit 0 when every record is intact, 4 when any problem is found.
    """
    from ledger.verify import rows_to_check
    from ledger.verify import verify as run_verify

    with open_store(ctx) as store:
        if is_terminal() and not as_json:
            bar: Any
            total = rows_to_check(store, tenant=tenant, trace_id=trace_id)
            with click.progressbar(length=max(total, 1), label="Verifying",
                                   file=sys.stderr) as bar:
                report = run_verify(store, tenant=tenant, trace_id=trace_id, progress=bar.update,
                                    workers=workers)
        else:
            report = run_verify(store, tenant=tenant, trace_id=trace_id, workers=workers)
    if as_json:  # a problem at a time: a ledger altered throughout has one per event
        emit_json_lists(*report.json_parts())
    else:
        _print_verify(report, tenant)
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


def _print_verify(report: Any, tenant: str | None) -> None:
    if report.ok and report.streams == 0:  # a mistyped tenant must not read as a clean bill
        where = f"tenant {tenant!r} has" if tenant is not None else "the store has"
        click.echo(printable(f"Nothing to verify: {where} no streams."))
    elif report.ok:
        click.echo(f"OK: {report.streams:,} streams, {report.events:,} events; every chain "
                   "and memory hash checks out.")
    else:
        click.echo(click.style(f"ALTERED: {len(report.problems)} problem(s) in "
                               f"{report.streams:,} streams, {report.events:,} events", fg="red"))
        emit_table(([p.tenant or "", p.trace_id or "", "" if p.seq is None else str(p.seq),
                     p.kind, p.detail] for p in report.problems),
                   ["tenant", "trace_id", "seq", "kind", "detail"], empty="")
    if report.findings:
        click.echo(f"\n{len(report.findings)} finding(s): runtime-claimed memory hashes that "
                   "the logged writes do not explain (records intact):")
        emit_table(([p.tenant or "", p.trace_id or "", str(p.seq), p.detail]
                    for p in report.findings), ["tenant", "trace_id", "seq", "detail"], empty="")


@click.group()
def trace() -> None:
    """Read traces back."""


@trace.command("show")
@click.argument("trace_id")
@tenant_option(required=False)
@click.option("--from", "first", type=click.IntRange(1, 2**63 - 1), metavar="SEQ",
              help="Only the events from this seq on.")
@click.option("--to", "last", type=click.IntRange(1, 2**63 - 1), metavar="SEQ",
              help="Only the events up to this seq.")
@json_option
@click.pass_context
@handle_errors
def trace_show(ctx: click.Context, trace_id: str, tenant: str | None, first: int | None,
               last: int | None, as_json: bool) -> None:
    """Show one trace's events in order (tenant defaults to 'default')."""
    from ledger.chain import DEFAULT_TENANT
    from ledger.cli.timeline import timeline_lines
    from ledger.errors import UsageError
    from ledger.reader import event_json, iter_records, trace_summary

    if first is not None and last is not None and first > last:
        raise UsageError(f"--from {first} is after --to {last}")
    with open_store(ctx) as store:  # a record at a time, as read: a trace is never held
        summary = trace_summary(store, tenant or DEFAULT_TENANT, trace_id)
        seqs = None if first is None and last is None else (
            first or 1, summary.events if last is None else min(last, summary.events))
        # closed here, while the store is open, should an unreadable record stop it
        with closing(iter_records(store, summary.tenant, summary.trace_id, seqs=seqs)) as rows:
            if as_json:
                emit_json_lists(summary.as_json(), {"events": map(event_json, rows)})
            else:
                emit_lines(timeline_lines(summary, rows, color=sys.stdout.isatty(), seqs=seqs))


@trace.command("list")
@tenant_option(required=False)
@click.option("--status", type=click.Choice(["active", "terminated"]))
@click.option("--since", help="Only traces active at or after this time (RFC 3339 or date).")
@click.option("--until", help="Only traces started at or before this time.")
@click.option("--limit", type=LIMIT, help="At most this many traces.")
@json_option
@click.pass_context
@handle_errors
def trace_list(ctx: click.Context, tenant: str | None, status: str | None, since: str | None,
               until: str | None, limit: int | None, as_json: bool) -> None:
    """List a tenant's traces, oldest first (tenant defaults to 'default')."""
    from ledger.chain import DEFAULT_TENANT
    from ledger.reader import iter_traces

    with open_store(ctx) as store:
        warn_unknown_tenant(store, tenant or DEFAULT_TENANT)
        traces = iter_traces(store, tenant or DEFAULT_TENANT, status=status, since=since,
                             until=until, limit=limit)
        with closing(traces):  # a trace at a time, in either form: a tenant may hold millions
            if as_json:
                emit_json_array(r.as_json() for r in traces)
            else:
                emit_table(([r.trace_id, r.status, str(r.events), r.agent_owner or "",
                             (r.first_ts or "")[:19], (r.last_ts or "")[:19]] for r in traces),
                           ["trace_id", "status", "events", "agent_owner", "first_ts",
                            "last_ts"], empty="No traces.")
