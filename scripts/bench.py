"""AgentLedger benchmarks: ingest, verify, CLI start-up, peak RSS and the projections.

Every rate is compared with a raw baseline measured in the same run on the same
machine (absolute numbers move by ~30% between runs; ratios are what to compare).
PostgreSQL figures, raw baselines included, all use one throwaway cluster
(``tests/pgcluster.py``, fsync off). See docs/BENCHMARKS.md.

    python scripts/bench.py --events 1000000 --backend both --json bench.json
    python scripts/bench.py --only rss --rss-gb 2
    python scripts/bench.py --only large --backend both
    python scripts/bench.py --only tampered --backend both
    python scripts/bench.py --only many --backend both
    python scripts/bench.py --events 1000000 --backend both \
        --only rebuild,queries,ingest_projections --json bench-proj.json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import math
import os
import pstats
import random
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
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from psycopg import sql as pgsql

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this tree's code, installed or not

import bench_large  # noqa: E402
import bench_many  # noqa: E402
import bench_memory  # noqa: E402
import bench_replay  # noqa: E402
import bench_tampered  # noqa: E402
import rawdb  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

from ledger import chain  # noqa: E402
from ledger.ingest import DEFAULT_BATCH_SIZE, IngestSummary, ingest  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.verify import verify  # noqa: E402
from ledger.workload import synthetic_lines  # noqa: E402
from projections import Projector, queries  # noqa: E402
from projections.runner import REBUILD_BATCH  # noqa: E402
from projections.sql import view_db  # noqa: E402

T = TypeVar("T")
Row = tuple[Any, int, str, bytes]  # originator_id, version, topic, state
BATCH = DEFAULT_BATCH_SIZE  # ingest's batch size: the raw "batched" baselines use the same
REBUILD_WORKERS = (1, 2)  # a rebuild in one process, and shared out by stream in two
INGEST_WORKERS = (1, 2)  # ingest in one process, and shared with a spawned one (2 cores here)
SAVE_AGGREGATES = 100  # aggregates per Application.save (10 events each: ~1000 events)
EVENTS_TABLE = "agentledger_events"
SECTIONS = ("ingest", "verify", "help", "rss", "rebuild", "queries", "ingest_projections",
            "replay", "backtest", "memory", "large", "tampered", "many")
MEMORY_WRITES = 20_000  # the memory section's writes to one scope
LARGE_EVENTS = 500  # the large section's events of 1 MiB, in one trace
TAMPERED_EVENTS = 200_000  # the tampered section's events, in 4 tenants
LIBRARY_DIRS = ("ledger", "projections", "replay")
NOTES: dict[str, str] = {}  # observations of the run, written to the JSON's meta
STORE_SECTIONS = {"ingest", "verify", "rebuild", "queries", "ingest_projections",
                  "replay", "backtest"}


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
    detail: dict[str, float] | None = None  # queries: p50/p95/max in ms, rows returned


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


def say(text: str) -> None:
    """A progress line with the time and load average (long runs are polled)."""
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {text}", flush=True)


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

    def run_ingest(rep: int, workers: int) -> float:
        url = fresh(f"ledger{rep}" + (f"_w{workers}" if workers > 1 else ""))
        with Store.open(url) as store:
            summary, secs = timed(lambda: ingest(store, [str(jsonl)], workers=workers,
                                                 reject_file=str(work / "rejects.jsonl")),
                                  profile("ingest") if workers == 1 else None)
        if summary.accepted != n:
            raise SystemExit(f"ingest accepted {summary.accepted} of {n}: {summary}")
        if workers > 1 or rep < reps - 1:  # only the last one-process store is read later
            discard(url, cluster)
        return secs

    ours: list[Figure] = []
    for workers in INGEST_WORKERS:
        secs = min(run_ingest(rep, workers) for rep in range(reps))
        ours.append(rate_figure(f"{backend}: ingest (parse, validate, hash, chain, store), "
                                f"workers={workers}", n, secs))
    url = (f"sqlite:///{work}/ledger{reps - 1}.db" if cluster is None
           else cluster.url_for(f"bench_ledger{reps - 1}"))
    if args.only & {"ingest", "ingest_projections"}:
        out += ours
    if "verify" in args.only:
        for workers in (1, 2):  # one process; this one and a spawned worker (2 cores here)
            with Store.open(url) as store:
                secs = min(timed(partial(_checked_verify, store, n, workers),
                                 profile("verify") if workers == 1 else None)[1]
                           for _ in range(reps))
            fig = rate_figure(f"{backend}: verify, workers={workers}", n, secs)
            fig.target, fig.passed = ">= 200k events/s", fig.value >= 200_000
            out.append(fig)
    if "ingest" in args.only:
        out += ingest_baselines(backend, args, url, jsonl, cluster, fresh, ours)
    if "ingest_projections" in args.only:
        out += bench_ingest_projections(backend, args, work, jsonl, fresh, profile, ours, cluster)
    if "rebuild" in args.only:
        out += bench_rebuild(backend, args, url, cluster, profile)
    if "queries" in args.only:
        out += bench_queries(backend, args, url, cluster, profile)
    if "replay" in args.only:
        result = bench_replay.bench_replay(fresh("replay"))
        out.append(Figure(f"{backend}: replay of a {result['events']}-event trace from its first "
                          f"failure, p95 (p50 {result['p50_ms']:.1f} ms)", result["p95_ms"],
                          "ms", target="< 50 ms", passed=result["p95_ms"] < 50))
    if "backtest" in args.only:
        for workers in (1, 2):  # one process; this one and a spawned worker (2 cores here)
            result = bench_replay.bench_backtest_on(url, workers=workers)
            out.append(Figure(
                f"{backend}: backtest of {result['terminated_traces']:,} terminated traces, "
                f"workers={workers}", result["traces_per_s"], "traces/s",
                target=">= 2000 traces/s (SQLite)", passed=result["traces_per_s"] >= 2000))
    return out


def ingest_baselines(backend: str, args: argparse.Namespace, url: str, jsonl: Path,
                     cluster: PgCluster | None, fresh: Callable[[str], str],
                     ours: list[Figure]) -> list[Figure]:
    """Raw inserts of the rows the ledger stored, and plain eventsourcing, next to ingest."""
    n, reps, out = args.events, args.repeat, []
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
        secs = min(insert(fresh(f"raw{per}_{rep}"), rows, per) for rep in range(reps))
        base = rate_figure(f"{backend}: {kind}, {label}", len(rows), secs)
        out += [base, *(ratio_figure(f"{backend}: ingest, {_workers(f)} / {kind}, {label}",
                                     f, base, 0.5) for f in ours)]
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
    return [*out, base, *(ratio_figure(f"{backend}: ingest, {_workers(f)} / Application.save",
                                       f, base, 2.0) for f in ours)]


def _workers(fig: Figure) -> str:
    """The ``workers=N`` an ingest figure was measured with (the end of its name)."""
    return fig.name.rsplit(", ", 1)[-1]


# -- projections: ingest with the projector attached, rebuild, queries -------------------

def projector_batch() -> int:
    """The rebuild's batch size (the raw log reads page by the same)."""
    return REBUILD_BATCH


def bench_ingest_projections(backend: str, args: argparse.Namespace, work: Path, jsonl: Path,
                             fresh: Callable[[str], str], profile: Callable[[str], str | None],
                             ours: list[Figure], cluster: PgCluster | None) -> list[Figure]:
    """Ingest with ``Projector(store).attach()`` (as the CLI does) next to ingest alone,
    with each number of processes."""
    n, out = args.events, []

    def run(rep: int, workers: int) -> float:
        with Store.open(fresh(f"ledgerproj{rep}_w{workers}")) as store:
            def go() -> IngestSummary:
                projector = Projector(store)
                projector.attach()
                return ingest(store, [str(jsonl)], workers=workers,
                              reject_file=str(work / "rejects.jsonl"))
            summary, secs = timed(go, profile("ingest_projections") if workers == 1 else None)
            lag = [(s.name, s.lag) for s in Projector(store).status() if s.lag]
        if summary.accepted != n or lag:
            raise SystemExit(f"ingest with projections: {summary}, lag {lag}")
        discard(store.url, cluster)
        return secs

    for workers, alone in zip(INGEST_WORKERS, ours, strict=True):
        say(f"{backend}: ingest with projections attached, workers={workers} ...")
        secs = min(run(rep, workers) for rep in range(args.repeat))
        fig = rate_figure(f"{backend}: ingest with projections attached, workers={workers}",
                          n, secs)
        out += [fig, ratio_figure(f"{backend}: ingest with projections / ingest, "
                                  f"workers={workers}", fig, alone, 0.5)]
    return out


def discard(url: str, cluster: PgCluster | None) -> None:
    """Remove a store no later section reads: on PostgreSQL, autovacuum would otherwise
    vacuum and analyze its million rows on the same two CPUs while the next figures are
    timed (the bench's own noise, not the code's)."""
    if cluster is None:
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        return
    name = unquote(url.rsplit("/", 1)[1].split("?")[0])
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(name)))


def _read_states(url: str, batch: int, decode: bool) -> int:
    """Every stored state in notification order, ``batch`` rows a query (keyset paging)."""
    loads, count, last = orjson.loads, 0, 0
    if url.startswith("sqlite:"):
        sql = (f"SELECT notification_id, state FROM {EVENTS_TABLE} WHERE notification_id > ? "
               "ORDER BY notification_id LIMIT ?")
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as con:
            while rows := con.execute(sql, (last, batch)).fetchall():
                if decode:
                    [loads(state) for _, state in rows]
                last, count = rows[-1][0], count + len(rows)
        return count
    query = (f"COPY (SELECT notification_id, state FROM {EVENTS_TABLE} WHERE notification_id > "
             "%s ORDER BY notification_id LIMIT %s) TO STDOUT (FORMAT BINARY)")
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        while True:  # binary COPY: the fastest read psycopg offers (what read_log uses)
            with cur.copy(query, (last, batch)) as copy:
                copy.set_types(["int8", "bytea"])
                rows = list(copy.rows())
            if not rows:
                return count
            if decode:
                [loads(state) for _, state in rows]
            last, count = rows[-1][0], count + len(rows)


def _select_notifications(store: Store, batch: int) -> int:
    """Page through the log with the library recorder's ``select_notifications``."""
    recorder, count, start = store.backend.recorder, 0, None
    while page := recorder.select_notifications(start, batch, inclusive_of_start=False):
        start, count = page[-1].id, count + len(page)
    return count


class GCTimer:
    """Wall time spent in the cyclic garbage collector while the block runs."""

    def __init__(self) -> None:
        self.seconds, self.collections, self._start = 0.0, [0, 0, 0], 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GCTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def bench_rebuild(backend: str, args: argparse.Namespace, url: str, cluster: PgCluster | None,
                  profile: Callable[[str], str | None]) -> list[Figure]:
    """Full rebuild of every projection next to raw sequential reads of the same log."""
    n, reps, batch = args.events, args.repeat, projector_batch()

    def best(fn: Callable[[], int], what: str = "") -> tuple[float, GCTimer]:
        """Fastest of R runs: its seconds and the time it spent in the cyclic GC."""
        runs = []
        for _ in range(reps):
            with GCTimer() as collector:
                count, secs = timed(fn, profile(what) if what else None)
            if count != n:
                raise SystemExit(f"{backend}: read {count} log entries, expected {n}")
            runs.append((secs, collector))
        return min(runs, key=lambda run: run[0])

    def in_gc(what: str, run: tuple[float, GCTimer]) -> Figure:
        secs, collector = run
        return Figure(f"{backend}: {what}, share of its time in cyclic GC (collections by "
                      f"generation {collector.collections})", 100 * collector.seconds / secs, "%")

    say(f"{backend}: raw reads, select_notifications, rebuild ...")
    raw = rate_figure(f"{backend}: raw read of states, {batch}/query", n,
                      best(lambda: _read_states(url, batch, False))[0])
    loads_run = best(lambda: _read_states(url, batch, True))
    raw_loads = rate_figure(f"{backend}: raw read + orjson.loads, {batch}/query", n, loads_run[0])
    with Store.open(url) as store:
        library = rate_figure(f"{backend}: eventsourcing select_notifications, {batch}/call", n,
                              best(lambda: _select_notifications(store, batch))[0])
        runs = {w: best(lambda w=w: Projector(store).rebuild(workers=w),
                        "rebuild" if w == 1 else f"rebuild-w{w}")
                for w in REBUILD_WORKERS}
        say(f"{backend}: projections check ...")
        checks = {w: best(lambda w=w: _checked_views(store, w), "check" if w == 1 else "")
                  for w in REBUILD_WORKERS}
    out = [raw, raw_loads, in_gc("raw read + orjson.loads", loads_run), library]
    for workers, run in runs.items():
        rebuild = rate_figure(f"{backend}: rebuild of all projections (batch {batch}, "
                              f"workers={workers})", n, run[0])
        check = rate_figure(f"{backend}: projections check (a fresh fold, every table "
                            f"compared), workers={workers}", n, checks[workers][0])
        out += [check, Figure(f"{backend}: projections check / rebuild, workers={workers}",
                              check.value / rebuild.value, "x", rebuild.name,
                              rebuild.value, check.value / rebuild.value)]
        rebuild.target, rebuild.passed = ">= 100k events/s", rebuild.value >= 100_000
        out += [rebuild, in_gc(f"rebuild, workers={workers} (this process)", run),
                ratio_figure(f"{backend}: rebuild / raw read, workers={workers}", rebuild, raw,
                             0.5),
                ratio_figure(f"{backend}: rebuild / raw read + orjson.loads, workers={workers}",
                             rebuild, raw_loads, 0.5)]
    return out


@dataclass
class QuerySample:
    """Parameter values drawn from the built views (untimed), for varied query arguments."""

    tenants: list[str]
    writes: list[tuple[str, str, str, int]]  # tenant, trace_id, scope, seq of a memory write
    failure_traces: list[tuple[str, str]]  # tenant, trace_id
    tools: list[str]
    agents: list[str]
    events: list[str]
    scopes: list[str]
    writers: list[str]
    keys: list[str]
    span: tuple[float, float]  # epoch seconds of the first and last tool call

    @classmethod
    def draw(cls, store: Store) -> QuerySample:
        q = view_db(store.backend).query

        def distinct(column: str, table: str) -> list[str]:
            return sorted(str(v) for (v,) in q(f"SELECT DISTINCT {column} FROM {{{table}}}")
                          if v is not None)

        (first, last), = q("SELECT MIN(ts), MAX(ts) FROM {tool_calls}")
        return cls(
            distinct("tenant", "tool_calls"),
            [(t, tr, sc, int(s)) for t, tr, sc, s in q(
                "SELECT tenant, trace_id, scope, seq FROM {memory_writes}")],
            [(t, tr) for t, tr in q("SELECT DISTINCT tenant, trace_id FROM {failures}")],
            distinct("tool", "failures"), distinct("executed_by", "failures"),
            distinct("event", "failures"), distinct("scope", "write_attribution"),
            distinct("executed_by", "write_attribution"), distinct("key", "write_attribution"),
            (_epoch(first), _epoch(last)))

    def window(self, rng: random.Random, shortest: float, longest: float,
               days: bool = False) -> dict[str, str]:
        """A since/until window inside the data (whole days as YYYY-MM-DD if ``days``)."""
        start = rng.uniform(self.span[0], max(self.span[0], self.span[1] - shortest))
        end = start + rng.uniform(shortest, longest)
        form = "%Y-%m-%d" if days else "%Y-%m-%dT%H:%M:%SZ"
        return {"since": time.strftime(form, time.gmtime(start)),
                "until": time.strftime(form, time.gmtime(end))}


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


QueryCase = tuple[str, Callable[[random.Random], Callable[[], Any]]]
LIST_LIMIT = 100  # failures and audit writes: at most this many rows per call
HOUR, DAY = 3600.0, 86400.0


def query_cases(store: Store, s: QuerySample) -> list[QueryCase]:
    """Every query of the issue, each a function drawing varied arguments from ``rng``."""
    cases: list[QueryCase] = []

    def add(name: str, make: Callable[[random.Random], Callable[[], Any]]) -> None:
        cases.append((name, make))

    def write(rng: random.Random) -> tuple[str, str, str, int]:
        return rng.choice(s.writes)

    def show(rng: random.Random) -> Callable[[], Any]:
        t, tr, scope, seq = write(rng)
        return partial(queries.memory_state, store, t, tr, scope=scope,
                       at=rng.choice((None, seq)))

    def diff(rng: random.Random) -> Callable[[], Any]:
        t, tr, scope, seq = write(rng)
        return partial(queries.memory_diff, store, t, tr, rng.randint(0, seq), seq, scope=scope)

    def history(rng: random.Random) -> Callable[[], Any]:
        t, tr, scope, _ = write(rng)
        return partial(queries.memory_history, store, t, tr, scope=rng.choice((None, scope)))

    add("memory show", show)
    add("memory diff", diff)
    add("memory history", history)
    listings: tuple[tuple[str, Callable[..., Any], dict[str, list[str]], str], ...] = (
        ("failures", queries.failures,
         {"tool": s.tools, "agent": s.agents, "event": s.events}, "failure_traces"),
        ("audit writes", queries.audit_writes,
         {"scope": s.scopes, "by": s.writers, "key": s.keys}, "writes"))
    for label, fn, filters, traces in listings:
        def listing(rng: random.Random, fn: Callable[..., Any] = fn,
                    option: str | None = None, values: list[str] | None = None,
                    traces: str = traces) -> Callable[[], Any]:
            kwargs: dict[str, Any] = {"limit": LIST_LIMIT}
            if option == "trace_id":
                tenant, kwargs["trace_id"] = rng.choice(getattr(s, traces))[:2]
            else:
                tenant = rng.choice(s.tenants)
                if option == "window":
                    kwargs |= s.window(rng, 10 * 60, DAY)
                elif option is not None and values is not None:
                    kwargs[option] = rng.choice(values)
            return partial(fn, store, tenant, **kwargs)

        add(f"{label} (tenant only, limit {LIST_LIMIT})", listing)
        for option, values in filters.items():
            add(f"{label} --{option} (limit {LIST_LIMIT})",
                partial(listing, option=option, values=values))
        add(f"{label} --trace (limit {LIST_LIMIT})", partial(listing, option="trace_id"))
        add(f"{label} --since/--until (limit {LIST_LIMIT})", partial(listing, option="window"))

    def findings(rng: random.Random) -> Callable[[], Any]:
        kind = rng.choice((None, *queries.FINDING_KINDS))
        tenant, trace = rng.choice(s.writes)[:2]
        return partial(queries.audit_findings, store, tenant, kind=kind,
                       trace_id=trace if rng.random() < 0.3 else None)

    add("audit findings", findings)
    stats = (("fallbacks", queries.fallback_stats, ("tool", "pair", "agent", "day")),
             ("retries", queries.retry_stats, ("tool", "agent", "day")),
             ("failures", queries.failure_stats, ("tool", "reason", "agent")))
    for label, fn, bys in stats:
        for by in bys:
            def stat(rng: random.Random, fn: Callable[..., Any] = fn, by: str = by,
                     windowed: bool = False) -> Callable[[], Any]:
                window = s.window(rng, HOUR, 2 * DAY, days=rng.random() < 0.5) if windowed \
                    else {}
                return partial(fn, store, rng.choice(s.tenants), by=by, **window)

            add(f"stats {label} --by {by}", stat)
            add(f"stats {label} --by {by} --since/--until", partial(stat, windowed=True))
    return cases


def _size(result: Any) -> int:
    """Rows (or keys) a query returned."""
    if isinstance(result, list):
        return len(result)
    if isinstance(result, queries.MemoryView):
        return len(result.state)
    if isinstance(result, queries.MemoryDiff):
        return len(result.added) + len(result.removed) + len(result.changed)
    return 1


def run_query_cases(backend: str, store: Store, cases: list[QueryCase], reps: int,
                    warmup: int) -> list[Figure]:
    """Each case ``warmup`` times untimed, then ``reps`` timed calls; p50/p95/max in ms."""
    out = []
    for i, (name, make) in enumerate(cases):
        rng = random.Random(i)
        for _ in range(warmup):
            make(rng)()
        times, sizes = [], []
        for _ in range(reps):
            call = make(rng)
            start = time.perf_counter()
            result = call()
            times.append((time.perf_counter() - start) * 1000)
            sizes.append(_size(result))
        times.sort()
        p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        detail = {"p50_ms": round(statistics.median(times), 3), "p95_ms": round(p95, 3),
                  "max_ms": round(times[-1], 3), "mean_ms": round(statistics.fmean(times), 3),
                  "calls": reps, "rows_mean": round(statistics.fmean(sizes), 1),
                  "rows_max": max(sizes)}
        out.append(Figure(f"{backend}: query {name}", p95, "ms", target="p95 < 20 ms",
                          passed=p95 < 20, detail=detail))
    return out


def bench_queries(backend: str, args: argparse.Namespace, url: str, cluster: PgCluster | None,
                  profile: Callable[[str], str | None]) -> list[Figure]:
    """The query set, in process, over the projections of the ledger store."""
    with Store.open(url) as store:
        projector = Projector(store)
        if any(s.lag or s.rebuild_needed for s in projector.status()):
            applied, secs = timed(projector.catch_up)  # untimed for the queries
            say(f"{backend}: projections caught up ({applied:,} entries, {secs:.1f} s)")
        if cluster is not None:
            NOTES["pg_views_analyzed_before_queries"] = _pg_analyzed(url)
            say(f"{backend}: view tables analyzed: {NOTES['pg_views_analyzed_before_queries']}")
        cases = query_cases(store, QuerySample.draw(store))
        say(f"{backend}: {len(cases)} queries x ({args.query_warmup} + {args.query_reps}) ...")
        figures, _ = timed(lambda: run_query_cases(backend, store, cases, args.query_reps,
                                                   args.query_warmup), profile("queries"))
        if cluster is not None:
            NOTES["pg_views_analyzed_after_queries"] = _pg_analyzed(url)
            say(f"{backend}: view tables analyzed after the queries: "
                f"{NOTES['pg_views_analyzed_after_queries']}")
    return figures


def _pg_analyzed(url: str) -> str:
    """Which view tables PostgreSQL has statistics for (autovacuum's ANALYZE)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT relname, COALESCE(last_analyze, last_autoanalyze) FROM "
                            "pg_stat_user_tables WHERE starts_with(relname, 'agentledger_') "
                            "ORDER BY relname").fetchall()
    done = [str(name).removeprefix("agentledger_") for name, at in rows if at is not None]
    return ", ".join(done) or "none"


def _checked_verify(store: Store, n: int, workers: int) -> None:
    report = verify(store, workers=workers)
    if not report.ok or report.events != n:
        raise SystemExit(f"verify: {report.events} events, problems {report.problems[:3]}")


def _checked_views(store: Store, workers: int) -> int:
    from projections.check import check_views

    report = check_views(store, workers=workers)
    if not report.ok:
        raise SystemExit(f"projections check: views differ from a fresh fold: {report.as_json()}")
    return report.entries_read


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


def bench_memory_states(backends: list[str], work: Path, cluster: PgCluster | None
                        ) -> list[Figure]:
    """Ingest and verify of one scope written MEMORY_WRITES times: to new keys (the state,
    and what its hash covers, grows with every write) against the same key each time."""
    n, out = MEMORY_WRITES, []
    for backend in backends:
        say(f"{backend}: memory states ...")
        figures = {}
        for i, order in enumerate(bench_memory.KEY_ORDERS):
            url = (f"sqlite:///{work}/memory{i}.db" if backend == "sqlite" or cluster is None
                   else cluster.create_database(f"bench_memory{i}"))
            secs = bench_memory.ingest_and_verify(url, bench_memory.memory_lines(n, order))
            figures[order] = [rate_figure(f"{backend}: {what} of {n:,} memory writes, {order}",
                                          n, secs[f"{what}_s"]) for what in ("ingest", "verify")]
        out += [f for order in bench_memory.KEY_ORDERS for f in figures[order]]
        for order in bench_memory.KEY_ORDERS[1:]:
            for mine, base in zip(figures[order], figures["one key"], strict=True):
                ratio = ratio_figure(f"{mine.name} / one key", mine, base, 0)
                ratio.target, ratio.passed = "", None
                out.append(ratio)
    return out


def bench_help() -> list[Figure]:
    base = Figure("python -c pass (median of 10)", median_wall([sys.executable, "-c", "pass"]),
                  "s")
    secs = median_wall([entry_point(), "--help"])
    return [base, Figure("agentledger --help (median of 10)", secs, "s", base.name, base.value,
                         secs / base.value, "< 0.3 s", secs < 0.3)]


# Linux keeps a process's peak RSS across fork and exec, so a child forked from this
# (large) process would report at least our own RSS. A small probe process forks the
# ingest instead and writes the child's own ru_maxrss (KiB) and exit code to argv[1].
_RSS_PROBE = """import os, subprocess, sys, threading, time
proc = subprocess.Popen(sys.argv[2:])
peak_total = 0  # KiB: the sum over the ingest's processes, sampled every 20 ms

def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0

def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []

def sample():
    global peak_total
    while proc.poll() is None:
        tree, todo = 0, [proc.pid]
        while todo:
            pid = todo.pop()
            tree += rss(pid)
            todo += children(pid)
        peak_total = max(peak_total, tree)
        time.sleep(0.02)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
_, status, usage = os.wait4(proc.pid, 0)
sampler.join(timeout=1)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {peak_total}")
"""


def bench_rss(gb: float, work: Path) -> list[Figure]:
    """Peak RSS of `agentledger ingest` (a child process) over a generated file of ~gb GB
    of events, then over a file of the same size holding a single line (which is longer
    than an event may be: rejected, and saved whole in the reject file)."""
    path, target = work / "big.jsonl", int(gb * 1e9)
    size = lines = 0
    with path.open("wb") as fh:
        for line in synthetic_lines(target // 100, seed=2):  # far more than needed: we stop
            fh.write(line)
            size, lines = size + len(line), lines + 1
            if size >= target:
                break
    try:
        secs, peak_mb, total_mb, _ = _measure_ingest(path, work, expect=(lines, 0, 0))
    finally:
        path.unlink(missing_ok=True)
    figures = [rate_figure(f"rss: CLI ingest of {size / 1e9:.2f} GB (sqlite)", lines, secs),
               Figure(f"rss: peak RSS of CLI ingest, largest process, {size / 1e9:.2f} GB input",
                      peak_mb, "MB"),
               Figure(f"rss: peak RSS of CLI ingest, all its processes (sampled every 20 ms), "
                      f"{size / 1e9:.2f} GB input", total_mb, "MB",
                      target="< 300 MB at 2 GB", passed=total_mb < 300)]
    with path.open("wb") as fh:  # one line of `size` bytes (or just over the limit of an
        piece, head = ("é😀a" * 2**17).encode(), b'{"trace_id":"long","seq":1,"x":"'
        fh.write(head)  # event, if more): a JSON object with one string
        for _ in range(max(size, chain.MAX_EVENT_BYTES + len(piece)) // len(piece)):
            fh.write(piece)
        fh.write(b'"}\n')
        one = fh.tell()
    try:
        secs, _, total_mb, saved = _measure_ingest(path, work, expect=(0, 0, 1))
        escaped = one - 1 + head.count(b'"') + 1  # the line as a JSON string: \" for "
        if saved != escaped:
            raise SystemExit(f"the reject file holds {saved:,} bytes of raw, not {escaped:,}")
    finally:
        path.unlink(missing_ok=True)
    return [*figures, Figure(f"rss: peak RSS of CLI ingest of one line of {one / 1e9:.2f} GB "
                             f"(rejected, saved whole in {secs:.1f} s), all its processes",
                             total_mb, "MB", target="< 300 MB at 2 GB", passed=total_mb < 300)]


def bench_large_events(backends: list[str], work: Path, cluster: PgCluster | None
                       ) -> list[Figure]:
    """Peak RSS of the CLI's ingest, rebuild, verify and export of one trace of
    LARGE_EVENTS events of 1 MiB (``scripts/bench_large.py``), on each backend."""
    path = work / "large.jsonl"
    size = bench_large.write_trace(path, LARGE_EVENTS)
    out = []
    try:
        for backend in backends:
            say(f"{backend}: {LARGE_EVENTS} events of 1 MiB in one trace ...")
            url = (f"sqlite:///{work}/large.db" if backend == "sqlite" or cluster is None
                   else cluster.create_database("bench_large"))
            found = bench_large.run_commands(url, path, work, partial(_measure, work=work))
            for name, (secs, total_mb) in found.items():
                out.append(Figure(f"{backend}: peak RSS of {name}, one trace of {LARGE_EVENTS} "
                                  f"events of 1 MiB ({size / 1e6:,.0f} MB, {secs:.1f} s), "
                                  "all its processes", total_mb, "MB", target="< 300 MB",
                                  passed=total_mb < 300))
    finally:
        path.unlink(missing_ok=True)
        (work / "large-export.jsonl").unlink(missing_ok=True)
    return out


def bench_tampered_ledger(backends: list[str], work: Path, cluster: PgCluster | None
                          ) -> list[Figure]:
    """Peak RSS of the CLI's commands on a ledger with a finding for each event, then a
    problem for each event (``scripts/bench_tampered.py``), on each backend."""
    out = []
    per_tenant = TAMPERED_EVENTS // bench_tampered.TENANTS
    for backend in backends:
        say(f"{backend}: {TAMPERED_EVENTS:,} events resubmitted changed, then altered ...")
        url = (f"sqlite:///{work}/tampered.db" if backend == "sqlite" or cluster is None
               else cluster.create_database("bench_tampered"))
        found = bench_tampered.run_commands(url, work, TAMPERED_EVENTS,
                                            partial(_measure, work=work))
        for name, (secs, total_mb) in found.items():
            scope = f"{per_tenant:,} of them" if "audit" in name else f"{TAMPERED_EVENTS:,}"
            out.append(Figure(f"{backend}: peak RSS of {name}, {scope} ({secs:.1f} s), "
                              "all its processes", total_mb, "MB", target="< 300 MB",
                              passed=total_mb < 300))
    return out


def bench_many_traces(backends: list[str], work: Path, cluster: PgCluster | None
                      ) -> list[Figure]:
    """Peak RSS of the commands that read every trace of a tenant of many short traces
    (``scripts/bench_many.py``), on each backend."""
    out = []
    for backend in backends:
        say(f"{backend}: a tenant of {bench_many.TRACES:,} traces of two events ...")
        url = (f"sqlite:///{work}/many.db" if backend == "sqlite" or cluster is None
               else cluster.create_database("bench_many"))
        found = bench_many.run_commands(url, work, partial(_measure, work=work))
        for name, (secs, total_mb) in found.items():
            out.append(Figure(f"{backend}: peak RSS of {name}, {bench_many.TRACES:,} traces "
                              f"({secs:.1f} s), all its processes", total_mb, "MB",
                              target="< 300 MB", passed=total_mb < 300))
    return out


def _measure(args: list[str], work: Path) -> tuple[float, float, float, int]:
    """Run ``agentledger ARGS`` under the RSS probe: (seconds, peak RSS of its largest
    process in MB, peak RSS of all its processes in MB, exit code)."""
    with (work / "rss.out").open("wb") as stdout:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", _RSS_PROBE, str(work / "rss.usage"),
                        entry_point(), *args], stdout=stdout, check=False)
        secs = time.perf_counter() - start
    maxrss_kib, returncode, total_kib = map(int, (work / "rss.usage").read_text().split())
    return secs, maxrss_kib / 1024, total_kib / 1024, returncode  # KiB on Linux


def _measure_ingest(path: Path, work: Path, expect: tuple[int, int, int]
                    ) -> tuple[float, float, float, int]:
    """Ingest ``path`` with the CLI in a fresh store: (seconds, peak RSS of the largest
    process in MB, peak RSS of all its processes in MB, bytes of the first rejected
    line's raw as the reject file holds it), checking (accepted, duplicates, rejected)."""
    for old in ("rss.db", "rss.db-wal", "rss.db-shm", "rss-rejects.jsonl"):
        (work / old).unlink(missing_ok=True)
    rejects = work / "rss-rejects.jsonl"
    args = ["--store", f"sqlite:///{work / 'rss.db'}", "ingest", str(path),
            "--reject-file", str(rejects), "--json"]
    print(f"rss: {path.stat().st_size / 1e9:.2f} GB; running agentledger {' '.join(args)}",
          flush=True)
    try:
        secs, peak_mb, total_mb, returncode = _measure(args, work)
        summary = orjson.loads((work / "rss.out").read_bytes())
        counts = (summary["accepted"], summary["duplicates"], summary["rejected"])
        if returncode != (3 if expect[2] else 0) or counts != expect:
            raise SystemExit(f"ingest exited {returncode}: {summary}")
        saved = 0
        if expect[2]:
            with rejects.open("rb") as fh:  # the raw of a long line, without reading it all
                head = fh.read(4096)
                raw_at = head.index(b'"raw":"') + len(b'"raw":"')
                tail = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, tail - 4096))
                last = fh.read()
                saved = tail - len(last) + last.rindex(b'","raw_encoding"') - raw_at
    finally:
        rejects.unlink(missing_ok=True)
    return secs, peak_mb, total_mb, saved


# -- output -----------------------------------------------------------------------------

def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "events/s":
        return f"{value / 1000:,.1f}k/s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "%":
        return f"{value:.0f}%"
    return f"{value:.3f} s" if unit == "s" else f"{value:,.0f} {unit}"


def print_table(figures: list[Figure]) -> None:
    rows: list[tuple[str, ...]] = [("figure", "value", "baseline", "ratio", "target", "result")]
    for f in figures:
        if f.detail is not None:
            continue  # queries: their own table below
        value = "" if f.unit == "x" else fmt(f.value, f.unit)
        base = fmt(f.baseline_value, "events/s" if f.unit == "x" else f.unit)
        rows.append((f.name, value, base, fmt(f.ratio, "x"), f.target, _status(f)))
    _print_rows(rows)
    timed_queries = [f for f in figures if f.detail is not None]
    if timed_queries:
        d0 = timed_queries[0].detail or {}
        print(f"\nQueries, in process: {d0.get('calls', 0):.0f} timed calls each with varied "
              "arguments, after a warm-up")
        rows = [("query", "p50", "p95", "max", "rows (mean / max)", "target", "result")]
        for f in timed_queries:
            d = f.detail or {}
            rows.append((f.name, fmt(d["p50_ms"], "ms"), fmt(d["p95_ms"], "ms"),
                         fmt(d["max_ms"], "ms"), f"{d['rows_mean']:g} / {d['rows_max']:.0f}",
                         f.target, _status(f)))
        _print_rows(rows)


def _status(f: Figure) -> str:
    return "" if f.passed is None else ("PASS" if f.passed else "MISS")


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def git_state() -> str:
    """The commit measured, with '+modified:<digest>' if library files differ from it.

    The digest (of every ``.py`` file under ledger/, projections/ and replay/) tells
    whether the working tree changed during a run.
    """
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = git("status", "--porcelain", "--", *LIBRARY_DIRS).strip()
    digest = hashlib.sha256()
    for path in sorted(p for d in LIBRARY_DIRS for p in (ROOT / d).rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    head = git("rev-parse", "--short", "HEAD").strip()
    return head + (f"+modified:{digest.hexdigest()[:8]}" if dirty else "")


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
                   help="run ingest, verify, rebuild, ingest_projections and the query set "
                        "under cProfile, write DIR/*.prof (slower)")
    p.add_argument("--query-reps", type=int, default=200,
                   help="timed calls of each query (default 200)")
    p.add_argument("--query-warmup", type=int, default=20,
                   help="untimed calls of each query before timing (default 20)")
    args = p.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := args.only - set(SECTIONS):
        p.error(f"unknown --only section(s): {', '.join(sorted(unknown))}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if args.tmp is not None:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="agentledger-bench-", dir=args.tmp))
    figures: list[Figure] = []
    meta: dict[str, Any] = {"events": args.events, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                            "cpus": os.cpu_count(), "python": sys.version.split()[0],
                            "repeat": args.repeat, "loadavg_start": os.getloadavg(),
                            "git_start": git_state()}
    cluster: PgCluster | None = None
    try:
        if args.only & STORE_SECTIONS:
            jsonl = base / "events.jsonl"
            size = write_jsonl(jsonl, args.events)
            meta["jsonl_bytes_per_event"] = round(size / max(args.events, 1), 1)
            meta["projector_batch"] = projector_batch()
            print(f"workload: {args.events:,} events, {size / 1e6:,.0f} MB", flush=True)
            if "postgres" in backends:
                cluster = PgCluster().start()
            for backend in backends:
                work = base / backend
                work.mkdir()
                wanted = [s for s in SECTIONS if s in args.only & STORE_SECTIONS]
                say(f"{backend}: {', '.join(wanted)} ...")
                pg = cluster if backend == "postgres" else None
                figures += bench_backend(backend, args, work, jsonl, pg)
                shutil.rmtree(work, ignore_errors=True)
        if "help" in args.only:
            figures += bench_help()
        own_stores = {"memory": bench_memory_states, "large": bench_large_events,
                      "tampered": bench_tampered_ledger, "many": bench_many_traces}
        for section, bench_section in own_stores.items():  # each makes its own stores
            if section in args.only:
                if "postgres" in backends and cluster is None:
                    cluster = PgCluster().start()
                (base / section).mkdir()
                figures += bench_section(backends, base / section, cluster)
        if "rss" in args.only:
            (base / "rss").mkdir()
            figures += bench_rss(args.rss_gb, base / "rss")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    meta["loadavg_end"], meta["git_end"], meta["notes"] = os.getloadavg(), git_state(), NOTES
    events = f", {args.events:,} events" if args.only & STORE_SECTIONS else ""
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
