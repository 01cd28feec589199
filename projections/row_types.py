"""Rows fit their view columns before they are written, alike on every backend.

SQLite keeps whatever it is given in a column (a number or a NUL character in a TEXT
column, a string in an INTEGER one); PostgreSQL converts some values (``True`` to
``t``, a list to an array's text) and refuses others. So a stored record altered into
another shape could fold into different views on each backend. Before a batch is
written, every row and statement parameter is checked against the type its column
declares:

- a ``TEXT`` column takes a string without NUL;
- an ``INTEGER`` column a Python ``int`` (never a bool) within 32 bits, a ``BIGINT``
  one within 64;
- NULL only where the column allows it.

A batch with a value that does not fit raises :class:`MisfitRowError`; the projector
then folds it again with every record checked (``Projector._fold_and_write``), which
sets the altered record aside on every backend. The checks are compiled, one
function a statement, from the tables' own ``CREATE TABLE`` statements and the
statement's column list (as :mod:`ledger.quick_check` does for the event models).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ledger.errors import StoreError
from projections.base import Batch

Fits = Callable[[Sequence[Sequence[Any]]], bool]
_BOUNDS = {"TEXT": None, "INTEGER": 2**31, "{bigint}": 2**63}
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS \{(\w+)\} \((.*)\)", re.S)
_TABLE_KEY = re.compile(r", PRIMARY KEY \([\w, ]+\)$")
_COLUMN = re.compile(r"(\w+) (TEXT|INTEGER|\{bigint\})( NOT NULL| PRIMARY KEY)?")
_INSERT = re.compile(r"INSERT INTO \{(\w+)\}(?: AS \w+)? \(([\w, ]+)\) VALUES \(([?, ]+)\)"
                     r"(?: ON CONFLICT .*)?", re.S)
_UPDATE = re.compile(r"UPDATE \{(\w+)\}")
_TABLE = re.compile(r"(?:INTO|UPDATE) \{(\w+)\}")
_SET_OR_WHERE = re.compile(r"(?:\w+\.)?(\w+) = \?")


class MisfitRowError(StoreError):
    """A view row or statement parameter of another type than its column's."""


class RowTypes:
    """The view tables' column types (from their DDL), and checks compiled from them."""

    def __init__(self, ddl: Iterable[str]) -> None:
        self.columns: dict[str, dict[str, tuple[str, bool]]] = {}
        for statement in ddl:
            m = _CREATE.fullmatch(statement)
            if m is None:
                continue
            columns = self.columns[m.group(1)] = {}
            for part in _TABLE_KEY.sub("", m.group(2)).split(", "):
                c = _COLUMN.fullmatch(part)
                if c is None:
                    raise ValueError(f"cannot read the column {part!r} of {m.group(1)}")
                columns[c.group(1)] = (c.group(2), c.group(3) is None)
        self._checks: dict[str, Fits] = {}

    def check(self, batch: Batch) -> None:
        """Raise MisfitRowError unless every row and statement parameter of a batch fits."""
        for template, rows in batch.rows.items():
            self.check_rows(template, rows)
        for template, params in batch.statements + batch.late_statements:
            self.check_rows(template, (params,))

    def check_rows(self, template: str, rows: Sequence[Sequence[Any]]) -> None:
        """Raise MisfitRowError unless every row of ``template`` fits its columns."""
        fits = self._checks.get(template)
        if fits is None:
            fits = self._checks[template] = self._compile(template)
        if not fits(rows):
            raise MisfitRowError(self._describe(template, rows))

    def _kinds(self, template: str) -> list[tuple[str, bool]] | None:
        """Each placeholder's column type and whether it takes NULL; None when the
        statement's placeholders are not each one column's value."""
        insert = _INSERT.fullmatch(template)
        if insert is not None:
            table, names = insert.group(1), insert.group(2).split(", ")
            if insert.group(3).count("?") != len(names):
                return None
        elif (update := _UPDATE.match(template)) is not None:
            table, names = update.group(1), _SET_OR_WHERE.findall(template)
            if template.count("?") != len(names):
                return None
        else:
            return None
        columns = self.columns.get(table, {})
        if not all(n in columns for n in names):
            return None
        return [columns[n] for n in names]

    def _compile(self, template: str) -> Fits:
        kinds = self._kinds(template)
        if kinds is None:  # any value a column of either type could hold
            return _any_column
        conditions = []
        for i, (kind, nullable) in enumerate(kinds):
            v = f"v{i}"
            bound = _BOUNDS[kind]
            test = (f'type({v}) is str and "\\x00" not in {v}' if bound is None
                    else f"type({v}) is int and {-bound} <= {v} < {bound}")
            conditions.append(f"({v} is None or {test})" if nullable else test)
        names = ", ".join(f"v{i}" for i in range(len(kinds))) + ","
        source = (f"def fits(rows):\n"
                  f"    try:\n"
                  f"        for {names} in rows:\n"
                  f"            if not ({' and '.join(conditions)}):\n"
                  f"                return False\n"
                  f"    except (TypeError, ValueError):  # not a row of that many values\n"
                  f"        return False\n"
                  f"    return True\n")
        scope: dict[str, Any] = {}
        exec(compile(source, f"<row check: {template[:40]}>", "exec"), scope)
        fits: Fits = scope["fits"]
        return fits

    def _describe(self, template: str, rows: Sequence[Sequence[Any]]) -> str:
        """Which row and value did not fit (the slow path, once a check failed)."""
        kinds = self._kinds(template)
        table = m.group(1) if (m := _TABLE.search(template)) else "a view table"
        for row in rows:
            if kinds is None:
                if not _any_column([row]):
                    return f"a statement on {table} got a value no column takes: {row!r:.200}"
                continue
            if len(row) != len(kinds):
                return f"a row of {table} has {len(row)} values for {len(kinds)} columns"
            for value, (kind, nullable) in zip(row, kinds, strict=True):
                if not _fits(value, kind, nullable):
                    return (f"a row of {table} holds {value!r:.80} where its column takes "
                            f"{kind.strip('{}')}{'' if nullable else ' (not NULL)'}: "
                            f"{row!r:.200}")
        return f"a row of {table} does not fit its columns"


def _fits(value: Any, kind: str, nullable: bool) -> bool:
    """The rule the compiled checks apply, for one value (when describing a misfit)."""
    if value is None:
        return nullable
    bound = _BOUNDS[kind]
    if bound is None:
        return type(value) is str and "\x00" not in value
    return type(value) is int and -bound <= value < bound


def _any_column(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether every value is one that a TEXT or a BIGINT column could hold."""
    return all(_fits(v, "TEXT", True) or _fits(v, "{bigint}", True) for row in rows for v in row)
