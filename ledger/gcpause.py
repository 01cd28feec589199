"""Pausing Python's cyclic garbage collector around allocation-heavy work.

Decoded records, projection contexts and replayed events are JSON values and
tuples: they hold no reference cycles, so reference counting frees them all.
Their allocation rate still triggers the cycle collector, whose full collections
walk every live object: over a third of a 1M-event projection rebuild, and the
slow tail of a replay's latency (docs/BENCHMARKS-HISTORY.md).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the block (re-enabled after, if it was on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
