"""``agentledger demo``: a realistic multi-agent workload, ingested and shown."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ledger.cli.common import handle_errors, open_store, printable, table

if TYPE_CHECKING:
    from ledger.store import Store

DEMO_DIR = "agentledger-demo"


@click.command()
@click.option("--dir", "out_dir", default=DEMO_DIR, show_default=True, type=click.Path(),
              help="Where the demo writes its input and reject files.")
@click.pass_context
@handle_errors
def demo(ctx: click.Context, out_dir: str) -> None:
    """Generate two tenants' agent traces, ingest them, and show what the ledger knows."""
    import orjson

    from ledger.cli.stats import render
    from ledger.cli.timeline import render_timeline
    from ledger.cli.views import attach_views
    from ledger.ingest import ingest
    from ledger.reader import get_trace, list_findings, list_traces
    from ledger.redact import redact_url
    from ledger.verify import verify
    from ledger.workload import demo_bad_lines, demo_events
    from projections import queries

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    source, rejects = folder / "traces.jsonl", folder / "rejected.jsonl"
    events = demo_events()
    with source.open("wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e) + b"\n")
        for line in demo_bad_lines():
            fh.write(line + b"\n")
    rejects.unlink(missing_ok=True)

    with open_store(ctx, writes="ingest the demo into it") as store:
        click.echo(printable(f"Store: {redact_url(store.url)}") + "\n")
        _heading("1. Ingest")
        click.echo(printable(f"$ agentledger ingest {source} --reject-file {rejects}"))
        attach_views(store)  # the read models follow the ingest (sections 6 and 7)
        summary = ingest(store, [str(source)], reject_file=str(rejects))
        click.echo(f"accepted {summary.accepted}  duplicates {summary.duplicates}  rejected "
                   f"{summary.rejected}  findings {summary.findings}")
        if summary.duplicates:
            click.echo("(duplicates: the demo ran here before; re-ingesting is a no-op)")
        for rej in rejects.read_bytes().splitlines() if rejects.exists() else []:
            entry = orjson.loads(rej)
            click.echo(f"  rejected line {entry['line']}: {entry['reason'][:110]}")

        _heading("2. Traces of tenant acme")
        traces = list_traces(store, "acme")
        click.echo(f"$ agentledger trace list --tenant acme   ({len(traces)} traces, "
                   f"{sum(t.status == 'terminated' for t in traces)} terminated; first 8)")
        click.echo(table([[t.trace_id, t.status, str(t.events), t.agent_owner or ""]
                          for t in traces[:8]], ["trace_id", "status", "events", "owner"]))

        terminated = [t for t in traces if t.status == "terminated"]
        if terminated:
            pick = max(terminated, key=lambda t: t.events)
            _heading("3. A chain that failed")
            click.echo(f"$ agentledger trace show {pick.trace_id} --tenant acme")
            click.echo(render_timeline(get_trace(store, "acme", pick.trace_id), color=False))

        _heading("4. Has anything been altered?")
        report = verify(store)
        click.echo("$ agentledger verify")
        click.echo(f"{'OK' if report.ok else 'ALTERED'}: {report.streams} streams, "
                   f"{report.events} events verified; {len(report.problems)} problem(s), "
                   f"{len(report.findings)} runtime memory-hash finding(s)")

        _heading("5. Integrity findings recorded at ingest (tenant acme)")
        found = list_findings(store, "acme")
        click.echo(table([[f["finding"], f["trace_id"] or "", str(f["seq"]), f["detail"][:80]]
                          for f in found], ["finding", "trace_id", "seq", "detail"])
                   if found else "none")

        _heading("6. Where fallbacks fire (tenant acme)")
        click.echo("$ agentledger stats fallbacks --tenant acme --by tool")
        fallbacks = queries.fallback_stats(store, "acme", by="tool")
        click.echo(render(fallbacks, "fallbacks", chart=True) if fallbacks else "none")

        _heading("7. Audit findings: the ledger's, plus writes nothing authorized (tenant acme)")
        click.echo("$ agentledger audit findings --tenant acme")
        audit = queries.audit_findings(store, "acme")
        click.echo(table([[f.trace_id or "", str(f.seq), f.kind, f.detail[:70]] for f in audit],
                         ["trace_id", "seq", "kind", "detail"]) if audit else "none")

        _heading("8. Would a second fallback have saved contract-fetch? (tenant acme)")
        policy, outcomes = _replay_files(folder)
        click.echo(f"$ agentledger replay contract-fetch --tenant acme --policy {policy} "
                   f"--outcomes {outcomes} --dry-run")
        click.echo(_replay_demo(store, policy, outcomes))

    _heading("Try next")
    for cmd in ("agentledger trace list --tenant globex --status terminated",
                "agentledger trace show <trace_id> --tenant acme --json",
                "agentledger verify --tenant acme --json",
                "agentledger memory history --tenant acme --trace budget-review",
                "agentledger failures --tenant acme --tool search",
                "agentledger audit export acme-audit.jsonl --tenant acme",
                "agentledger projections check   # were the views edited behind the ledger?",
                f"agentledger replay contract-fetch --tenant acme --policy {policy} "
                f"--outcomes {outcomes} --reason 'second fallback?'",
                f"agentledger backtest --tenant acme --policy {policy} --outcomes {outcomes}",
                f"agentledger ingest {source}   # again: every line a duplicate"):
        click.echo(f"  {cmd}")


def _replay_files(folder: Path) -> tuple[Path, Path]:
    """A policy with a second fallback for fetch_doc, and the archive's scripted answer."""
    policy, outcomes = folder / "policy.yaml", folder / "outcomes.yaml"
    policy.write_text("# contract-fetch died when fetch_doc and its mirror both failed.\n"
                      "fallback:\n  fetch_doc: [fetch_doc_mirror, fetch_doc_archive]\n",
                      encoding="utf-8")
    outcomes.write_text("# What the archive would have answered (no recorded call has it).\n"
                        "fetch_doc_archive:\n  success: true\n  output: {url: "
                        "'https://archive.internal/contracts/initech-msa', bytes: 48211}\n",
                        encoding="utf-8")
    return policy, outcomes


def _replay_demo(store: Store, policy: Path, outcomes: Path) -> str:
    """A dry-run replay of contract-fetch under the demo policy, rendered (nothing stored)."""
    from ledger.cli.replay import render_result
    from ledger.reader import get_trace
    from replay import Replayer, load_policy

    result = Replayer(store).replay("acme", "contract-fetch", load_policy(policy),
                                    outcomes=outcomes, dry_run=True)
    return render_result(result, get_trace(store, "acme", "contract-fetch").records,
                         color=False)


def _heading(text: str) -> None:
    click.echo(f"\n== {text} ==")
