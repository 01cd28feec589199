"""Memory state per write scope and its hash (trace-event contract, section 3)."""

from __future__ import annotations

import hashlib
import math
from types import MappingProxyType
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import MAX_SAFE_INTEGER
from ledger.errors import NotIJSONError, ValidationError
from ledger.memory import EMPTY_MEMORY_HASH, MemoryState, apply_write, memory_hash

EMPTY_VECTOR = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
SPEC_VECTOR = "sha256:540266d19a2735bdd3cab67cf9367223cf7f4717f20ee8fd17eb7b8c7bf05743"
SPEC_STATE = {
    "search_result": {"hits": 3, "top": "Zürich"},
    "plan": ["a", "b"],
    "score": 1.5e-7,
    "n": 10,
}

# Few keys, so random operations overwrite and delete existing ones; some sort by UTF-16.
keys = st.sampled_from(["a", "b", "B", "é", "\ue000", "\uffff", "\U0001f600", "a\U00010000", ""])
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
operations = st.lists(st.tuples(keys, st.none() | values), max_size=40)  # None: delete


def jcs_hash(state: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(rfc8785.dumps(state)).hexdigest()


def test_empty_state_hash_matches_spec_vector() -> None:
    """The hash of ``{}`` is the spec's first test vector."""
    assert EMPTY_MEMORY_HASH == memory_hash({}) == MemoryState().hash() == EMPTY_VECTOR


def test_spec_state_hash_matches_spec_vector() -> None:
    """The spec's second test vector hashes as published."""
    assert memory_hash(SPEC_STATE) == SPEC_VECTOR


def test_state_built_by_writes_hashes_as_spec_vector() -> None:
    """A MemoryState written key by key reaches the spec's second vector."""
    state = MemoryState()
    for key, value in SPEC_STATE.items():
        state.set(key, value)
    assert state.hash() == SPEC_VECTOR


def test_memory_hash_accepts_any_mapping() -> None:
    """memory_hash takes a read-only mapping as well as a dict."""
    assert memory_hash(MappingProxyType(SPEC_STATE)) == SPEC_VECTOR


def test_write_order_does_not_change_the_hash() -> None:
    """The hash depends on the content, not on the order keys were written."""
    forward, backward = MemoryState(), MemoryState()
    for key, value in SPEC_STATE.items():
        forward.set(key, value)
    for key, value in reversed(SPEC_STATE.items()):
        backward.set(key, value)
    assert forward.hash() == backward.hash()


def test_set_replaces_an_existing_value() -> None:
    """Setting a key again replaces its value."""
    state = MemoryState.from_dict({"k": 1})
    state.set("k", 2)
    assert state.as_dict() == {"k": 2}
    assert state.hash() == memory_hash({"k": 2})


def test_delete_removes_the_key_and_reports_it_existed() -> None:
    """delete returns True and the state no longer holds the key."""
    state = MemoryState.from_dict({"k": 1, "j": 2})
    assert state.delete("k") is True
    assert state.as_dict() == {"j": 2}
    assert state.hash() == memory_hash({"j": 2})


def test_deleting_a_missing_key_is_not_an_error() -> None:
    """delete of an absent key returns False and changes nothing."""
    state = MemoryState.from_dict({"k": 1})
    before = state.hash()
    assert state.delete("absent") is False
    assert state.hash() == before


def test_deleting_every_key_returns_to_the_empty_hash() -> None:
    """A state emptied by deletes hashes like ``{}``."""
    state = MemoryState.from_dict({"k": 1})
    state.delete("k")
    assert state.hash() == EMPTY_VECTOR


def test_hash_is_cached_until_the_next_change() -> None:
    """hash() returns the cached string until a write invalidates it."""
    state = MemoryState.from_dict({"k": 1})
    first = state.hash()
    assert state.hash() is first
    state.set("k", 2)
    assert state.hash() != first


def test_rewriting_the_same_value_keeps_the_hash() -> None:
    """Setting a key to a canonically equal value leaves the hash as it was."""
    state = MemoryState.from_dict({"k": 1})
    first = state.hash()
    state.set("k", 1.0)
    assert state.hash() is first


def test_as_dict_is_a_deep_copy() -> None:
    """Mutating what as_dict returns does not touch the state."""
    state = MemoryState.from_dict({"k": {"list": [1, 2]}})
    copy = state.as_dict()
    copy["k"]["list"].append(3)  # type: ignore[index]
    assert state.as_dict() == {"k": {"list": [1, 2]}}


def test_mutating_a_written_value_afterwards_does_not_touch_the_state() -> None:
    """The state keeps its own copy of each value written."""
    value: dict[str, object] = {"n": 1}
    state = MemoryState()
    state.set("k", value)
    value["n"] = 2
    assert state.as_dict() == {"k": {"n": 1}}
    assert state.hash() == memory_hash({"k": {"n": 1}})


def test_as_dict_keeps_value_types_as_written() -> None:
    """as_dict returns 1.0 as a float, though the hash writes it as ``1``."""
    state = MemoryState.from_dict({"x": 1.0, "big": 1e20})
    assert [type(v) for v in state.as_dict().values()] == [float, float]
    assert memory_hash(state.as_dict()) == state.hash()


def test_copy_is_independent() -> None:
    """Writes to a copy do not reach the original, nor the other way round."""
    original = MemoryState.from_dict({"k": 1})
    clone = original.copy()
    clone.set("j", 2)
    original.delete("k")
    assert (original.as_dict(), clone.as_dict()) == ({}, {"k": 1, "j": 2})
    assert clone.hash() == memory_hash({"k": 1, "j": 2})


def test_len_and_contains_follow_the_keys() -> None:
    """len counts keys; ``in`` tests a key, and is False for non-strings."""
    state = MemoryState.from_dict({"k": 1, "j": None})
    assert len(state) == 2
    assert "j" in state and "x" not in state and 1 not in state


def test_set_rejects_non_ijson_value_at_the_callers_path() -> None:
    """A NaN inside a value is rejected, the field named from the caller's path."""
    with pytest.raises(NotIJSONError) as info:
        MemoryState().set("k", {"x": [math.nan]}, path="payload.value")
    assert info.value.field == "payload.value.x[0]"


def test_set_rejects_a_non_string_key() -> None:
    """Keys must be strings."""
    with pytest.raises(NotIJSONError) as info:
        MemoryState().set(1, "v", key_path="payload.key")  # type: ignore[arg-type]
    assert info.value.field == "payload.key"


def test_set_rejects_a_key_with_a_lone_surrogate() -> None:
    """A key that is not valid Unicode cannot be hashed."""
    with pytest.raises(NotIJSONError):
        MemoryState().set("\ud800", 1)


def test_rejected_write_leaves_the_state_unchanged() -> None:
    """A write that fails validation changes neither content nor hash."""
    state = MemoryState.from_dict({"k": 1})
    before = state.hash()
    with pytest.raises(NotIJSONError):
        state.set("k", 2**53)
    assert state.as_dict() == {"k": 1} and state.hash() == before


def test_value_nested_beyond_storage_limit_is_rejected() -> None:
    """A value nested too deeply to store is rejected, not half-written."""
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    state = MemoryState()
    with pytest.raises(NotIJSONError) as info:
        state.set("k", deep, path="payload.value")
    assert info.value.field == "payload.value"
    assert len(state) == 0


def test_from_dict_rejects_non_ijson_value_naming_the_key() -> None:
    """from_dict names the offending entry."""
    with pytest.raises(NotIJSONError) as info:
        MemoryState.from_dict({"score": math.inf})
    assert info.value.field == "state.score"


def test_apply_write_with_value_sets_the_key() -> None:
    """A CALLBACK_MEMORY_WRITE payload with ``value`` sets the key."""
    state = MemoryState()
    apply_write(state, {"key": "k", "value": [1, 2]})
    assert state.as_dict() == {"k": [1, 2]}


def test_apply_write_with_null_value_sets_the_key_to_null() -> None:
    """``value: null`` is a value, not a delete."""
    state = MemoryState()
    apply_write(state, {"key": "k", "value": None})
    assert state.as_dict() == {"k": None}


def test_apply_write_with_delete_op_removes_the_key() -> None:
    """A payload with ``op: "delete"`` removes the key."""
    state = MemoryState.from_dict({"k": 1})
    apply_write(state, {"key": "k", "op": "delete"})
    assert len(state) == 0


def test_apply_write_delete_of_missing_key_is_not_an_error() -> None:
    """Deleting an absent key through a payload changes nothing."""
    state = MemoryState()
    apply_write(state, {"key": "k", "op": "delete"})
    assert state.hash() == EMPTY_VECTOR


def test_apply_write_treats_null_op_as_absent() -> None:
    """``op: null`` next to a value sets the key, as the payload model accepts."""
    state = MemoryState()
    apply_write(state, {"key": "k", "op": None, "value": 1})
    assert state.as_dict() == {"k": 1}


def test_apply_write_rejects_non_ijson_value_at_payload_value() -> None:
    """A non-I-JSON value is rejected with field ``payload.value...``."""
    with pytest.raises(NotIJSONError) as info:
        apply_write(MemoryState(), {"key": "k", "value": {"n": 2**60}})
    assert info.value.field == "payload.value.n"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"value": 1}, "payload.key"),
        ({"key": 3, "value": 1}, "payload.key"),
        ({"key": "k", "op": "drop"}, "payload.op"),
        ({"key": "k", "op": "delete", "value": 1}, "payload"),
        ({"key": "k"}, "payload"),
        ({"key": "k", "op": None}, "payload"),
    ],
)
def test_apply_write_rejects_malformed_payloads(payload: dict[str, object], field: str) -> None:
    """A payload without a string key, or without exactly one of value / delete, is rejected."""
    with pytest.raises(ValidationError) as info:
        apply_write(MemoryState(), payload)
    assert info.value.field == field


@given(operations)
def test_incremental_hash_equals_full_jcs_hash(ops: list[tuple[str, Any]]) -> None:
    """After any set/delete sequence the kept hash equals hashing the whole state afresh."""
    state, model = MemoryState(), dict[str, Any]()
    for key, value in ops:
        if value is None:
            assert state.delete(key) is (model.pop(key, None) is not None)
        else:
            state.set(key, value)
            model[key] = value
    as_dict = state.as_dict()
    assert as_dict == model
    assert state.hash() == memory_hash(as_dict) == jcs_hash(model)


many_keys = st.text(st.sampled_from("ab\u00e9\U0001f600"), max_size=3)
ops_and_copies = st.lists(st.tuples(many_keys, st.none() | st.integers(0, 3), st.booleans()),
                          max_size=80)  # (key, None: delete, take a copy first)


@pytest.mark.parametrize("checkpoint", [1, 2, 3])
@given(ops=ops_and_copies)
def test_hash_resumed_from_checkpoints_equals_the_full_hash(
    checkpoint: int, ops: list[tuple[str, int | None, bool]]
) -> None:
    """With a checkpoint every 1-3 entries, the hash after every change equals hashing the
    whole state afresh; copies taken along the way, then changed apart, stay right."""
    import ledger.memory

    saved, ledger.memory.CHECKPOINT = ledger.memory.CHECKPOINT, checkpoint
    try:
        state, model = MemoryState(), dict[str, Any]()
        copies: list[tuple[MemoryState, dict[str, Any]]] = []
        for key, value, copy in ops:
            if copy:
                copies.append((state.copy(), dict(model)))
            for n, (target, expected) in enumerate([(state, model), *copies[-1:]]):
                if value is None:
                    target.delete(key)
                    expected.pop(key, None)
                else:  # the latest copy is given other values: it goes its own way
                    target.set(key, value + 10 * n)
                    expected[key] = value + 10 * n
                assert target.hash() == jcs_hash(expected)
        assert all(c.hash() == jcs_hash(m) for c, m in copies)
    finally:
        ledger.memory.CHECKPOINT = saved
