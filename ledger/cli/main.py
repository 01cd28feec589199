"""The ``agentledger`` command: a thin CLI over the ledger, projections and replay.

This package is the one place that composes ``ledger``, ``projections`` and
``replay``. Exit codes (stable, see docs/CLI.md): 0 ok, 1 internal error or a
refused write, 2 usage or unreadable input, 3 some input rejected or left out,
4 verification found problems, 5 not found, 130 interrupted, 141 the output's
reader went away, 143 terminated (SIGTERM).
"""

from __future__ import annotations

import sys

import click

from ledger.cli.audit import audit_group
from ledger.cli.commands import ingest, init, trace, verify
from ledger.cli.common import TEXT, stop_on_sigterm
from ledger.cli.demo import demo
from ledger.cli.grants import grants
from ledger.cli.replay import backtest, replay_group
from ledger.cli.stats import stats_group
from ledger.cli.views import failures, memory_group, projections_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", envvar="AGENTLEDGER_STORE", metavar="URL",
              help="sqlite:///path.db (default sqlite:///agentledger.db) or postgresql://... "
                   "[env: AGENTLEDGER_STORE]")
@click.version_option(package_name="agentledger")
@click.pass_context
def main(ctx: click.Context, store: str | None) -> None:
    """AgentLedger: a tamper-evident audit ledger for AI-agent execution traces."""
    stop_on_sigterm()
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # A file name that is not UTF-8 is printed escaped (``printable``); one that a
        # message leaves as it is shows as "\udce9" rather than failing the command.
        sys.stdout.reconfigure(errors="backslashreplace")
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


for command in (init, ingest, verify, trace, demo, grants, projections_group, memory_group,
                failures, audit_group, stats_group, replay_group, backtest):
    main.add_command(command)


def _typed_text(group: click.Group) -> None:
    """Give every plain text parameter of every command the type :class:`Text`, so
    none passes text the ledger could not hold to a query. File names are typed
    ``click.Path`` and keep any bytes; ``--store`` is checked as it is opened."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _typed_text(command)
        for param in command.params:
            if type(param.type) is click.types.StringParamType:
                param.type = TEXT


_typed_text(main)
