"""Memory state of one write scope and its hash (trace-event contract, section 3).

The memory hash of a state is ``"sha256:"`` + the lowercase hex SHA-256 of the JCS
(RFC 8785) bytes of the state object. :class:`MemoryState` keeps each entry's
canonical ``"key":value`` bytes in JCS key order, so a write costs only the
serialization of the new value, and the hash is one join and one digest.

A large state also keeps the SHA-256 state after every ``CHECKPOINT`` entries, and a
change hashes only from the last checkpoint before it: a write of a new last key
costs ``CHECKPOINT`` entries, not the whole state. Without them 20,000 writes of new
keys to one scope took 15 s to ingest and 14 s to verify (the state grows with each).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

import orjson

from ledger.canonical import canonicalize, field_path
from ledger.chain import own_size
from ledger.errors import NotIJSONError, ValidationError


def memory_hash(state: Mapping[str, object]) -> str:
    """Return the memory hash of ``state`` (NotIJSONError if it is not I-JSON)."""
    obj = state if isinstance(state, dict) else dict(state)
    return "sha256:" + hashlib.sha256(canonicalize(obj, "state")).hexdigest()


EMPTY_MEMORY_HASH: str = memory_hash({})
"""The memory hash of the empty state, which every trace starts from."""


CHECKPOINT = 64
"""Entries between two kept SHA-256 states of a large memory state."""


class MemoryState:
    """The ``{key: value}`` memory of one write scope, with its hash kept cheaply."""

    __slots__ = ("_fragments", "_hash", "_marks", "_sort_keys", "_values")

    def __init__(self) -> None:
        # Parallel lists in JCS order: UTF-16-BE key bytes, canonical b'"key":value'.
        self._sort_keys: list[bytes] = []
        self._fragments: list[bytes] = []
        # key -> the value as written, serialized by orjson (types kept: 1.0 stays float).
        self._values: dict[str, bytes] = {}
        self._hash: str | None = EMPTY_MEMORY_HASH
        # _marks[j]: SHA-256 fed b"{" and the first j * CHECKPOINT fragments, each with
        # its comma; never updated once kept (hashing goes on in a copy)
        self._marks: list[hashlib._Hash] = []

    @classmethod
    def from_dict(cls, state: Mapping[str, object], *, path: str = "state") -> MemoryState:
        """Build a state holding a copy of ``state`` (NotIJSONError if not I-JSON)."""
        memory = cls()
        for key, value in state.items():
            memory.set(key, value, path=field_path(path, key), key_path=path)
        return memory

    def set(self, key: str, value: object, *, path: str = "value", key_path: str = "key") -> None:
        """Set ``key`` to a copy of ``value``; errors name ``path`` / ``key_path``."""
        if not isinstance(key, str):
            raise NotIJSONError(f"key {key!r} is not a string", field=key_path)
        fragment = canonicalize(key, key_path) + b":" + canonicalize(value, path)
        try:  # default=float: float subclasses; canonicalize has vetted every other type
            stored = own_size(orjson.dumps(value, default=float, option=orjson.OPT_NON_STR_KEYS))
        except orjson.JSONEncodeError as exc:  # orjson stops at 255 levels of nesting
            raise NotIJSONError(f"cannot be stored: {exc}", field=path) from None
        sort_key = key.encode("utf-16-be")
        keys = self._sort_keys
        i = bisect_left(keys, sort_key)
        if i < len(keys) and keys[i] == sort_key:
            if self._fragments[i] != fragment:
                self._fragments[i] = fragment
                self._changed(i)
        else:
            keys.insert(i, sort_key)
            self._fragments.insert(i, fragment)
            self._changed(i)
        self._values[str.__str__(key)] = stored

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was there (a missing key is no error)."""
        if not isinstance(key, str) or self._values.pop(key, None) is None:
            return False
        i = bisect_left(self._sort_keys, key.encode("utf-16-be"))
        del self._sort_keys[i]
        del self._fragments[i]
        self._changed(i)
        return True

    def _changed(self, i: int) -> None:
        """Fragment ``i`` changed (or came or went): drop the hash and the checkpoints
        that cover it."""
        self._hash = None
        del self._marks[i // CHECKPOINT + 1:]

    def hash(self) -> str:
        """Return the memory hash of the current state (cached until the next change)."""
        if self._hash is None:
            fragments = self._fragments
            if len(fragments) < 2 * CHECKPOINT:
                body = b"{" + b",".join(fragments) + b"}"
                self._hash = "sha256:" + hashlib.sha256(body).hexdigest()
            else:
                self._hash = "sha256:" + self._resumed_digest()
        return self._hash

    def _resumed_digest(self) -> str:
        """The hex digest, hashing from the last checkpoint on and keeping new ones."""
        marks, fragments = self._marks, self._fragments
        last = len(fragments) - 1  # the last fragment has no comma after it
        if not marks:
            marks.append(hashlib.sha256(b"{"))
        while (len(marks) - 1) * CHECKPOINT > last:  # one that gave the new last a comma
            marks.pop()
        digest = marks[-1].copy()
        for at in range((len(marks) - 1) * CHECKPOINT, last - CHECKPOINT + 1, CHECKPOINT):
            digest.update(b",".join(fragments[at:at + CHECKPOINT]) + b",")
            marks.append(digest.copy())
        digest.update(b",".join(fragments[(len(marks) - 1) * CHECKPOINT:]) + b"}")
        return digest.hexdigest()

    def as_dict(self) -> dict[str, object]:
        """Return a fresh deep copy of the state, keys in JCS order."""
        values = self._values
        return {
            key: orjson.loads(values[key])
            for key in (sort_key.decode("utf-16-be") for sort_key in self._sort_keys)
        }

    def copy(self) -> MemoryState:
        """Return an independent copy (entries are immutable bytes, so this is cheap)."""
        clone = MemoryState()
        clone._sort_keys = self._sort_keys.copy()
        clone._fragments = self._fragments.copy()
        clone._values = self._values.copy()
        clone._hash = self._hash
        clone._marks = self._marks.copy()  # kept states are never updated: shared
        return clone

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._values

    def __repr__(self) -> str:
        return f"<MemoryState {len(self)} keys {self.hash()}>"


def apply_write(state: MemoryState, payload: Mapping[str, object]) -> None:
    """Apply a CALLBACK_MEMORY_WRITE payload: ``{key, value}`` sets, ``{key, op: "delete"}``
    removes. Raises ValidationError (NotIJSONError for a non-I-JSON value) naming the field.
    """
    key = payload.get("key")
    if not isinstance(key, str):
        raise ValidationError("key must be a string", field="payload.key")
    op = payload.get("op")  # null is the same as absent
    if op is not None and op != "delete":
        raise ValidationError(f'op must be "delete", not {op!r}', field="payload.op")
    if op == "delete":
        if "value" in payload:
            raise ValidationError('give "value" or "op": "delete", not both', field="payload")
        state.delete(key)
    elif "value" in payload:
        state.set(key, payload["value"], path="payload.value", key_path="payload.key")
    else:
        raise ValidationError('a memory write needs "value" or "op": "delete"', field="payload")


def apply_record(memory: dict[str, MemoryState], record: Mapping[str, Any]) -> None:
    """Fold one stored record into per-scope memory: only a CALLBACK_MEMORY_WRITE changes it.

    The scope is created before the write is applied, so a write that raises still
    leaves its scope in ``memory`` (what verify hashes after reporting the problem).
    """
    if record.get("event") == "CALLBACK_MEMORY_WRITE":
        scope = memory.setdefault(str(record.get("write_scope")), MemoryState())
        apply_write(scope, record.get("payload") or {})


def scope_hash(memory: Mapping[str, MemoryState], scope: str) -> str:
    """The memory hash of one scope (the empty-state hash for a scope never written)."""
    state = memory.get(scope)
    return state.hash() if state is not None else EMPTY_MEMORY_HASH
