"""The ``stats`` commands: where fallbacks, retries and failures happen, and how often.

Each prints a table of the query's rows; on a terminal (or with ``--chart``) a bar
per row beside the numbers. Library modules are imported inside the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ledger.cli.common import emit_json, handle_errors, json_option, table, tenant_option
from ledger.cli.views import open_views

if TYPE_CHECKING:
    from projections.stats import StatRow

BAR_WIDTH = 24
_EIGHTHS = " ▏▎▍▌▋▊▉█"
_RATIOS = ("rate", "share")


@click.group("stats")
def stats_group() -> None:
    """For analysts: fallback, retry and failure statistics; unknown callback subtypes."""


def stat_options(by: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--tenant T --by ... [--since] [--until] [--chart/--no-chart] [--json]``."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = json_option(f)
        f = click.option("--chart/--no-chart", default=None,
                         help="A bar per row beside the numbers (default: on a terminal).")(f)
        f = click.option("--until", metavar="TIME", help="At or before this time.")(f)
        f = click.option("--since", metavar="TIME",
                         help="At or after this time (RFC 3339 or date).")(f)
        f = click.option("--by", type=click.Choice(by), default=by[0], show_default=True,
                         help="What each row counts by.")(f)
        return tenant_option()(f)
    return decorate


def _run(ctx: click.Context, query_name: str, count: str, tenant: str, by: str,
         since: str | None, until: str | None, chart: bool | None, as_json: bool,
         *, none: str | None = None) -> None:
    from projections import queries

    query = getattr(queries, query_name)
    with open_views(ctx, query_name) as store:
        rows: list[StatRow] = query(store, tenant, by=by, since=since, until=until)
    if as_json:
        emit_json([r.as_json() for r in rows])
    elif not rows:
        click.echo(none or f"No {count}.")
    else:
        click.echo(render(rows, count, sys.stdout.isatty() if chart is None else chart))


@stats_group.command("fallbacks")
@stat_options(("tool", "pair", "agent", "day"))
@click.pass_context
@handle_errors
def stats_fallbacks(ctx: click.Context, tenant: str, by: str, since: str | None,
                    until: str | None, chart: bool | None, as_json: bool) -> None:
    """Fallbacks per tool, tool pair, agent or day: how many, recovered, rate per call."""
    _run(ctx, "fallback_stats", "fallbacks", tenant, by, since, until, chart, as_json)


@stats_group.command("retries")
@stat_options(("tool", "agent", "day"))
@click.pass_context
@handle_errors
def stats_retries(ctx: click.Context, tenant: str, by: str, since: str | None,
                  until: str | None, chart: bool | None, as_json: bool) -> None:
    """Retries per tool, agent or day: how many, recovered, rate per call."""
    _run(ctx, "retry_stats", "retries", tenant, by, since, until, chart, as_json)


@stats_group.command("failures")
@stat_options(("tool", "reason", "agent"))
@click.pass_context
@handle_errors
def stats_failures(ctx: click.Context, tenant: str, by: str, since: str | None,
                   until: str | None, chart: bool | None, as_json: bool) -> None:
    """Failure points per tool, reason or agent: how many, share, failed calls and rate."""
    _run(ctx, "failure_stats", "failures", tenant, by, since, until, chart, as_json)


@stats_group.command("unknown-callbacks")
@stat_options(("event", "agent", "day"))
@click.pass_context
@handle_errors
def stats_unknown_callbacks(ctx: click.Context, tenant: str, by: str, since: str | None,
                            until: str | None, chart: bool | None, as_json: bool) -> None:
    """CALLBACK_* subtypes the contract does not name: how many, in how many traces, when."""
    _run(ctx, "unknown_callback_stats", "events", tenant, by, since, until, chart, as_json,
         none="No unknown callback subtypes.")


def render(rows: list[StatRow], count: str, chart: bool) -> str:
    """The rows as a table; with ``chart``, a bar of ``count`` (scaled to the largest)."""
    keys, values = list(rows[0].key), list(rows[0].values)
    headers = keys + values + ([""] if chart else [])
    top = max(int(r.values[count]) for r in rows) or 1
    body = []
    for r in rows:
        cells = [_key(r.key[k]) for k in keys] + [_number(v, r.values[v]) for v in values]
        if chart:
            cells.append(bar(int(r.values[count]) / top))
        body.append(cells)
    return table(body, headers)


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar ``fraction`` (0..1) of ``width`` cells, in eighths of a cell."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    if not (sys.stdout.encoding or "").lower().startswith("utf"):
        return "#" * round(eighths / 8)
    return (_EIGHTHS[8] * (eighths // 8) + _EIGHTHS[eighths % 8]).rstrip()


def _key(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _number(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # a time
        return value
    if name in _RATIOS:
        return f"{value * 100:.1f}%"
    return f"{value:,}"
