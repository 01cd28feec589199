"""The error hierarchy: every LedgerError crosses from a worker process intact."""

from __future__ import annotations

import pickle
import time
from functools import partial

import pytest

from ledger import errors, records
from ledger.workers import share, spawn_pool

EXAMPLES: dict[type[errors.LedgerError], errors.LedgerError] = {
    errors.ValidationError: errors.ValidationError("must be a string", field="payload.tool"),
    errors.NotIJSONError: errors.NotIJSONError("integer beyond 2**53", field="payload.value"),
    errors.SequenceError: errors.SequenceError("seq 5 after 3", field="seq"),
    errors.UnreadableRecordError: errors.UnreadableRecordError("acme", "t-1", 3, "not JSON"),
    errors.MemoryDisagreementError: errors.MemoryDisagreementError(
        "acme", "t-1", 7, "memory of memory/a before seq 9 in the memory view disagrees"),
    errors.UnwritableReplayError: errors.UnwritableReplayError("t-1", 9, "beyond 2**53"),
}


def _all_errors(cls: type[errors.LedgerError]) -> list[type[errors.LedgerError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _all_errors(sub))]


@pytest.mark.parametrize("cls", _all_errors(errors.LedgerError), ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_message_and_attributes(
        cls: type[errors.LedgerError]) -> None:
    error = EXAMPLES.get(cls) or cls(f"{cls.__name__} happened")
    error.__notes__ = ["a note"]  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error) and copy.args == error.args
    assert copy.__dict__ == error.__dict__
    assert copy.exit_code == error.exit_code


def test_an_error_raised_in_a_worker_reaches_the_parent_as_itself() -> None:
    # Before: UnreadableRecordError(tenant, name, seq, reason) failed to unpickle in
    # the parent, which then saw only a broken pool ("ended abruptly").
    with spawn_pool(1) as pool:
        future = pool.submit(partial(records.decode_stored, b"not json", tenant="acme",
                                     name="t-1", seq=3))
        with pytest.raises(errors.UnreadableRecordError) as caught:
            future.result(timeout=60)
    assert (caught.value.tenant, caught.value.name, caught.value.seq) == ("acme", "t-1", 3)
    assert "tenant 'acme' trace 't-1' seq 3" in str(caught.value)


def _fail(part: object) -> None:
    raise errors.StoreError(f"part {part} failed")


def test_an_error_here_stops_the_workers_instead_of_waiting_for_them() -> None:
    # The worker takes the first part (a 60 s sleep); this process fails on the
    # last at once. Leaving the pool's block used to wait for the sleep to end.
    started = time.monotonic()
    with pytest.raises(errors.StoreError, match=r"part 0\.0 failed"), spawn_pool(1) as pool:
        for _ in share(pool, [60.0, 0.0], time.sleep, _fail, what="test"):
            pass
    assert time.monotonic() - started < 30
