"""How ``ledger.workers.share`` hands parts out between this process and its workers."""

from __future__ import annotations

import operator
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from ledger import errors
from ledger.workers import share, spawn_pool


def _fail(part: object) -> None:
    raise errors.StoreError(f"part {part} failed")


def test_every_part_runs_once_and_yields_its_own_result() -> None:
    parts = list(range(40))
    with spawn_pool(2) as pool:
        seen = [(index, result) for index, result, _ in
                share(pool, parts, operator.neg, operator.neg, what="test")]
    assert sorted(seen) == [(i, -i) for i in parts]


def _mark_then_sleep(marker: Path, seconds: float) -> None:
    marker.touch()
    time.sleep(seconds)


def test_no_part_waits_behind_a_busy_worker(tmp_path: Path) -> None:
    # The worker is busy with part 0 (3 s) once this process has run part 3; parts 2
    # and 1 must then run here at once. The executor used to queue one part more than
    # it had workers, marked running, so this process could not take part 1 back.
    started = tmp_path / "worker-started"
    here: list[int] = []

    def local(part: float) -> None:
        deadline = time.monotonic() + 60
        while part and not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    with spawn_pool(1) as pool:
        for index, _, ran_here in share(pool, [3.0, 0.0, 0.0, 1.0],
                                        partial(_mark_then_sleep, started), local, what="test"):
            if ran_here:
                here.append(index)
    assert here == [3, 2, 1]


def test_this_process_may_run_the_last_part_to_finish() -> None:
    # This process still runs part 1 when the worker has finished part 0 (or it runs
    # both, if the worker starts late): share must end then, each part yielded once.
    seen: list[int] = []

    def run() -> None:
        with spawn_pool(1) as pool:
            seen.extend(i for i, _, _ in share(pool, [0.0, 2.0], time.sleep, time.sleep,
                                               what="test"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "share still waiting after every part finished"
    assert sorted(seen) == [0, 1]


def _fail_first(part: float) -> None:
    if part == 0:
        raise errors.StoreError("part 0 failed")
    time.sleep(part)


def test_an_error_in_a_worker_stops_this_process_between_its_parts() -> None:
    # The worker fails on part 0 at once; this process has 100 parts of 0.2 s. It used
    # to run its share (about half of them) before it looked at what the worker did.
    here: list[float] = []

    def local(part: float) -> None:
        here.append(part)
        time.sleep(part)

    with pytest.raises(errors.StoreError, match="part 0 failed"), spawn_pool(1) as pool:
        for _ in share(pool, [0.0] + [0.2] * 100, _fail_first, local, what="test"):
            pass
    assert len(here) < 25
