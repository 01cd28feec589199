"""AgentLedger benchmarks: ingest, verify, CLI start-up and ingest peak RSS.

Every rate is compared with a raw baseline measured in the same run on the same
machine (absolute numbers move by ~30% between runs; ratios are what to compare).
PostgreSQL figures, raw baselines included, all use one throwaway cluster
(``tests/pgcluster.py``, fsync off). See docs/BENCHMARKS.md.

    python scripts/bench.py --events 1000000 --backend both --json bench.json
    python scripts/bench.py --only rss --rss-gb 2
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import rawdb  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

from ledger.ingest import ingest  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.verify import verify  # noqa: E402
from ledger.workload import synthetic_lines  # noqa: E402

T = TypeVar("T")
Row = tuple[Any, int, str, bytes]  # originator_id, version, topic, state
BATCH = 5000  # ledger.ingest's default batch size: raw "batched" baselines use the same
SAVE_AGGREGATES = 100  # aggregates per Application.save (10 events each: ~1000 events)
EVENTS_TABLE = "agentledger_events"
SECTIONS = ("ingest", "verify", "help", "rss")


@dataclass
class Figure:
    """One line of the results table."""

    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None


# -- plain eventsourcing baseline: one aggregate per trace, one event per line ----------

class BenchTrace(Aggregate):
    """A trace as a plain eventsourcing aggregate; every event carries the parsed line."""

    TOPIC = "agentledger.bench.trace"

    class Created(Aggregate.Created):
        TOPIC = "agentledger.bench.trace.created"

    @staticmethod
    def create_id(record: dict[str, Any]) -> UUID:
        return uuid5(NAMESPACE_URL, f"/{record['tenant']}/{record['trace_id']}")

    @event("Started", topic="agentledger.bench.trace.started")
    def __init__(self, record: dict[str, Any]) -> None:
        self.steps = 1

    @event("Stepped", topic="agentledger.bench.trace.stepped")
    def step(self, record: dict[str, Any]) -> None:
        self.steps += 1


class BenchApp(Application[UUID]):
    name = "BenchApp"


def es_save_ingest(path: Path, env: dict[str, str]) -> int:
    """Read the JSONL file and save it through Application.save, 100 traces per save."""
    app = BenchApp(env=env)
    pending: dict[tuple[str, str], BenchTrace] = {}
    count = 0
    try:
        with path.open("rb") as fh:
            for line in fh:
                record = orjson.loads(line)
                key = (record["tenant"], record["trace_id"])
                agg = pending.get(key)
                if agg is not None:
                    agg.step(record=record)
                else:
                    if len(pending) >= SAVE_AGGREGATES:
                        app.save(*pending.values())
                        pending.clear()
                    pending[key] = BenchTrace(record=record)
                count += 1
        if pending:
            app.save(*pending.values())
    finally:
        app.close()
    return count


# -- helpers ----------------------------------------------------------------------------

def timed(fn: Callable[[], T], profile: str | None = None) -> tuple[T, float]:
    """Run fn once; return its result and wall seconds (under cProfile if asked)."""
    prof = cProfile.Profile() if profile else None
    start = time.perf_counter()
    result = prof.runcall(fn) if prof is not None else fn()
    elapsed = time.perf_counter() - start
    if prof is not None and profile is not None:
        prof.dump_stats(profile)
        print(f"\n--- {profile} (wall {elapsed:.1f} s under cProfile) ---")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return result, elapsed


def write_jsonl(path: Path, n_events: int) -> int:
    """Write the synthetic workload; return its size in bytes (not timed)."""
    with path.open("wb") as fh:
        for line in synthetic_lines(n_events, seed=1):
            fh.write(line)
    return path.stat().st_size


def rate_figure(name: str, n: int, seconds: float) -> Figure:
    return Figure(name, n / seconds, "events/s")


def ratio_figure(name: str, ours: Figure, base: Figure, minimum: float) -> Figure:
    ratio = ours.value / base.value
    return Figure(name, ratio, "x", base.name, base.value, ratio, f">= {minimum:g}x",
                  ratio >= minimum)


# -- raw baselines: the same rows into an empty copy of the ledger's events table --------

def sqlite_raw(url: str, rows: list[Row], per_txn: int) -> float:
    """sqlite3 executemany, per_txn rows per transaction; seconds."""
    Store.open(url).close()  # the ledger's DDL, WAL mode
    insert = ("INSERT INTO " + EVENTS_TABLE
              + " (originator_id, originator_version, topic, state) VALUES (?,?,?,?)")
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)) as con:
        start = time.perf_counter()
        for i in range(0, len(rows), per_txn):
            con.execute("BEGIN")
            con.executemany(insert, rows[i : i + per_txn])
            con.execute("COMMIT")
        return time.perf_counter() - start


def pg_copy(url: str, rows: list[Row], per_txn: int) -> float:
    """psycopg binary COPY, per_txn rows per transaction; seconds."""
    Store.open(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        query = ("COPY " + EVENTS_TABLE + " (originator_id, originator_version, topic, state)"
                 " FROM STDIN (FORMAT BINARY)")
        start = time.perf_counter()
        for i in range(0, len(rows), per_txn):
            with conn.transaction(), conn.cursor() as cur, cur.copy(query) as copy:
                copy.set_types(["uuid", "int8", "text", "bytea"])
                for row in rows[i : i + per_txn]:
                    copy.write_row(row)
        return time.perf_counter() - start


# -- sections ---------------------------------------------------------------------------

def bench_backend(backend: str, args: argparse.Namespace, work: Path, jsonl: Path,
                  cluster: PgCluster | None) -> list[Figure]:
    """Ingest, verify and the raw / Application.save baselines on one backend (best of R)."""
    n, reps, out = args.events, args.repeat, []

    def profile(what: str) -> str | None:
        return str(Path(args.profile) / f"{what}-{backend}.prof") if args.profile else None

    def fresh(tag: str) -> str:
        if cluster is None:
            return f"sqlite:///{work / tag}.db"
        return cluster.create_database(f"bench_{tag}")

    def run_ingest(rep: int) -> float:
        with Store.open(fresh(f"ledger{rep}")) as store:
            summary, secs = timed(lambda: ingest(store, [str(jsonl)],
                                                 reject_file=str(work / "rejects.jsonl")),
                                  profile("ingest"))
        if summary.accepted != n:
            raise SystemExit(f"ingest accepted {summary.accepted} of {n}: {summary}")
        return secs

    secs = min(run_ingest(rep) for rep in range(reps))
    url = (f"sqlite:///{work}/ledger{reps - 1}.db" if cluster is None
           else cluster.url_for(f"bench_ledger{reps - 1}"))
    ours = rate_figure(f"{backend}: ingest (parse, validate, hash, chain, store)", n, secs)
    if "ingest" in args.only:
        out.append(ours)
    if "verify" in args.only:
        with Store.open(url) as store:
            secs = min(timed(lambda: _checked_verify(store, n), profile("verify"))[1]
                       for _ in range(reps))
        fig = rate_figure(f"{backend}: verify", n, secs)
        fig.target, fig.passed = ">= 200k events/s", fig.value >= 200_000
        out.append(fig)
    if "ingest" not in args.only:
        return out
    # The ledger's stored rows in log order: the baselines insert exactly these (untimed).
    rows: list[Row] = rawdb.execute(url, "SELECT originator_id, originator_version, topic, "
                                    "state FROM {events} ORDER BY notification_id")
    kind, insert = ("raw executemany", sqlite_raw) if cluster is None else (
        "raw binary COPY", pg_copy)
    if cluster is None:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    else:
        env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_HOST": "127.0.0.1",
               "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "postgres",
               "POSTGRES_PASSWORD": ""}
    for per, label in ((BATCH, f"{BATCH} rows/txn"), (len(rows), "1 txn")):
        secs = min(insert(fresh(f"raw{label[0]}_{rep}"), rows, per) for rep in range(reps))
        base = rate_figure(f"{backend}: {kind}, {label}", len(rows), secs)
        out += [base, ratio_figure(f"{backend}: ingest / {kind}, {label}", ours, base, 0.5)]
    del rows

    def run_es(rep: int) -> float:
        target = fresh(f"es{rep}")
        dbname = {"SQLITE_DBNAME": target.removeprefix("sqlite:///")} if cluster is None else {
            "POSTGRES_DBNAME": f"bench_es{rep}"}
        count, secs = timed(lambda: es_save_ingest(jsonl, {**env, **dbname}))
        assert count == n
        return secs

    secs = min(run_es(rep) for rep in range(reps))
    base = rate_figure(f"{backend}: eventsourcing Application.save, {SAVE_AGGREGATES} traces/save",
                       n, secs)
    return [*out, base, ratio_figure(f"{backend}: ingest / Application.save", ours, base, 2.0)]


def _checked_verify(store: Store, n: int) -> None:
    report = verify(store)
    if not report.ok or report.events != n:
        raise SystemExit(f"verify: {report.events} events, problems {report.problems[:3]}")


def entry_point() -> str:
    """The installed ``agentledger`` script next to this interpreter (not a pyenv shim)."""
    local = Path(sys.executable).parent / "agentledger"
    found = str(local) if local.exists() else shutil.which("agentledger")
    if found is None:
        raise SystemExit("agentledger is not installed (pip install -e .)")
    return found


def median_wall(cmd: list[str], runs: int = 10) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_help() -> list[Figure]:
    base = Figure("python -c pass (median of 10)", median_wall([sys.executable, "-c", "pass"]),
                  "s")
    secs = median_wall([entry_point(), "--help"])
    return [base, Figure("agentledger --help (median of 10)", secs, "s", base.name, base.value,
                         secs / base.value, "< 0.3 s", secs < 0.3)]


# Linux keeps a process's peak RSS across fork and exec, so a child forked from this
# (large) process would report at least our own RSS. A small probe process forks the
# ingest instead and writes the child's own ru_maxrss (KiB) and exit code to argv[1].
_RSS_PROBE = """import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def bench_rss(gb: float, work: Path) -> list[Figure]:
    """Peak RSS of `agentledger ingest` (a child process) over a generated file of ~gb GB."""
    path, target = work / "big.jsonl", int(gb * 1e9)
    size = lines = 0
    with path.open("wb") as fh:
        for line in synthetic_lines(target // 100, seed=2):  # far more than needed: we stop
            fh.write(line)
            size, lines = size + len(line), lines + 1
            if size >= target:
                break
    cmd = [entry_point(), "--store", f"sqlite:///{work / 'rss.db'}", "ingest", str(path),
           "--reject-file", str(work / "rss-rejects.jsonl"), "--json"]
    print(f"rss: {size / 1e9:.2f} GB, {lines:,} events; running {' '.join(cmd)}", flush=True)
    try:
        with (work / "rss.out").open("wb") as stdout:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", _RSS_PROBE, str(work / "rss.usage"), *cmd],
                           stdout=stdout, check=False)
            secs = time.perf_counter() - start
        maxrss_kib, returncode = map(int, (work / "rss.usage").read_text().split())
        summary = orjson.loads((work / "rss.out").read_bytes())
        if returncode != 0 or summary["accepted"] != lines:
            raise SystemExit(f"ingest exited {returncode}: {summary}")
    finally:
        path.unlink(missing_ok=True)
    peak_mb = maxrss_kib / 1024  # ru_maxrss is in KiB on Linux
    return [rate_figure(f"rss: CLI ingest of {size / 1e9:.2f} GB (sqlite)", lines, secs),
            Figure(f"rss: peak RSS of CLI ingest, {size / 1e9:.2f} GB input", peak_mb, "MB",
                   target="< 300 MB at 2 GB", passed=peak_mb < 300)]


# -- output -----------------------------------------------------------------------------

def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "events/s":
        return f"{value / 1000:,.1f}k/s"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3f} s" if unit == "s" else f"{value:,.0f} {unit}"


def print_table(figures: list[Figure]) -> None:
    rows = [("figure", "value", "baseline", "ratio", "target", "result")]
    for f in figures:
        status = "" if f.passed is None else ("PASS" if f.passed else "MISS")
        value = "" if f.unit == "x" else fmt(f.value, f.unit)
        base = fmt(f.baseline_value, "events/s" if f.unit == "x" else f.unit)
        rows.append((f.name, value, base, fmt(f.ratio, "x"), f.target, status))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def git_state() -> str:
    """The commit measured, with '+modified' if library files differ from it."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = git("status", "--porcelain", "--", "ledger", "projections", "replay").strip()
    return git("rev-parse", "--short", "HEAD").strip() + ("+modified" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="events to ingest (default 100k)")
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--rss-gb", type=float, default=0.2, help="input size for rss (target: 2)")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="also write results as JSON")
    p.add_argument("--repeat", type=int, default=1, help="best of R runs (default 1)")
    p.add_argument("--tmp", help="work directory (default: a new temp dir)")
    p.add_argument("--profile", metavar="DIR",
                   help="run ingest and verify under cProfile, write DIR/*.prof (slower)")
    args = p.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := args.only - set(SECTIONS):
        p.error(f"unknown --only section(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    base = Path(tempfile.mkdtemp(prefix="agentledger-bench-", dir=args.tmp))
    figures: list[Figure] = []
    meta: dict[str, Any] = {"events": args.events, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                            "cpus": os.cpu_count(), "python": sys.version.split()[0],
                            "repeat": args.repeat, "loadavg_start": os.getloadavg(),
                            "git_start": git_state()}
    cluster: PgCluster | None = None
    try:
        if args.only & {"ingest", "verify"}:
            jsonl = base / "events.jsonl"
            size = write_jsonl(jsonl, args.events)
            meta["jsonl_bytes_per_event"] = round(size / max(args.events, 1), 1)
            print(f"workload: {args.events:,} events, {size / 1e6:,.0f} MB", flush=True)
            if "postgres" in backends:
                cluster = PgCluster().start()
            for backend in backends:
                work = base / backend
                work.mkdir()
                print(f"{backend}: ingest, verify and baselines ...", flush=True)
                pg = cluster if backend == "postgres" else None
                figures += bench_backend(backend, args, work, jsonl, pg)
                shutil.rmtree(work, ignore_errors=True)
        if "help" in args.only:
            figures += bench_help()
        if "rss" in args.only:
            (base / "rss").mkdir()
            figures += bench_rss(args.rss_gb, base / "rss")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    meta["loadavg_end"], meta["git_end"] = os.getloadavg(), git_state()
    events = f", {args.events:,} events" if args.only & {"ingest", "verify"} else ""
    print(f"\nAgentLedger benchmarks, {meta['date']}, {meta['cpus']} CPUs, Python "
          f"{meta['python']}{events}, best of {args.repeat}; load average "
          f"{meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end; "
          f"code {meta['git_start']} at start, {meta['git_end']} at end\n")
    print_table(figures)
    if args.json_out:
        doc = {"meta": meta, "figures": [asdict(f) for f in figures]}
        Path(args.json_out).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
