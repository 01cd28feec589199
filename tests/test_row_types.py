"""The check that view rows fit their columns (``projections/row_types.py``).

Without it, a stored record altered into another shape folded into different views on
SQLite and PostgreSQL (``test_misshapen_records.py`` shows the views; these tests the
check itself).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections import analytics, attribution, failures, findings, memory
from projections.base import Batch
from projections.row_types import MisfitRowError, RowTypes
from projections.runner import PROJECTIONS

TYPES = RowTypes(statement for p in PROJECTIONS for statement in p.ddl)
CALLS = analytics.INSERT_CALL  # tenant, trace_id, seq, ts, day, tool, executed_by,
# success (INTEGER), attempt (BIGINT, NULL allowed), error_class, args_digest, call_key
GOOD_CALL = ("acme", "t-1", 3, "2026-11-17T10:30:00.000000Z", "2026-11-17", "search",
             "planner", 1, None, None, "sha256:" + "0" * 64, -5)


def _templates() -> list[str]:
    return [value for module in (analytics, attribution, failures, findings, memory)
            for name, value in vars(module).items()
            if name.isupper() and isinstance(value, str)
            and value.startswith(("INSERT INTO", "UPDATE"))]


def test_every_column_of_every_view_table_is_read_from_its_ddl() -> None:
    tables = {t for p in PROJECTIONS for t in p.tables}
    assert set(TYPES.columns) == tables
    assert TYPES.columns["tool_calls"]["success"] == ("INTEGER", False)
    assert TYPES.columns["tool_calls"]["attempt"] == ("{bigint}", True)
    assert TYPES.columns["failures"]["tool"] == ("TEXT", True)


@pytest.mark.parametrize("template", _templates())
def test_every_statement_of_the_projections_is_checked_column_by_column(template: str) -> None:
    """None falls back to the looser check of any column (a new statement must be
    written so its placeholders are each one column's value)."""
    assert TYPES._kinds(template) is not None


def test_rows_that_fit_pass() -> None:
    TYPES.check_rows(CALLS, [GOOD_CALL, (*GOOD_CALL[:8], 2**63 - 1, "timeout", *GOOD_CALL[10:])])


@pytest.mark.parametrize(("column", "value"), [
    (5, 7),                      # a number for a tool name
    (5, True),
    (5, ["search"]),
    (5, None),                   # NOT NULL
    (5, "se\x00arch"),           # PostgreSQL's text cannot hold a NUL
    (6, 1.5),
    (7, True),                   # INTEGER: an int, never a bool
    (7, "1"),
    (7, 2**31),                  # INTEGER is 32 bits on PostgreSQL
    (8, 2**63),                  # BIGINT: 64 bits
    (8, -2**63 - 1),
    (11, 2.0),
])
def test_a_value_of_another_type_than_its_column_is_a_misfit(column: int, value: Any) -> None:
    row = (*GOOD_CALL[:column], value, *GOOD_CALL[column + 1:])
    with pytest.raises(MisfitRowError) as caught:
        TYPES.check_rows(CALLS, [GOOD_CALL, row])
    assert "tool_calls" in str(caught.value) and repr(value)[:20] in str(caught.value)


@pytest.mark.parametrize("row", [GOOD_CALL[:-1], (*GOOD_CALL, 1), ()])
def test_a_row_of_another_length_is_a_misfit(row: tuple[Any, ...]) -> None:
    with pytest.raises(MisfitRowError):
        TYPES.check_rows(CALLS, [row])


def test_a_batch_is_checked_rows_and_statement_parameters_alike() -> None:
    batch = Batch(load_context=lambda s: {}, query=lambda *a: [])
    batch.insert(CALLS, GOOD_CALL)
    batch.run(analytics.MARK_RECOVERED, (4, "acme", "t-1", 3))
    TYPES.check(batch)
    batch.run(attribution.REVOKE_GRANT, ("2026-11-17T10:30:00.000000Z", ["by"], None, "acme", "g"),
              late=True)
    with pytest.raises(MisfitRowError, match="grants"):
        TYPES.check(batch)


def test_a_statement_not_written_column_by_column_takes_any_value_a_column_could() -> None:
    statement = "UPDATE {grants} SET reason = lower(?) WHERE tenant = ?"
    assert TYPES._kinds(statement) is None
    TYPES.check_rows(statement, [("x", 5)])
    for value in (True, 1.5, [], "a\x00", 2**63):
        with pytest.raises(MisfitRowError):
            TYPES.check_rows(statement, [("x", value)])


def _fits(value: Any, kind: str, nullable: bool) -> bool:
    """The rule, written out plainly."""
    if value is None:
        return nullable
    if kind == "TEXT":
        return isinstance(value, str) and "\x00" not in value
    bits = 32 if kind == "INTEGER" else 64
    return (isinstance(value, int) and not isinstance(value, bool)
            and -(2 ** (bits - 1)) <= value < 2 ** (bits - 1))


VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**65, max_value=2**65),
                   st.sampled_from([2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 1, 2**63]),
                   st.floats(allow_nan=False), st.text(max_size=4),
                   st.lists(st.integers(), max_size=1))


ROWS = st.lists(st.dictionaries(st.integers(0, len(GOOD_CALL) - 1), VALUES, max_size=2).map(
    lambda changes: tuple(changes.get(i, v) for i, v in enumerate(GOOD_CALL))),
    min_size=1, max_size=4)  # a good row with up to two values changed


@given(ROWS)
def test_the_compiled_check_agrees_with_the_rule_written_out(rows: list[tuple[Any, ...]]) -> None:
    kinds = [TYPES.columns["tool_calls"][c] for c in (
        "tenant", "trace_id", "seq", "ts", "day", "tool", "executed_by", "success", "attempt",
        "error_class", "args_digest", "call_key")]
    expected = all(_fits(v, kind, nullable) for row in rows
                   for v, (kind, nullable) in zip(row, kinds, strict=True))
    try:
        TYPES.check_rows(CALLS, rows)
        fits = True
    except MisfitRowError:
        fits = False
    assert fits == expected
