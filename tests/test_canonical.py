"""RFC 8785 (JCS) canonical JSON: spec vectors, edge cases, and equality with ``rfc8785``."""

from __future__ import annotations

import enum
import math
import struct
from decimal import Decimal
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import MAX_SAFE_INTEGER, canonicalize
from ledger.errors import NotIJSONError

SPEC_STATE = {
    "search_result": {"hits": 3, "top": "Zürich"},
    "plan": ["a", "b"],
    "score": 1.5e-7,
    "n": 10,
}

# Characters where UTF-16 order and code point order part ways, and other awkward ones.
TRICKY_CHARS = ["a", "é", "\u2028", "\u2029", "\x7f", "\x00", "\x1f", '"', "\\", "\ue000"]
TRICKY_CHARS += ["\uffff", "\U00010000", "\U0001f600", "\U0010ffff"]

json_chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from(TRICKY_CHARS)
json_text = st.text(json_chars, max_size=8)
safe_ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)


def float_from_bits(bits: int) -> float:
    (number,) = struct.unpack("<d", bits.to_bytes(8, "little"))
    return float(number)


any_bits_float = st.integers(0, 2**64 - 1).map(float_from_bits).filter(math.isfinite)
finite_floats = st.floats(allow_nan=False, allow_infinity=False) | any_bits_float
ijson_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | safe_ints | finite_floats | json_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_text, children, max_size=6)
    ),
    max_leaves=40,
)


def jcs_escape(char: str) -> bytes:
    """Reference JCS string body for one character, written from RFC 8785 section 3.2.2.2."""
    short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    if char in ('"', "\\"):
        return b"\\" + char.encode()
    if char in short:
        return short[char].encode()
    if ord(char) < 0x20:
        return b"\\u%04x" % ord(char)
    return char.encode("utf-8")


def jcs_string(char: str) -> bytes:
    return b'"' + jcs_escape(char) + b'"'


def rejection(value: object, path: str = "value") -> NotIJSONError:
    with pytest.raises(NotIJSONError) as info:
        canonicalize(value, path)
    return info.value


def test_spec_vector_state_canonicalizes_as_published() -> None:
    """The spec's second test vector serializes to the published bytes."""
    expected = '{"n":10,"plan":["a","b"],"score":1.5e-7,"search_result":{"hits":3,"top":"Zürich"}}'
    assert canonicalize(SPEC_STATE) == expected.encode()


def test_empty_object_canonicalizes_to_braces() -> None:
    """The spec's first test vector, ``{}``, serializes to ``{}``."""
    assert canonicalize({}) == b"{}"


def test_integral_float_is_written_as_integer() -> None:
    """1.0 is written ``1``."""
    assert canonicalize(1.0) == b"1"


def test_negative_zero_is_written_as_zero() -> None:
    """-0.0 is written ``0``."""
    assert canonicalize(-0.0) == b"0"


def test_integral_float_below_1e21_is_written_in_full() -> None:
    """1e20 is written with all its digits."""
    assert canonicalize(1e20) == b"100000000000000000000"


def test_1e21_uses_exponent_form() -> None:
    """1e21 is written ``1e+21``."""
    assert canonicalize(1e21) == b"1e+21"


def test_1e_minus_7_uses_exponent_form() -> None:
    """1e-7 is written ``1e-7`` (no leading zero in the exponent)."""
    assert canonicalize(1e-7) == b"1e-7"


def test_1e_minus_6_is_positional() -> None:
    """1e-6 is written ``0.000001``."""
    assert canonicalize(1e-6) == b"0.000001"


def test_smallest_subnormal_is_written_shortest() -> None:
    """5e-324 is written ``5e-324``."""
    assert canonicalize(5e-324) == b"5e-324"


def test_largest_float_is_written_shortest() -> None:
    """The largest double is written ``1.7976931348623157e+308``."""
    assert canonicalize(1.7976931348623157e308) == b"1.7976931348623157e+308"


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_rfc8785_appendix_b_number_samples(bits: str, expected: str) -> None:
    """Each IEEE 754 sample of RFC 8785 Appendix B serializes as published."""
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonicalize(number) == expected.encode()


def test_max_safe_integer_is_accepted() -> None:
    """+-(2**53 - 1) are written as they are."""
    assert canonicalize([2**53 - 1, -(2**53 - 1)]) == b"[9007199254740991,-9007199254740991]"


@pytest.mark.parametrize("number", [2**53, -(2**53), 10**30])
def test_integer_beyond_2_53_is_rejected(number: int) -> None:
    """Integers outside +-(2**53 - 1) are not I-JSON."""
    assert rejection({"n": number}).field == "value.n"


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected(number: float) -> None:
    """NaN and the infinities are not JSON numbers."""
    assert rejection([number]).field == "value[0]"


def test_bool_is_not_written_as_integer() -> None:
    """True and False stay ``true`` and ``false`` next to 1 and 0."""
    assert canonicalize([True, 1, False, 0, None]) == b"[true,1,false,0,null]"


def test_astral_key_sorts_before_key_in_e000_to_ffff() -> None:
    """Keys sort by UTF-16 code units: U+1F600 (a surrogate pair) before U+E000."""
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert canonicalize(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_keys_sort_by_code_unit_not_locale() -> None:
    """Upper case sorts before lower case, and shorter prefixes first."""
    assert canonicalize({"b": 1, "B": 2, "ba": 3, "é": 4}) == '{"B":2,"b":1,"ba":3,"é":4}'.encode()


def test_control_characters_use_short_or_lowercase_hex_escapes() -> None:
    """U+0000..U+001F are escaped, with \\b \\t \\n \\f \\r short forms and lowercase hex."""
    text = "".join(chr(c) for c in range(0x20))
    expected = b'"' + b"".join(jcs_escape(chr(c)) for c in range(0x20)) + b'"'
    assert canonicalize(text) == expected
    assert b"\\u001f" in expected and b"\\b" in expected


def test_quote_and_backslash_are_escaped() -> None:
    """Only ``"`` and ``\\`` are escaped among printable ASCII."""
    assert canonicalize('a"b\\c/d') == b'"a\\"b\\\\c/d"'


def test_line_separators_and_del_are_literal() -> None:
    """U+2028, U+2029 and DEL (U+007F) are written as raw UTF-8."""
    assert canonicalize("\u2028\u2029\x7f") == '"\u2028\u2029\x7f"'.encode()


def test_non_bmp_characters_are_literal_utf8() -> None:
    """Astral characters are written as their 4-byte UTF-8, never as escapes."""
    assert canonicalize("\U0001f600\U0010ffff") == b'"\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf"'


def test_orjson_escapes_every_code_point_as_jcs_does() -> None:
    """orjson's string escaping equals JCS byte for byte for every non-surrogate code point."""
    code_points = [*range(0xD800), *range(0xE000, 0x110000)]
    mismatches = [c for c in code_points if orjson.dumps(chr(c)) != jcs_string(chr(c))]
    assert mismatches == []


def test_lone_surrogate_is_rejected_with_its_path() -> None:
    """A string holding a lone surrogate is rejected, naming where it sits."""
    error = rejection({"items": [0, 1, "ok\ud800"]}, "payload.value")
    assert error.field == "payload.value.items[2]"
    assert "surrogate" in error.reason


@pytest.mark.parametrize("surrogate", [0xD800, 0xDBFF, 0xDC00, 0xDFFF])
def test_every_kind_of_lone_surrogate_is_rejected(surrogate: int) -> None:
    """High and low surrogates alike are rejected."""
    assert rejection(chr(surrogate)).field == "value"


def test_lone_surrogate_in_key_is_rejected_at_its_object() -> None:
    """A key holding a lone surrogate is rejected, naming the object."""
    error = rejection({"outer": {"\udc00": 1, "é": 2}})
    assert error.field == "value.outer"
    assert "key" in error.reason


def test_non_string_key_is_rejected() -> None:
    """Object keys must be strings."""
    assert rejection({"a": {1: "x"}}).field == "value.a"


@pytest.mark.parametrize("value", [(1, 2), {1, 2}, b"x", Decimal("1.5"), object()])
def test_unsupported_type_is_rejected(value: object) -> None:
    """Types outside the JSON model (tuple, set, bytes, Decimal, ...) are rejected."""
    assert "unsupported type" in rejection({"v": value}).reason


def test_odd_keys_are_quoted_in_the_error_path() -> None:
    """A key that is not an identifier appears as ``["..."]`` in the path."""
    assert rejection({"a b": [math.nan]}).field == 'value["a b"][0]'


def test_value_containing_itself_is_rejected() -> None:
    """A self-referencing list is rejected instead of overflowing the stack."""
    loop: list[object] = []
    loop.append(loop)
    assert "nested too deeply" in rejection(loop).reason


def test_subclasses_are_written_as_their_base_type() -> None:
    """str/int/float enum members and dict subclasses serialize as their plain values."""

    class Colour(str, enum.Enum):  # noqa: UP042 - str() of this mixin gives "Colour.RED"
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    class Ratio(float):
        pass

    class Attrs(dict[str, object]):
        pass

    value = {"c": Colour.RED, "s": Size.BIG, "r": Ratio(2.0), "a": Attrs(x=1), Colour.RED: 0}
    assert canonicalize(value) == b'{"a":{"x":1},"c":"red","r":2,"red":0,"s":3}'


@given(ijson_values)
def test_canonicalize_equals_rfc8785(value: Any) -> None:
    """For any I-JSON value our bytes equal the ``rfc8785`` reference implementation's."""
    assert canonicalize(value) == rfc8785.dumps(value)


@given(finite_floats)
def test_float_formatting_equals_rfc8785(number: float) -> None:
    """Any finite double, subnormal or huge, is written as ``rfc8785`` writes it."""
    assert canonicalize(number) == rfc8785.dumps(number)


@given(st.dictionaries(json_text, st.none() | st.booleans() | safe_ints | json_text))
def test_flat_object_equals_rfc8785(value: dict[str, Any]) -> None:
    """Objects of strings, integers, booleans and nulls (orjson's fast path) equal ``rfc8785``."""
    assert canonicalize(value) == rfc8785.dumps(value)
