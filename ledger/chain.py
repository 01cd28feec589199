"""Stored records, stream identity and the per-stream hash chain.

Every stored event's ``state`` is the UTF-8 JSON of a *record*: the event as
submitted plus two ledger fields, ``ledger_memory_hash`` (what the logged memory
writes imply) and ``prev_hash`` (the hash of the previous record of the same
stream, ``GENESIS_HASH`` for the first). A record's own hash is
``"sha256:" + sha256(state bytes)``, so each record commits to the whole history
before it. The algorithm is written out for auditors in ``docs/VERIFY.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from json.encoder import encode_basestring
from typing import Any, Final

import orjson

from ledger.errors import ValidationError

RECORD_VERSION: Final = 1
DEFAULT_TENANT: Final = "default"  # an event that names no tenant belongs to this one
GENESIS_HASH: Final = "sha256:" + "0" * 64
EVENT_TOPIC: Final = "agentledger.trace_event.v1"
FINDING_TOPIC: Final = "agentledger.finding.v1"
GRANT_TOPIC: Final = "agentledger.grant.v1"
REPLAY_TOPIC: Final = "agentledger.replay.v1"
TOPICS: Final = (EVENT_TOPIC, FINDING_TOPIC, GRANT_TOPIC)  # what projections consume

STREAM_NAMESPACE: Final = uuid.UUID("5b0c4a1e-6f7d-4c43-9a57-0a9e3c1d2b10")
_NAMESPACE_BYTES: Final = STREAM_NAMESPACE.bytes
TRACE_KIND: Final = "trace"
FINDINGS_KIND: Final = "findings"
FINDINGS_STREAM_NAME: Final = "$findings"
GRANTS_KIND: Final = "grants"
GRANTS_STREAM_NAME: Final = "$grants"
REPLAY_KIND: Final = "replay"


def stream_id(kind: str, tenant: str, name: str) -> uuid.UUID:
    """The stream's originator id: UUIDv5 of the JSON array ``[kind, tenant, name]``.

    The text is what ``json.dumps([kind, tenant, name], ensure_ascii=False)`` gives,
    built from the encoder's own string function (twice as fast: verify derives one id
    per stream), and hashed as ``uuid.uuid5`` does.
    """
    text = f"[{_json_str(kind)}, {_json_str(tenant)}, {_json_str(name)}]"
    digest = hashlib.sha1(_NAMESPACE_BYTES + text.encode("utf-8")).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


_json_str = encode_basestring  # what json.dumps uses for a str, with ensure_ascii=False


@functools.lru_cache(maxsize=4096)
def trace_stream_id(tenant: str, trace_id: str) -> uuid.UUID:
    """The originator id of the trace stream for (tenant, trace_id).

    Cached for callers that ask again soon (verify, twice per stream; an appender,
    for streams it reloads). 65,536 ids took 20.7 MB in every process of an ingest."""
    return stream_id(TRACE_KIND, tenant, trace_id)


def findings_stream_id(tenant: str) -> uuid.UUID:
    """The originator id of a tenant's findings stream."""
    return stream_id(FINDINGS_KIND, tenant, FINDINGS_STREAM_NAME)


def replay_stream_id(tenant: str, name: str) -> uuid.UUID:
    """The originator id of a stored replay (its own stream, never a trace stream)."""
    return stream_id(REPLAY_KIND, tenant, name)


def grants_stream_id(tenant: str) -> uuid.UUID:
    """The originator id of a tenant's grants stream (tenant-level write permissions)."""
    return stream_id(GRANTS_KIND, tenant, GRANTS_STREAM_NAME)


_DIGIT_MAP: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGIT_RUN: Final = b"0" * 19
_GENESIS_BYTES: Final = GENESIS_HASH.encode()  # inside a string: never a number


def may_hold_big_int(raw: bytes) -> bool:
    """Whether raw JSON has a run of 19+ digits, i.e. maybe an integer beyond 64 bits.

    orjson reads such integers as floats without error, so these texts take the
    exact (slower) stdlib path. ``bytes.translate`` keeps this check near free.
    """
    return _LONG_DIGIT_RUN in raw.replace(_GENESIS_BYTES, b"").translate(_DIGIT_MAP)


def record_hash(state: bytes) -> str:
    """The hash of one stored record: sha256 over its stored bytes."""
    return "sha256:" + hashlib.sha256(state).hexdigest()


MAX_NESTING: Final = 254
"""How many objects and arrays may nest in an event (the envelope is the first): as
deep as orjson writes. Deeper events are rejected, so every record the ledger writes
about one (a conflict's evidence holds the event a level down) stays well within
reach of the stdlib encoder and of Python's recursion limit."""
_RECORD_NESTING: Final = 2 * MAX_NESTING  # any record: an event, a level or two down
MAX_EVENT_BYTES: Final = 256 * 2**20
"""How large an event may be, as stored (and a line, as read): 256 MiB. SQLite takes a
value of at most 10^9 bytes and PostgreSQL 1 GiB; a finding about a conflicting event
holds the event again. A line of 1.05 GB failed its whole batch (exit 1) and every
re-run of it."""


def encode(record: Any, *, sort_keys: bool = False, max_nesting: int = _RECORD_NESTING,
           ) -> bytes:
    """Serialise a record to the bytes that are stored (and hashed).

    ``sort_keys`` gives a canonical text for comparing values as JSON. A record
    nested deeper than ``max_nesting`` raises ValidationError (events are encoded
    with ``MAX_NESTING``).
    """
    try:
        return own_size(orjson.dumps(record, option=orjson.OPT_SORT_KEYS if sort_keys else None))
    except TypeError:  # integers beyond 64 bits (json keeps them), or nested too deeply
        if nesting(record) > max_nesting:
            raise ValidationError(f"nested too deeply: more than {max_nesting} levels of "
                                  "objects and arrays") from None
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"),
                          sort_keys=sort_keys).encode()


def own_size(data: bytes) -> bytes:
    """``data`` copied into a bytes object of its own size, for output that is kept.

    orjson returns its output in the buffer it wrote it into: from version 3.12 on,
    4 KiB at least, whatever the length. Kept as it is, each of an ingest batch's events
    holds 4 KiB for ~300 bytes of JSON (of 91 MB peak per ingesting process at 5,000
    events a batch, 19.5 MB were these buffers), and so does each value of a memory
    state the appender keeps cached. The copy costs ~0.15 us.
    """
    return memoryview(data).tobytes()


def nesting(value: Any) -> int:
    """How many objects and arrays nest in ``value`` at its deepest (0 for a scalar)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def decode(state: bytes | None) -> dict[str, Any]:
    """Parse stored bytes back into a record (raises ValueError if they are not one).

    ``None`` is what PostgreSQL gives for a state set to NULL behind the ledger's back.
    """
    if not state:
        raise ValueError("stored state is empty (NULL or no bytes)")
    if not isinstance(state, bytes | bytearray | memoryview):
        raise ValueError(f"stored state is {type(state).__name__}, not bytes")
    try:
        try:  # orjson would read an integer beyond 64 bits as a float: json keeps it exact
            value = json.loads(state) if may_hold_big_int(state) else orjson.loads(state)
        except orjson.JSONDecodeError:
            value = json.loads(state)
    except RecursionError:
        raise ValueError("stored state nests too deeply to read") from None
    if not isinstance(value, dict):
        raise ValueError("stored state is not a JSON object")
    return value


def event_record(
    wire: dict[str, Any], *, ledger_memory_hash: str, prev_hash: str
) -> dict[str, Any]:
    """The record stored for one trace event (``wire`` is ``TraceEvent.record()``)."""
    return {"v": RECORD_VERSION, **wire, "ledger_memory_hash": ledger_memory_hash,
            "prev_hash": prev_hash}


def event_state(wire_json: bytes, *, ledger_memory_hash: str, prev_hash: str) -> bytes:
    """The stored bytes of :func:`event_record`, from ``encode(wire)`` without re-encoding.

    A JSON object's text is ``{`` + its members + ``}``, so appending the two ledger
    fields (ASCII hash strings, nothing to escape) to the already encoded wire event
    gives byte for byte what ``encode(event_record(wire, ...))`` gives.
    """
    return b"".join((_RECORD_PREFIX, wire_json[1:-1], b',"ledger_memory_hash":"',
                     ledger_memory_hash.encode("ascii"), b'","prev_hash":"',
                     prev_hash.encode("ascii"), b'"}'))


_RECORD_PREFIX: Final = b'{"v":' + str(RECORD_VERSION).encode() + b","


def wire_part(record: dict[str, Any]) -> dict[str, Any]:
    """The submitted event inside a stored record (ledger fields removed)."""
    return {k: v for k, v in record.items() if k not in _LEDGER_FIELDS}


_LEDGER_FIELDS = frozenset({"v", "ledger_memory_hash", "prev_hash"})
