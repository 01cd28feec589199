"""The replay commands: ``replay`` (run, list, show) and ``backtest``.

``agentledger replay TRACE_ID ...`` forks a stored trace and re-runs it under a
policy (docs/REPLAY.md); ``replay list|show`` read stored replays back; ``backtest``
replays every terminated trace of a tenant. Each command parses options, makes one
``replay.Replayer`` call and renders. Library modules are imported inside the
commands so ``agentledger --help`` stays fast.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ledger.cli.common import (
    EXIT_PROBLEMS,
    EXIT_REJECTED,
    emit_json,
    handle_errors,
    json_option,
    open_store,
    printable,
    table,
    tenant_option,
    workers_option,
)
from ledger.cli.views import catch_up, progress_bar, short

if TYPE_CHECKING:
    from ledger.store import Store
    from replay import Replayer, ReplayResult
    from replay.backtest import BacktestReport

CELL = 52  # least characters of one side of the side-by-side table
STATUS_COLOURS = {"recovered": "green", "completed": "green", "terminated": "red",
                  "needs_outcome": "yellow", "active": "green"}


class ReplayGroup(click.Group):
    """``replay TRACE_ID ...`` runs a replay (the hidden ``run``); ``replay list|show`` read."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["TRACE_ID --tenant T --policy FILE [OPTIONS] | list | show"]


def policy_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``replay`` and ``backtest`` share: policy, outcome sources, who and why."""
    for option in reversed((
        click.option("--policy", "policy_path", required=True, type=click.Path(),
                     metavar="FILE",
                     help="The policy to replay under (.json, .yaml or .yml)."),
        click.option("--outcomes", "outcomes_path", type=click.Path(), metavar="FILE",
                     help="Scripted tool outcomes ({tool: outcome | [outcome, ...]})."),
        click.option("--tools", metavar="MODULE:NAME",
                     help="Live tools: a mapping of tool names to callables, called now."),
        click.option("--tool-timeout", type=click.FloatRange(min=0, min_open=True),
                     default=30.0, show_default=True, metavar="SECONDS",
                     help="A live call running longer is a retryable timeout."),
        click.option("--reason", help="Why (stored with the replay)."),
        click.option("--by", metavar="WHO",
                     help="Who ran it (stored with the replay; default user:<login>)."),
    )):
        f = option(f)
    return f


def _load(policy_path: str, outcomes_path: str | None) -> tuple[Any, Any]:
    """The policy and the scripted outcomes, validated before the store is opened."""
    from replay.outcomes import ScriptedOutcomes
    from replay.policy import load_policy

    policy = load_policy(policy_path)
    outcomes = ScriptedOutcomes.load(outcomes_path) if outcomes_path else None
    return policy, outcomes


def _replayer(store: Store, tool_timeout: float) -> Replayer:
    """A replayer over ``store`` whose views are brought up to date first (with a bar)."""
    from projections import Projector
    from replay import Replayer

    projector = Projector(store, ["memory", "analytics"])
    if store.backend.read_only is not None and any(s.lag for s in projector.status()):
        store.backend.writable("bring the views that replays read up to date")
    catch_up(store, projector)
    return Replayer(store, tool_timeout=tool_timeout)


# -- replay -----------------------------------------------------------------------------

@click.group("replay", cls=ReplayGroup)
def replay_group() -> None:
    """Fork a trace and re-run it under another policy; list and show stored replays.

    \b
    agentledger replay TRACE_ID --tenant T --policy FILE [OPTIONS]   run a replay
    agentledger replay list --tenant T [--source ID]                 stored replays
    agentledger replay show REPLAY_ID --tenant T                     one stored replay

    See `agentledger replay run --help` for the options of a run.
    """


@replay_group.command("run", hidden=True)
@click.argument("trace_id")
@tenant_option()
@click.option("--from", "from_seq", type=click.IntRange(1), metavar="SEQ",
              help="Fork at this event (default: the failure that led to termination).")
@policy_options
@click.option("--dry-run", is_flag=True, help="Replay and report, but store nothing.")
@json_option
@click.pass_context
@handle_errors
def replay_run(ctx: click.Context, trace_id: str, tenant: str, from_seq: int | None,
               policy_path: str, outcomes_path: str | None, tools: str | None,
               tool_timeout: float, reason: str | None, by: str | None, dry_run: bool,
               as_json: bool) -> None:
    """Replay TRACE_ID from --from under --policy; store it as a linked replay.

    Exit 0 whatever the replay's status, 2 for a bad policy or outcomes file,
    5 when the tenant has no such trace.
    """
    from ledger.reader import get_trace

    policy, outcomes = _load(policy_path, outcomes_path)
    with open_store(ctx, writes=None if dry_run else "store a replay in it") as store:
        result = _replayer(store, tool_timeout).replay(
            tenant, trace_id, policy, from_seq=from_seq, outcomes=outcomes, tools=tools,
            reason=reason, by=by, dry_run=dry_run)
        source = get_trace(store, tenant, trace_id).records if not as_json else []
    if as_json:
        emit_json(result.as_json())
        return
    click.echo(render_result(result, source, color=sys.stdout.isatty()))


@replay_group.command("list")
@tenant_option()
@click.option("--source", metavar="TRACE_ID", help="Only replays of this source trace.")
@json_option
@click.pass_context
@handle_errors
def replay_list(ctx: click.Context, tenant: str, source: str | None, as_json: bool) -> None:
    """The tenant's stored replays, oldest first, with their links."""
    from replay import Replayer

    with open_store(ctx) as store:
        links = Replayer(store).replays(tenant, source=source)
    if as_json:
        emit_json(links)
        return
    if not links:
        click.echo("No replays.")
        return
    click.echo(table([[r["replay_trace_id"], r["source_trace_id"], str(r["fork_seq"]),
                       f"{r['original_status'] or '?'} -> {r['replay_status'] or '?'}",
                       (r["policy_digest"] or "")[:19], r["by"] or "",
                       (r["recorded_at"] or "")[:19], short(r["reason"] or "", 40)]
                      for r in links],
                     ["replay_trace_id", "source", "fork", "status", "policy", "by",
                      "recorded_at", "reason"]))


@replay_group.command("show")
@click.argument("replay_id")
@tenant_option()
@json_option
@click.pass_context
@handle_errors
def replay_show(ctx: click.Context, replay_id: str, tenant: str, as_json: bool) -> None:
    """One stored replay: its link, and the original and the replay side by side.

    Exit 5 when the tenant has no such replay.
    """
    from ledger.errors import NotFoundError
    from ledger.reader import get_trace
    from replay import Replayer

    with open_store(ctx) as store:
        stored = Replayer(store).stored(tenant, replay_id)
        try:
            source = get_trace(store, tenant, stored["source_trace_id"]).records
        except NotFoundError:
            source = []
    if as_json:
        emit_json(stored)
        return
    color = sys.stdout.isatty()
    click.echo(printable(
        f"replay {stored['replay_trace_id']}  recorded {stored['recorded_at']}  by "
        f"{stored['by']}" + (f"  reason: {stored['reason']}" if stored["reason"] else "")))
    click.echo(_header(stored["source_trace_id"], tenant, stored["fork_seq"],
                       stored["original_status"], stored["replay_status"], color))
    click.echo(f"forked after source record hash {stored['source_prev_hash']}")
    click.echo(f"policy {stored['policy_digest']}  outcome sources: "
               f"{', '.join(stored['outcome_sources'] or [])}")
    click.echo("\n" + _side_by_side(source, stored["events"], stored["fork_seq"], color))
    click.echo("\nPolicy as given:\n" + printable(str(stored["policy"]).rstrip(), newlines=True))


# -- backtest ---------------------------------------------------------------------------

@click.command("backtest")
@tenant_option()
@policy_options
@click.option("--since", metavar="TIME", help="Only traces active at or after this time.")
@click.option("--until", metavar="TIME", help="Only traces started at or before this time.")
@click.option("--tool", help="Only traces whose fork is a failure of this tool (in play).")
@click.option("--agent", help="Only traces whose fork event was executed by this agent.")
@click.option("--save", is_flag=True, help="Store every replay (default: store nothing).")
@workers_option("traces", " With --save, this process stores every replay.")
@json_option
@click.pass_context
@handle_errors
def backtest(ctx: click.Context, tenant: str, policy_path: str, outcomes_path: str | None,
             tools: str | None, tool_timeout: float, reason: str | None, by: str | None,
             since: str | None, until: str | None, tool: str | None, agent: str | None,
             save: bool, workers: int, as_json: bool) -> None:
    """Replay every terminated trace from the failure that led to termination.

    Exit 0; 2 for a bad policy or outcomes file or option value; 3 when traces whose
    replay would write to memory an output that is not I-JSON were left out, 4 when
    traces with an unreadable stored record were (the rest are reported).
    """

    policy, _ = _load(policy_path, outcomes_path)  # the file is re-read per trace
    with (open_store(ctx, writes="store replays in it" if save else None) as store,
          _replayer(store, tool_timeout) as replayer,
          progress_bar("Backtesting") as progress):
        report = replayer.backtest(tenant, policy, outcomes=outcomes_path, tools=tools,
                                   since=since, until=until, tool=tool, agent=agent, save=save,
                                   reason=reason, by=by, workers=workers,
                                   progress=progress)
    if as_json:
        emit_json(report.as_json())
        _left_out(report)
        return
    click.echo(f"backtest of policy {report.policy_digest} over tenant {tenant}: "
               f"{report.terminated_traces} terminated trace(s) replayed")
    click.echo(table([["recovered", str(report.recovered)],
                      ["still terminated", str(report.still_terminated)],
                      ["needs outcome", str(report.needs_outcome)],
                      ["extra tool calls", f"{report.extra_tool_calls:+d}"]],
                     ["outcome", "traces"]))
    if report.by_tool:
        click.echo("\nBy the tool that failed:")
        click.echo(table([[name, str(r["terminated_traces"]), str(r["recovered"]),
                           str(r["still_terminated"]), str(r["needs_outcome"])]
                          for name, r in sorted(report.by_tool.items())],
                         ["tool", "terminated", "recovered", "still_terminated",
                          "needs_outcome"]))
    if save:
        click.echo(f"\nStored {report.terminated_traces} replay(s): agentledger replay list "
                   f"--tenant {tenant}")
    else:
        click.echo("\nNothing stored (--save stores every replay).")
    _left_out(report)


def _left_out(report: BacktestReport) -> None:
    """Name the traces a backtest left out on stderr, then exit 4 if a stored record
    cannot be read, else 3 if a replay could not write memory (if any were left out)."""
    from ledger.errors import UnwritableReplayError

    for u in report.unreadable:
        click.echo(printable(f"warning: left out trace {u['trace_id']!r}: its stored record "
                             f"seq {u['seq']} cannot be read ({u['reason']}); run "
                             "`agentledger verify`"), err=True)
    for u in report.unwritable:
        click.echo(printable(f"warning: left out trace {u['trace_id']!r}: its replay cannot "
                             f"write memory at seq {u['seq']} ({u['reason']}); "
                             f"{UnwritableReplayError.WAY_OUT}"), err=True)
    if report.unreadable:
        sys.exit(EXIT_PROBLEMS)
    if report.unwritable:
        sys.exit(EXIT_REJECTED)


# -- rendering --------------------------------------------------------------------------

def render_result(result: ReplayResult, source: list[dict[str, Any]], *, color: bool) -> str:
    """A replay for a terminal: header, side by side from the fork, memory, outcome sources.

    ``source`` is the source trace's stored records (for the left column).
    """
    stored = "dry run: nothing stored" if result.dry_run else (
        f"stored as {result.replay_trace_id}")
    parts = [_header(result.source_trace_id, result.tenant, result.fork_seq,
                     result.original_status, result.replay_status, color),
             f"policy {result.policy_digest}  {stored}",
             _divergence_line(result.first_divergence),
             "\n" + _side_by_side(source, result.events, result.fork_seq, color),
             "\n" + _memory_lines(result.memory_diff)]
    if result.outcome_sources:
        parts += ["\nTool calls and where their outcomes came from:",
                  table([[str(c["seq"]), c["tool"], str(c["attempt"]), c["source"]]
                         for c in result.outcome_sources], ["seq", "tool", "attempt", "source"])]
    if result.dropped_carried:
        parts.append("\nCarried events not re-emitted (their anchor never occurred): seq "
                     + ", ".join(str(s) for s in result.dropped_carried))
    if result.missing_outcome is not None:
        parts.append("\n" + _missing_lines(result.missing_outcome, color))
    return "\n".join(parts)


def _header(trace_id: str, tenant: str, fork: int, original: str | None,
            replayed: str | None, color: bool) -> str:
    def status(s: str | None) -> str:  # a replay written through the API may not say
        shown = (s or "?").upper()
        return click.style(shown, fg=STATUS_COLOURS.get(s or "")) if color else shown

    return (f"replay of trace {trace_id} (tenant {tenant}) from seq {fork}: original "
            f"{status(original)} -> replay {status(replayed)}")


def _cell(event: dict[str, Any] | None, width: int) -> str:
    """One side of a row: the event type and what it did (as in the trace timeline)."""
    from ledger.cli.timeline import summarize

    if event is None:
        return ""
    payload = event.get("payload") or {}
    if event["event"] == "CALLBACK_POLICY_RESOLVED":  # the rule, and flags beyond record_trace
        flags = [k for k, v in (payload.get("policy") or {}).items()
                 if v is True and k != "record_trace"]
        detail = f"{', '.join(flags) or 'no action'} (rule {payload.get('rule')})"
    else:
        detail = summarize(event["event"], payload)
    text = f"{event['event']} {detail}".rstrip()
    return text if len(text) <= width else text[:width - 1] + "…"


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two events are the same but for seq, ts and hashes."""
    from ledger.chain import encode

    if a is None or b is None:
        return False
    keys = ("event", "executed_by", "write_scope", "payload")
    return encode({k: a.get(k) for k in keys}, sort_keys=True) == \
        encode({k: b.get(k) for k in keys}, sort_keys=True)


def _side_by_side(source: list[dict[str, Any]], replayed: list[dict[str, Any]], fork: int,
                  color: bool) -> str:
    """The original and the replay from the fork, one row per seq; differing rows marked."""
    original = {int(r["seq"]): r for r in source if int(r["seq"]) >= fork}
    ours = {int(e["seq"]): e for e in replayed}
    seqs = range(fork, max([fork - 1, *original, *ours]) + 1)
    width = max(CELL, (shutil.get_terminal_size((2 * CELL + 12, 24)).columns - 12) // 2)
    rows, differs = [], []
    for seq in seqs:
        a, b = original.get(seq), ours.get(seq)
        differs.append(not _same(a, b))
        rows.append([str(seq), _cell(a, width), "≠" if differs[-1] else "", _cell(b, width)])
    lines = table(rows, ["seq", "original", "", "replay"]).splitlines()
    for i, differ in enumerate(differs):
        if differ and color:
            lines[i + 2] = click.style(lines[i + 2], fg="yellow", bold=True)
    shared = f"(seq 1..{fork - 1} are shared with the original)\n" if fork > 1 else ""
    return shared + "\n".join(lines)


def _divergence_line(divergence: dict[str, Any] | None) -> str:
    """Where the replay first differs from the original, and in which fields."""
    if divergence is None:
        return "no divergence: the replay's events are the original's"
    a, b = divergence["source"], divergence["replay"]
    line = f"first divergence at seq {divergence['seq']}"
    if a is None or b is None:
        return line + (": the original ends before it" if a is None else
                       ": the replay ends before it")
    if a["event"] != b["event"]:
        return line + f": {a['event']} -> {b['event']}"
    changed = [k for k in ("executed_by", "write_scope") if a[k] != b[k]]
    pa, pb = a["payload"] or {}, b["payload"] or {}
    changed += [f"payload.{k}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return line + f" ({a['event']}, differs in {', '.join(changed) or 'payload'})"


def _memory_lines(diff: dict[str, dict[str, Any]]) -> str:
    if not diff:
        return "Memory at the end: the same as the original's."
    lines = ["Memory at the end, the replay's against the original's:"]
    for scope, d in diff.items():
        lines.append(f"  {scope}")
        lines += [f"    + {k}: {short(v)}" for k, v in d["added"].items()]
        lines += [f"    - {k}: {short(v)}" for k, v in d["removed"].items()]
        lines += [f"    ~ {k}: {short(c['from'], 30)} -> {short(c['to'], 30)}"
                  for k, c in d["changed"].items()]
    return "\n".join(lines)


def _missing_lines(missing: dict[str, Any], color: bool) -> str:
    import orjson

    title = f"NEEDS OUTCOME: no outcome source answered the call at seq {missing['seq']}"
    example = orjson.dumps({missing["tool"]: {"success": True, "output": "..."}}).decode()
    return "\n".join([
        click.style(title, fg="yellow", bold=True) if color else title,
        f"  tool {missing['tool']}  attempt {missing['attempt']}",
        f"  args {short(missing['args'], 200)}",
        "The replay stopped there rather than invent a result. Provide one with",
        f"--outcomes FILE, e.g. {example}, or call the real tool with --tools MODULE:NAME.",
    ])
