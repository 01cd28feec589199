"""What the least possible ingest written in Python reaches on PostgreSQL, next to ours.

The target "ingest >= 0.5x binary COPY" (docs/BENCHMARKS.md) asks how close the
ledger's ingest comes to the driver's fastest insert. This script measures, in one
run, on a throwaway cluster and two processes like the ledger's ingest:

- **floor**: each process reads every line, ``orjson.loads`` it, keeps the lines of
  its half of the streams, sets ``prev_hash`` to the SHA-256 of the stream's previous
  record, ``orjson.dumps`` the record and writes it by binary ``COPY``, 5,000 rows a
  transaction. No validation, no memory fold or hash, no catalog, no table lock: what
  any pipeline that parses, chains and stores each event must do at least;
- **raw COPY**: the rows the floor stored, read back, by one binary ``COPY`` of 5,000
  rows a transaction into an empty events table (``scripts/bench.py``'s baseline);
- **ledger**: ``ledger.ingest.ingest(..., workers=2)`` of the same file, no projections.

    python scripts/ingest_floor.py --events 1000000 --repeat 2

Not a target of its own: the evidence for what the target leaves the ledger's own
per-event work (docs/BENCHMARKS.md, "What misses, and why").
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import sys
import tempfile
import time
import zlib
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this tree's code, installed or not

from pgcluster import PgCluster  # noqa: E402

from ledger import chain  # noqa: E402
from ledger.backends.catalog import EVENTS_TABLE  # noqa: E402
from ledger.ingest import ingest  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.workload import synthetic_lines  # noqa: E402

COPY = (f"COPY {EVENTS_TABLE} (originator_id, originator_version, topic, state) "
        "FROM STDIN (FORMAT BINARY)")
PER_TXN = 5000


def _copy(conn: psycopg.Connection, rows: list[tuple[object, ...]]) -> None:
    with conn.transaction(), conn.cursor() as cur, cur.copy(COPY) as copy:
        copy.set_types(["uuid", "int8", "text", "bytea"])
        for row in rows:
            copy.write_row(row)


def floor_part(url: str, path: str, part: int, parts: int) -> None:
    """The floor pipeline for the streams of ``part`` (of ``parts``)."""
    heads: dict[object, str] = {}
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(url, autocommit=True) as conn, open(path, "rb") as fh:
        for line in fh:
            obj = orjson.loads(line)
            key = (obj["tenant"] + "\0" + obj["trace_id"]).encode()
            if zlib.crc32(key) % parts != part:
                continue
            sid = chain.trace_stream_id(obj["tenant"], obj["trace_id"])
            obj["prev_hash"] = heads.get(sid, chain.GENESIS_HASH)
            state = orjson.dumps(obj)
            heads[sid] = "sha256:" + hashlib.sha256(state).hexdigest()
            rows.append((sid, obj["seq"], chain.EVENT_TOPIC, state))
            if len(rows) == PER_TXN:
                _copy(conn, rows)
                rows.clear()
        if rows:
            _copy(conn, rows)


def run_floor(url: str, path: str) -> float:
    """Seconds for the floor pipeline in two processes (one spawned, as ingest does)."""
    Store.open(url).close()
    spawn = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    other = spawn.Process(target=floor_part, args=(url, path, 1, 2))
    other.start()
    floor_part(url, path, 0, 2)
    other.join()
    if other.exitcode != 0:
        raise SystemExit(f"floor part 1 failed (exit {other.exitcode})")
    return time.perf_counter() - start


def run_copy(url: str, rows: list[tuple[object, ...]]) -> float:
    Store.open(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(0, len(rows), PER_TXN):
            _copy(conn, rows[i:i + PER_TXN])
        return time.perf_counter() - start


def run_ledger(url: str, path: str) -> float:
    with Store.open(url) as store:
        start = time.perf_counter()
        ingest(store, [path], workers=2)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "floor.jsonl")
        with open(path, "wb") as fh:
            for line in synthetic_lines(args.events, seed=1):  # lines end with "\n"
                fh.write(line)
        cluster = PgCluster().start()
        try:
            for rep in range(1, args.repeat + 1):
                floor_url = cluster.create_database(f"floor_{rep}")
                floor = run_floor(floor_url, path)
                with psycopg.connect(floor_url) as conn:
                    rows = conn.execute(f"SELECT originator_id, originator_version, topic, state "
                                        f"FROM {EVENTS_TABLE} ORDER BY notification_id").fetchall()
                raw = run_copy(cluster.create_database(f"raw_{rep}"), rows)
                ours = run_ledger(cluster.create_database(f"ledger_{rep}"), path)
                n = len(rows)
                print(f"run {rep}: raw binary COPY {n / raw / 1e3:.1f}k rows/s; floor, 2 "
                      f"processes {n / floor / 1e3:.1f}k/s = {raw / floor:.2f}x; ledger ingest, "
                      f"2 processes {n / ours / 1e3:.1f}k/s = {raw / ours:.2f}x", flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
