"""What the ledger takes as JSON: strict decoding, and the checks that keep the event
stored the whole event sent.

JSON parsers agree on well-formed text and differ at its edges, quietly: a repeated
key keeps one value, a number beyond a double becomes infinity (then ``null``), a
``\\u0000`` reaches a database that cannot hold it. Each edge here is refused with
the field where it is, so the line goes to the reject file whole rather than into
the ledger changed.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import orjson

from ledger.chain import may_hold_big_int
from ledger.errors import ValidationError
from ledger.paths import is_utf8

if TYPE_CHECKING:
    from ledger.events import TraceEvent

NUL_REASON = "contains the NUL character (U+0000), which the ledger does not store"
SURROGATE_REASON = "string contains a lone surrogate (not valid Unicode)"


def decode_json(raw: bytes) -> Any:
    """Strict JSON decoding: UTF-8, no NaN/Infinity, no number beyond a double's range;
    big integers are kept exactly."""
    fast_error = "integer beyond 64 bits"
    if not may_hold_big_int(raw):  # orjson would turn a >64-bit integer into a float
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            fast_error = str(exc)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not valid UTF-8 at byte {exc.start}") from None
    too_big: list[str] = []  # numbers that a double cannot hold

    def read_float(number: str) -> float:
        value = float(number)
        if math.isinf(value):
            too_big.append(number)
        return value

    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=read_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(SURROGATE_REASON) from None
    except RecursionError:
        raise ValidationError("malformed JSON: nested too deeply") from None
    except ValueError:
        raise ValidationError(f"malformed JSON: {fast_error}") from None
    if too_big:
        raise _beyond_a_double(value, too_big[0])
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _beyond_a_double(value: Any, number: str) -> ValidationError:
    """The error for decoded JSON holding a number beyond a double's range: json reads
    it as infinity, which a stored record would hold as ``null``. The field is where
    the first such value is."""
    shown = number if len(number) <= 40 else f"{number[:20]}...{number[-10:]}"
    where = non_json(value, "", nul=False)
    return ValidationError(f"number {shown} is beyond the range of a 64-bit float",
                           field=where[0] if where and where[0] else None)


def check_text(raw: bytes, obj: Any, event: TraceEvent) -> None:
    """Refuse a line (``raw``, decoded to ``obj``, validated to ``event``) that repeats
    a key in one object or holds a NUL character; either would change on the way in.

    Both can only hide behind a backslash or show in the counts of
    :func:`_surely_unique_keys`, so a line with neither costs about a microsecond.
    """
    escaped = b"\\" in raw  # one byte is found faster than two
    if escaped and b"\\u0000" in raw:
        found = non_json(obj, "")
        if found is not None:
            raise ValidationError(found[1], field=found[0] or None)
    if not _surely_unique_keys(raw, obj, event, escaped=escaped):
        duplicate = _duplicate_key(raw)
        if duplicate is not None:
            path, key = duplicate
            raise ValidationError(f"key {key!r} appears twice in one object (JSON "
                                  "names must be unique)", field=path or None)


def _surely_unique_keys(raw: bytes, obj: dict[str, Any], event: TraceEvent, *,
                        escaped: bool = True) -> bool:
    """Whether no object of ``raw`` repeats a key, proved by counting colons.

    A colon in JSON text is a key's separator or a character of a string. The stored
    record (``event.wire_json``) has every key and string the decoded line kept, plus
    the envelope fields filled in by default, and the encoder writes a colon only for
    one of those. So, unless ``raw`` escapes characters (``\\u003a`` is a colon), the
    record has as many colons as ``raw`` plus those of the defaults, less at least one
    for each key dropped as a repeat. Where the counts differ, or escapes may hide a
    colon, :func:`_duplicate_key` decides. ``escaped=False`` says ``raw`` has no
    backslash.
    """
    if escaped and b"\\u" in raw:
        return False
    added = ("tenant" not in obj) + ("memory_hash" not in obj)  # "default", null
    if obj.get("write_scope") is None:  # "memory/<agent_owner>"
        added += ("write_scope" not in obj) + event.agent_owner.count(":")
    return event.wire_json.count(b":") == raw.count(b":") + added


def _duplicate_key(raw: bytes) -> tuple[str, str] | None:
    """The path of the first object in ``raw`` that repeats a key, and the key."""
    def find(value: Any, path: str) -> tuple[str, str] | None:
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if key in seen:
                    return path, key
                seen.add(key)
            children = ((f"{path}.{key}" if path else key, item) for key, item in value)
        elif isinstance(value, list):
            children = ((f"{path}[{i}]", item) for i, item in enumerate(value))
        else:
            return None
        for where, item in children:
            found = find(item, where)
            if found is not None:
                return found
        return None

    try:
        return find(json.loads(raw, object_pairs_hook=_Pairs), "")
    except (ValueError, RecursionError):  # decode_json took it: not expected
        return None


class _Pairs(list[tuple[str, Any]]):
    """An object's members in the order written, repeats kept (for :func:`_duplicate_key`)."""


def non_json(value: Any, path: str, *, nul: bool = True, surrogates: bool = True,
             ) -> tuple[str, str] | None:
    """The path of the first value inside ``value`` that the ledger does not take as
    JSON (NaN, infinities, non-JSON types; with ``nul``, a string or key with a NUL
    character; with ``surrogates``, one with a lone surrogate, which is not Unicode
    text and which no UTF-8 holds), and the reason."""
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, str):
        if nul and "\x00" in value:
            return path, NUL_REASON
        return (path, SURROGATE_REASON) if surrogates and not is_utf8(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value!r} is not a JSON value")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return path, f"key {key!r} (keys must be strings) is not a JSON value"
            if nul and "\x00" in key:
                return path, f"key {key!r} {NUL_REASON}"
            if surrogates and not is_utf8(key):
                return path, f"key {key!r}: {SURROGATE_REASON}"
            found = non_json(item, f"{path}.{key}" if path else key, nul=nul,
                             surrogates=surrogates)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = non_json(item, f"{path}[{i}]", nul=nul, surrogates=surrogates)
            if found:
                return found
        return None
    return path, f"a {type(value).__name__} is not a JSON value"
