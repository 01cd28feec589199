"""Fallback, retry and failure statistics over the ``analytics`` and ``failures`` views.

``tool_execs`` (the denominator of every rate) is counted exactly for any window:
whole UTC days come from ``tool_daily`` (a few rows per day), the partial days at
either end of a ``--since``/``--until`` window from the ``tool_calls`` rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from ledger.errors import UsageError
from ledger.reader import parse_bound
from ledger.store import Store
from projections.sql import ViewDB, view_db

# --by value -> (key columns in the recoveries/failures view, column tool_execs are counted by)
_RECOVERY_KEYS = {
    "tool": (("tool",), "tool"),
    "pair": (("tool", "fallback_tool"), "tool"),
    "agent": (("executed_by",), "executed_by"),
    "day": (("day",), "day"),
}
_FAILURE_KEYS = {
    "tool": (("tool",), "tool"),
    "reason": (("reason",), None),
    "agent": (("executed_by",), "executed_by"),
}
_DAY_START, _DAY_END = "T00:00:00.000000Z", "T23:59:59.999999Z"


@dataclass(frozen=True)
class StatRow:
    """One row of a statistics table: its key fields, then its numbers."""

    key: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {**self.key, **self.values}


def fallback_stats(store: Store, tenant: str, *, by: str = "tool", since: str | None = None,
                   until: str | None = None) -> list[StatRow]:
    """Fallbacks per tool / tool pair / agent / day: count, recovered, tool_execs, rate."""
    return _recovery_stats(store, tenant, "fallback", "fallbacks", by, since, until)


def retry_stats(store: Store, tenant: str, *, by: str = "tool", since: str | None = None,
                until: str | None = None) -> list[StatRow]:
    """Retries per tool / agent / day: count, recovered, tool_execs, rate."""
    if by == "pair":
        raise UsageError("--by pair applies to fallbacks only: use tool, agent or day")
    return _recovery_stats(store, tenant, "retry", "retries", by, since, until)


def failure_stats(store: Store, tenant: str, *, by: str = "tool", since: str | None = None,
                  until: str | None = None) -> list[StatRow]:
    """Failure points per tool / reason / agent: count and share of all failure points.

    Per tool and per agent also ``failed_execs`` (failed ``TOOL_EXEC``s), ``tool_execs``
    and ``rate = failed_execs / tool_execs``.
    """
    if by not in _FAILURE_KEYS:
        raise UsageError(f"--by {by!r}: choose from {', '.join(_FAILURE_KEYS)}")
    keys, exec_column = _FAILURE_KEYS[by]
    lo, hi = parse_bound(since, "since"), parse_bound(until, "until")
    db = view_db(store.backend)
    where, params = _window(tenant, lo, hi)
    rows = db.query(
        f"SELECT {keys[0]}, COUNT(*), SUM(CASE WHEN event = 'TOOL_EXEC' THEN 1 ELSE 0 END) "
        f"FROM {{failures}}{where} GROUP BY {keys[0]}", params)
    total = sum(int(n) for _, n, _ in rows)
    execs = _exec_counts(db, tenant, exec_column, lo, hi) if exec_column else None
    out = []
    for key, n, failed in rows:
        values: dict[str, Any] = {"failures": int(n), "share": int(n) / total}
        if execs is not None:
            calls = execs.get(key, 0)
            values |= {"failed_execs": int(failed or 0), "tool_execs": calls,
                       "rate": _rate(int(failed or 0), calls)}
        out.append(StatRow({keys[0]: key}, values))
    return sorted(out, key=lambda r: (-r.values["failures"], str(list(r.key.values()))))


def _recovery_stats(store: Store, tenant: str, kind: str, count_name: str, by: str,
                    since: str | None, until: str | None) -> list[StatRow]:
    if by not in _RECOVERY_KEYS:
        raise UsageError(f"--by {by!r}: choose from {', '.join(_RECOVERY_KEYS)}")
    keys, exec_column = _RECOVERY_KEYS[by]
    lo, hi = parse_bound(since, "since"), parse_bound(until, "until")
    db = view_db(store.backend)
    where, params = _window(tenant, lo, hi)
    columns = ", ".join(keys)
    rows = db.query(
        f"SELECT {columns}, COUNT(*), SUM(recovered) FROM {{recoveries}}{where} AND kind = ? "
        f"GROUP BY {columns}", (*params, kind))
    execs = _exec_counts(db, tenant, exec_column, lo, hi)
    out = []
    for row in rows:
        key = dict(zip(keys, row[:len(keys)], strict=True))
        n, recovered = int(row[len(keys)]), int(row[len(keys) + 1] or 0)
        calls = execs.get(row[0], 0)
        out.append(StatRow(key, {count_name: n, "recovered": recovered, "tool_execs": calls,
                                 "rate": _rate(n, calls)}))
    if by == "day":
        return sorted(out, key=lambda r: str(r.key["day"]))
    return sorted(out, key=lambda r: (-r.values[count_name], str(list(r.key.values()))))


def _rate(n: int, calls: int) -> float | None:
    return n / calls if calls else None


def _window(tenant: str, lo: str | None, hi: str | None) -> tuple[str, tuple[Any, ...]]:
    where, params = " WHERE tenant = ?", [tenant]
    if lo is not None:
        where += " AND ts >= ?"
        params.append(lo)
    if hi is not None:
        where += " AND ts <= ?"
        params.append(hi)
    return where, tuple(params)


def _exec_counts(db: ViewDB, tenant: str, column: str, lo: str | None,
                 hi: str | None) -> Counter[Any]:
    """TOOL_EXEC counts per ``column`` value with ``lo <= ts <= hi``, exactly."""
    counts: Counter[Any] = Counter()
    first_full = None if lo is None else (
        lo[:10] if lo[10:] == _DAY_START else _shift(lo[:10], 1))
    last_full = None if hi is None else (
        hi[:10] if hi[10:] == _DAY_END else _shift(hi[:10], -1))
    if first_full is not None and last_full is not None and first_full > last_full:
        _add_calls(db, counts, tenant, column, lo, hi)  # no whole day inside the window
        return counts
    sql, params = f"SELECT {column}, SUM(execs) FROM {{tool_daily}} WHERE tenant = ?", [tenant]
    if first_full is not None:
        sql += " AND day >= ?"
        params.append(first_full)
    if last_full is not None:
        sql += " AND day <= ?"
        params.append(last_full)
    for key, n in db.query(sql + f" GROUP BY {column}", tuple(params)):
        counts[key] += int(n)
    if lo is not None and first_full is not None and lo[:10] != first_full:
        _add_calls(db, counts, tenant, column, lo, lo[:10] + _DAY_END)
    if hi is not None and last_full is not None and hi[:10] != last_full:
        _add_calls(db, counts, tenant, column, hi[:10] + _DAY_START, hi)
    return counts


def _add_calls(db: ViewDB, counts: Counter[Any], tenant: str, column: str, lo: str | None,
               hi: str | None) -> None:
    where, params = _window(tenant, lo, hi)
    for key, n in db.query(f"SELECT {column}, COUNT(*) FROM {{tool_calls}}{where} "
                           f"GROUP BY {column}", params):
        counts[key] += int(n)


def _shift(day: str, days: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()
