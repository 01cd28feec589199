"""The read-model commands: ``projections``, ``memory`` and ``failures``.

Every read command first brings the projections up to date (:func:`open_views`),
so its answer covers everything committed before it ran. Library modules are
imported inside the commands so ``agentledger --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import TYPE_CHECKING, Any

import click

from ledger.cli.common import (
    EXIT_PROBLEMS,
    LIMIT,
    emit_json,
    emit_json_array,
    emit_table,
    handle_errors,
    is_terminal,
    json_option,
    open_store,
    printable,
    table,
    tenant_option,
    warn_unknown_tenant,
    workers_option,
)

if TYPE_CHECKING:
    from ledger.store import Store
    from projections.runner import Projector


# -- shared by the read commands (also audit.py, stats.py, ingest and demo) -------------

@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr (None off a terminal).

    The bar appears on the first call, so work that finishes within one batch
    shows nothing.
    """
    if not is_terminal():
        yield None
        return
    with ExitStack() as stack:
        bar: Any = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(click.progressbar(
                    length=max(total, 1), label=label, file=sys.stderr))
            bar.length = max(bar.length, total)
            bar.update(done - bar.pos)

        yield update


def catch_up(store: Store, projector: Projector | None = None, *,
             query: str | None = None) -> Projector:
    """Bring the projections up to date (a progress bar on a terminal if there is a backlog).

    On a store this process may not write, with ``query`` (a name in
    ``projections.queries.READS``), only the projections that query reads must have
    views built by this version: after an upgrade that changed one projection,
    queries of the others still answer.
    """
    from projections import Projector

    backend = store.backend
    if projector is None:
        names = None
        if backend.read_only is not None and query is not None:
            from projections.queries import READS  # not on the ingest's path

            names = READS[query]
        projector = Projector(store, names)
    if backend.read_only is not None:  # the views stay as they are: say what they lack
        behind = max((s.lag for s in projector.status()), default=0)
        if behind:
            click.echo(f"warning: {backend.label} is read-only here ({backend.read_only}), "
                       f"so the views cannot catch up: they leave out the last {behind:,} log "
                       "entries (`verify` and `trace show` read the ledger itself)", err=True)
        return projector
    with progress_bar("Updating views") as progress:
        projector.catch_up(progress)
    return projector


def attach_views(store: Store) -> Projector:
    """Catch the projections up, then keep them up to date after every commit (ingest)."""
    return catch_up(store).attach()


@contextmanager
def open_views(ctx: click.Context, query: str) -> Iterator[Store]:
    """Open the store with its projections brought up to date for ``query`` (see
    :func:`catch_up`).

    When the command's tenant has log entries the views had to leave out (their
    stored record cannot be read), a warning on stderr says which.
    """
    from projections.queries import unreadable_entries

    with open_store(ctx) as store:
        catch_up(store, query=query)
        tenant = ctx.params.get("tenant")
        if isinstance(tenant, str):
            warn_unreadable(unreadable_entries(store, tenant))
            warn_unknown_tenant(store, tenant)
        yield store


def warn_unreadable(entries: list[tuple[str | None, int, str]]) -> None:
    """One stderr warning naming the (trace, seq) the views leave out, if any."""
    if not entries:
        return
    where = ", ".join(f"trace {t!r} seq {s}" for t, s, _ in entries[:5])
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    click.echo(f"warning: the views leave out {len(entries)} stored record(s) that cannot "
               f"be read ({where}{more}); run `agentledger verify`", err=True)


def short(value: Any, width: int = 60) -> str:
    """A value as compact JSON text, cut to ``width`` characters for a table."""
    from ledger.chain import encode

    text = printable(value if isinstance(value, str) else encode(value).decode())
    return text if len(text) <= width else text[:width - 1] + "…"


def trace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--tenant T --trace ID [--scope S]``: one trace's memory scope."""
    f = click.option("--scope", metavar="memory/AGENT",
                     help="Memory scope (default: memory/<owner of the trace>).")(f)
    f = click.option("--trace", "trace_id", required=True, metavar="ID", help="Trace id.")(f)
    return tenant_option()(f)


# -- projections ------------------------------------------------------------------------

@click.group("projections")
def projections_group() -> None:
    """The read models: where they stand, rebuild them, keep them up to date."""


@projections_group.command("status")
@json_option
@click.pass_context
@handle_errors
def projections_status(ctx: click.Context, as_json: bool) -> None:
    """Each projection's position in the log, its lag and its version."""
    from projections import Projector

    with open_store(ctx) as store:
        rows = Projector(store).status(outdated=True)
    if as_json:
        emit_json([r.as_json() for r in rows])
        return
    click.echo(table([[r.name, f"{r.position:,}", f"{r.lag:,}", str(r.version),
                       "" if r.built_version is None else str(r.built_version),
                       "yes" if r.rebuild_needed else "",
                       f"{r.unreadable:,}" if r.unreadable else "", r.description]
                      for r in rows],
                     ["name", "position", "lag", "version", "built", "rebuild", "unreadable",
                      "description"]))
    if any(r.unreadable for r in rows):
        click.echo("\nunreadable: log entries left out of the views because their stored "
                   "record cannot be read; `agentledger verify` names them.")


@projections_group.command("rebuild")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@workers_option("streams", " A log under 50,000 entries per process uses fewer; the views "
                "are replaced in one transaction at the end.")
@json_option
@click.pass_context
@handle_errors
def projections_rebuild(ctx: click.Context, names: tuple[str, ...], workers: int,
                        as_json: bool) -> None:
    """Drop projections NAME... (default: all) and replay the log from position 0."""
    from projections import Projector

    with open_store(ctx, writes="rebuild its views") as store, \
            progress_bar("Rebuilding") as progress:
        projector = Projector(store, names or None)
        read = projector.rebuild(progress=progress, workers=workers)
        head = store.backend.last_notification_id()
    rebuilt = [p.name for p in projector.projections]
    if as_json:
        emit_json({"rebuilt": rebuilt, "entries_read": read, "log_head": head})
    else:
        click.echo(f"Rebuilt {', '.join(rebuilt)} from position 0: {read:,} log entries "
                   f"read, now at {head:,}.")


@projections_group.command("check")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@workers_option("fresh fold", " A log under 50,000 entries per process uses fewer.")
@json_option
@click.pass_context
@handle_errors
def projections_check(ctx: click.Context, names: tuple[str, ...], workers: int,
                      as_json: bool) -> None:
    """Compare projections NAME... (default: all) with a fresh fold of the log.

    Exit 0 when every view holds what the log gives, 4 when any row differs (the
    views were edited behind the ledger's back; `projections rebuild` replaces them).
    """
    from projections.check import check_views

    with open_store(ctx) as store, progress_bar("Folding afresh") as progress:
        report = check_views(store, list(names) or None, progress, workers=workers)
    if as_json:
        emit_json(report.as_json())
    else:
        _print_check(report)
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


def _print_check(report: Any) -> None:
    rows = [[p.name, f"{p.position:,}", t.table, f"{t.live_rows:,}", f"{t.fresh_rows:,}",
             f"{t.only_live:,}", f"{t.only_fresh:,}"]
            for p in report.projections for t in p.tables if not t.ok]
    if not rows:
        click.echo(f"OK: the views of {len(report.projections)} projection(s) hold exactly "
                   f"what a fresh fold of the log gives ({report.entries_read:,} log entries "
                   "read).")
        return
    click.echo(click.style(f"ALTERED: {len(rows)} table(s) differ from a fresh fold of the "
                           "log", fg="red"))
    click.echo(table(rows, ["projection", "position", "table", "rows", "fresh rows",
                            "only here", "only fresh"]))
    for p in report.projections:
        for t in p.tables:
            for x in t.examples:
                where = "only in the views" if x["in"] == "live" else "only in a fresh fold"
                times = f" ({x['occurs']} times)" if x["occurs"] != 1 else ""
                click.echo(printable(f"  {t.table}, {where}{times}: {short(x['row'], 1000)}"))
    click.echo("`agentledger projections rebuild` replaces the views with a fresh fold.")


@projections_group.command("run")
@click.option("--once", is_flag=True, help="Catch up once and exit.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              metavar="SECONDS", help="How long to wait between polls of an idle log.")
@json_option
@click.pass_context
@handle_errors
def projections_run(ctx: click.Context, once: bool, interval: float, as_json: bool) -> None:
    """Follow the log and keep every projection up to date (until Ctrl-C, or --once)."""
    import orjson

    from ledger.errors import StoreError
    from ledger.redact import redact_url
    from projections import Projector
    from projections.follower import follow

    with open_store(ctx, writes="keep its views up to date") as store:
        def report(read: int) -> None:
            head = store.backend.last_notification_id()
            if as_json:
                click.echo(orjson.dumps({"entries_read": read, "log_head": head}).decode())
            else:
                click.echo(f"Up to date: {read:,} log entries read; log head {head:,}.")

        if once:
            with progress_bar("Catching up") as progress:
                report(Projector(store).catch_up(progress))
            return
        click.echo(printable(f"Following {redact_url(store.url)} every {interval:g}s (Ctrl-C to "
                             "stop)."), err=True)

        def retrying(error: StoreError, wait: float) -> None:
            click.echo(f"Store unavailable: {printable(str(error), newlines=True)}; "
                       f"retrying in {wait:g}s.", err=True)

        follow(store, interval=interval, on_batch=report, on_retry=retrying,
               progress=lambda: progress_bar("Catching up"))


# -- memory -----------------------------------------------------------------------------

@click.group("memory")
def memory_group() -> None:
    """Agents' memory as the ledger recorded it: its state at any seq, diffs, history."""


@memory_group.command("show")
@trace_options
@click.option("--at", type=click.IntRange(0), metavar="SEQ",
              help="After this event (default: the trace's last).")
@json_option
@click.pass_context
@handle_errors
def memory_show(ctx: click.Context, tenant: str, trace_id: str, scope: str | None,
                at: int | None, as_json: bool) -> None:
    """The memory of a trace's scope after event --at (exit 5 if no such trace)."""
    from projections.queries import memory_state

    with open_views(ctx, "memory_state") as store:
        view = memory_state(store, tenant, trace_id, scope=scope, at=at)
    if as_json:
        emit_json(view.as_json())
        return
    click.echo(printable(f"trace {view.trace_id}  scope {view.scope}  after seq {view.seq}  "
                         f"{view.memory_hash}"))
    click.echo(table([[k, short(v)] for k, v in view.state.items()], ["key", "value"])
               if view.state else "(empty)")


@memory_group.command("diff")
@trace_options
@click.option("--from", "from_seq", required=True, type=click.IntRange(0), metavar="SEQ",
              help="Compare the memory after this event ...")
@click.option("--to", "to_seq", required=True, type=click.IntRange(0), metavar="SEQ",
              help="... with the memory after this one.")
@json_option
@click.pass_context
@handle_errors
def memory_diff(ctx: click.Context, tenant: str, trace_id: str, scope: str | None,
                from_seq: int, to_seq: int, as_json: bool) -> None:
    """What changed in a trace's memory scope between two events."""
    from projections.queries import memory_diff as diff

    with open_views(ctx, "memory_diff") as store:
        d = diff(store, tenant, trace_id, from_seq, to_seq, scope=scope)
    if as_json:
        emit_json(d.as_json())
        return
    click.echo(printable(f"trace {d.trace_id}  scope {d.scope}  after seq {d.from_seq} -> "
                         f"after seq {d.to_seq}"))
    lines = [f"+ {printable(k)}: {short(v)}" for k, v in d.added.items()]
    lines += [f"- {printable(k)}: {short(v)}" for k, v in d.removed.items()]
    lines += [f"~ {printable(k)}: {short(c['from'], 30)} -> {short(c['to'], 30)}"
              for k, c in d.changed.items()]
    click.echo("\n".join(lines) if lines else "no change")


@memory_group.command("history")
@trace_options
@json_option
@click.pass_context
@handle_errors
def memory_history(ctx: click.Context, tenant: str, trace_id: str, scope: str | None,
                   as_json: bool) -> None:
    """Every memory write of a trace (all scopes unless --scope), with who wrote it."""
    from projections.queries import memory_history as history

    with open_views(ctx, "memory_history") as store:
        rows = history(store, tenant, trace_id, scope=scope)
    if as_json:
        emit_json([r.as_json() for r in rows])
        return
    if not rows:
        click.echo("No memory writes.")
        return
    click.echo(table([[str(r.seq), r.ts[:23], r.scope, r.op, r.key,
                       "" if r.op == "delete" else short(r.value, 40), r.executed_by,
                       r.memory_hash[:19]] for r in rows],
                     ["seq", "ts", "scope", "op", "key", "value", "executed_by",
                      "memory_hash"]))


# -- failures ---------------------------------------------------------------------------

@click.command("failures")
@tenant_option()
@click.option("--tool", help="Only failures of this tool (the tool in play).")
@click.option("--agent", help="Only failures executed by this agent.")
@click.option("--event", help="Only this event type (TOOL_EXEC, EXEC_FAIL, ...).")
@click.option("--trace", "trace_id", metavar="ID", help="Only this trace.")
@click.option("--since", metavar="TIME", help="At or after this time (RFC 3339 or date).")
@click.option("--until", metavar="TIME", help="At or before this time.")
@click.option("--limit", type=LIMIT, help="At most this many rows.")
@json_option
@click.pass_context
@handle_errors
def failures(ctx: click.Context, tenant: str, tool: str | None, agent: str | None,
             event: str | None, trace_id: str | None, since: str | None, until: str | None,
             limit: int | None, as_json: bool) -> None:
    """The failure index: every failure point of a tenant, oldest first."""
    from projections.queries import stream_failures

    filters: dict[str, Any] = {"tool": tool, "agent": agent, "event": event,
                               "trace_id": trace_id, "since": since, "until": until,
                               "limit": limit}
    # a row at a time, as JSON or as a table: a tenant's whole history may be asked for
    with open_views(ctx, "failures") as store, closing(
        stream_failures(store, tenant, **filters)
    ) as streamed:
        if as_json:
            emit_json_array(r.as_json() for r in streamed)
        else:
            emit_table(([r.ts[:23], r.trace_id, str(r.seq), r.event, r.tool or "",
                         r.executed_by, short(r.reason or "", 70)] for r in streamed),
                       ["ts", "trace_id", "seq", "event", "tool", "executed_by", "reason"],
                       empty="No failures.")
