"""RFC 8785 JSON Canonicalization Scheme (JCS) for I-JSON (RFC 7493) values.

:func:`canonicalize` turns a JSON value made of ``dict`` (str keys), ``list``,
``str``, ``int``, ``float``, ``bool`` and ``None`` into the exact UTF-8 bytes JCS
prescribes. A value outside I-JSON raises :class:`~ledger.errors.NotIJSONError`
whose ``field`` names where the offending part is (``value.items[2]``).

Strings are escaped by ``orjson``, whose escaping is JCS's byte for byte (checked
for every code point by ``tests/test_canonical.py``); the rest is done here.
"""

from __future__ import annotations

import json
import math
from operator import methodcaller
from typing import Any

import orjson

from ledger.errors import NotIJSONError

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer I-JSON allows (and its negation the smallest)."""

_dumps = orjson.dumps
_utf16 = methodcaller("encode", "utf-16-be")
_STRICT = orjson.OPT_STRICT_INTEGER  # orjson then refuses integers beyond +-(2**53 - 1)
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_SIMPLE = frozenset({str, int, bool, type(None)})  # leaf types orjson writes exactly as JCS


class _Invalid(Exception):
    """Raised by the fast encoder; :func:`_find_problem` then says what and where."""


def canonicalize(value: object, path: str = "value") -> bytes:
    """Return the JCS serialization of ``value`` as UTF-8 bytes.

    Raises NotIJSONError (``field`` = ``path`` extended to the offending part) for
    integers beyond +-(2**53 - 1), NaN or infinite floats, strings or keys holding a
    lone surrogate, non-string keys, values nested too deeply, and other types.
    """
    try:
        return _encode(value)
    except RecursionError:
        raise NotIJSONError("nested too deeply (or contains itself)", field=path) from None
    except (_Invalid, TypeError, ValueError):
        problem = _find_problem(value, path)
        if problem is None:
            raise
        raise problem from None


def field_path(parent: str, key: str | int) -> str:
    """Extend an error path: ``a.key`` for identifier keys, ``a["k y"]``, ``a[3]`` otherwise."""
    if isinstance(key, str):
        return f"{parent}.{key}" if key.isidentifier() else f"{parent}[{json.dumps(key)}]"
    return f"{parent}[{key}]"


def _encode(value: Any) -> bytes:
    t = type(value)
    if t is str:
        return _dumps(value)
    if t is dict:
        return _encode_dict(value)
    if t is list:
        return _encode_list(value)
    if t is int:
        return _encode_int(value)
    if t is float:
        return _encode_float(value)
    if t is bool:
        return b"true" if value else b"false"
    if value is None:
        return b"null"
    return _encode_other(value)


def _encode_dict(obj: dict[str, object]) -> bytes:
    joined = "".join(obj)  # TypeError on a non-str key
    # Code point order is UTF-16 order unless astral and U+E000..U+FFFF characters meet.
    plain = joined.isascii() or max(joined) < "\ue000"
    if plain and _SIMPLE.issuperset(map(type, obj.values())):
        try:  # orjson sorts by code point and writes these types as JCS does
            return _dumps(obj, option=_SORTED)
        except TypeError:
            pass  # str-subclass keys, or a fault the loop below will meet
    keys = sorted(obj) if plain else sorted(obj, key=_utf16)
    parts: list[bytes] = []
    append = parts.append
    for key in keys:
        append(_dumps(key) + b":" + _encode(obj[key]))
    return b"{" + b",".join(parts) + b"}"


def _encode_list(items: list[object]) -> bytes:
    if _SIMPLE.issuperset(map(type, items)):
        return _dumps(items, option=_STRICT)
    return b"[" + b",".join([_encode(item) for item in items]) + b"]"


def _encode_int(n: int) -> bytes:
    if -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER:
        return b"%d" % n
    raise _Invalid


def _encode_float(x: float) -> bytes:
    text = repr(x)  # shortest round-trip digits
    if "e" in text:
        return _ecmascript_exponent_form(text).encode()
    last = text[-1]
    if last == "0":  # integral: "12.0", "-0.0"
        return text[:-2].encode() if x else b"0"
    if last in "fn":  # inf, -inf, nan
        raise _Invalid
    return text.encode()  # repr is positional only where ECMAScript is too


def _ecmascript_exponent_form(text: str) -> str:
    """Rewrite Python's ``repr`` exponent form (``1.5e-07``) as Number::toString does."""
    mantissa, _, exponent = text.partition("e")
    sign = ""
    if mantissa[0] == "-":
        sign, mantissa = "-", mantissa[1:]
    digits = mantissa.replace(".", "")
    k = len(digits)
    n = int(exponent) + 1  # value = 0.<digits> * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    fraction = "." + digits[1:] if k > 1 else ""
    return f"{sign}{digits[0]}{fraction}e{'+' if n > 0 else '-'}{abs(n - 1)}"


def _encode_other(value: object) -> bytes:
    """Encode subclasses of the JSON types as their base type; reject the rest."""
    if isinstance(value, str):
        return _dumps(str.__str__(value))
    if isinstance(value, int):
        return _encode_int(int(value))
    if isinstance(value, float):
        return _encode_float(float(value))
    if isinstance(value, dict):
        return _encode_dict(value)
    if isinstance(value, list):
        return _encode_list(value)
    raise _Invalid


def _find_problem(value: object, path: str) -> NotIJSONError | None:
    """Return the first I-JSON violation in ``value`` (slow path, errors only)."""
    try:
        return _problem_at(value, path)
    except RecursionError:
        return NotIJSONError("nested too deeply (or contains itself)", field=path)


def _problem_at(value: object, path: str) -> NotIJSONError | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _surrogate_problem(value, "string", path)
    if isinstance(value, int):
        if abs(int(value)) > MAX_SAFE_INTEGER:
            return NotIJSONError(f"integer {int(value)} is outside +-(2**53 - 1)", field=path)
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return NotIJSONError(f"{float(value)!r} is not a JSON number", field=path)
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return NotIJSONError(f"object key {key!r} is not a string", field=path)
            problem = _surrogate_problem(key, "object key", path) or _problem_at(
                item, field_path(path, key)
            )
            if problem is not None:
                return problem
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = _problem_at(item, field_path(path, index))
            if problem is not None:
                return problem
        return None
    return NotIJSONError(f"unsupported type {type(value).__name__}", field=path)


def _surrogate_problem(text: str, what: str, path: str) -> NotIJSONError | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        return NotIJSONError(f"{what} holds a lone surrogate U+{char:04X}", field=path)
    return None
