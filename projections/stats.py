"""Fallback, retry, failure and unknown-callback statistics over the ``analytics`` and
``failures`` views.

``tool_execs`` (the denominator of every rate) is counted exactly for any window:
whole UTC hours come from ``tool_hourly`` (a few rows per hour), the partial hours
at either end of a ``--since``/``--until`` window from the ``tool_calls`` rows.
Failure counts are rolled up the same way (``failure_hourly``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from ledger.errors import UsageError
from ledger.reader import parse_window
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
_HOUR_START, _HOUR_END = ":00:00.000000Z", ":59:59.999999Z"


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
    lo, hi = parse_window(since, until)
    db = view_db(store.backend)
    column = keys[0]
    rows = [(key, n, failed) for key, (n, failed) in _counts(
        db, tenant, lo, hi,
        f"SELECT {column}, SUM(failures), SUM(failed_execs) FROM {{failure_hourly}} "
        f"WHERE tenant = ?{{hours}} GROUP BY {column}",
        f"SELECT {column}, COUNT(*), SUM(CASE WHEN event = 'TOOL_EXEC' THEN 1 ELSE 0 END) "
        f"FROM {{failures}}{{where}} GROUP BY {column}",
        rollup_key=orjson.loads if column in ("tool", "reason") else None).items()]
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


_UNKNOWN_KEYS = {"event": "event", "agent": "executed_by", "day": "day"}


def unknown_callback_stats(store: Store, tenant: str, *, by: str = "event",
                           since: str | None = None, until: str | None = None) -> list[StatRow]:
    """Events of ``CALLBACK_*`` subtypes the contract does not name, per subtype, agent or
    day: how many, in how many traces, first and last seen. Most first (by day: in order)."""
    if by not in _UNKNOWN_KEYS:
        raise UsageError(f"--by {by!r}: choose from {', '.join(_UNKNOWN_KEYS)}")
    column = _UNKNOWN_KEYS[by]
    where, params = _window(tenant, *parse_window(since, until))
    rows = view_db(store.backend).query(
        f"SELECT {column}, COUNT(*), COUNT(DISTINCT trace_id), MIN(ts), MAX(ts) "
        f"FROM {{unknown_callbacks}}{where} GROUP BY {column}", params)
    out = [StatRow({column: key}, {"events": int(n), "traces": int(traces),
                                   "first_ts": first, "last_ts": last})
           for key, n, traces, first, last in rows]
    if by == "day":
        return sorted(out, key=lambda r: str(r.key["day"]))
    return sorted(out, key=lambda r: (-r.values["events"], str(r.key[column])))


def _recovery_stats(store: Store, tenant: str, kind: str, count_name: str, by: str,
                    since: str | None, until: str | None) -> list[StatRow]:
    if by not in _RECOVERY_KEYS:
        raise UsageError(f"--by {by!r}: choose from {', '.join(_RECOVERY_KEYS)}")
    keys, exec_column = _RECOVERY_KEYS[by]
    lo, hi = parse_window(since, until)
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


def _between(column: str, lo: str | None, hi: str | None) -> tuple[str, list[str]]:
    """`` AND column >= ? AND column <= ?`` for the bounds that are given, and their values."""
    sql, params = "", []
    if lo is not None:
        sql += f" AND {column} >= ?"
        params.append(lo)
    if hi is not None:
        sql += f" AND {column} <= ?"
        params.append(hi)
    return sql, params


def _window(tenant: str, lo: str | None, hi: str | None) -> tuple[str, tuple[Any, ...]]:
    bounds, params = _between("ts", lo, hi)
    return " WHERE tenant = ?" + bounds, (tenant, *params)


def _exec_counts(db: ViewDB, tenant: str, column: str, lo: str | None,
                 hi: str | None) -> Counter[Any]:
    """TOOL_EXEC counts per ``column`` value with ``lo <= ts <= hi``, exactly."""
    rolled = "substr(hour, 1, 10)" if column == "day" else column
    counts: Counter[Any] = Counter()
    for key, n in _counts(
            db, tenant, lo, hi,
            f"SELECT {rolled}, SUM(execs) FROM {{tool_hourly}} WHERE tenant = ?{{hours}} "
            f"GROUP BY {rolled}",
            f"SELECT {column}, COUNT(*) FROM {{tool_calls}}{{where}} GROUP BY {column}").items():
        counts[key] += n[0]
    return counts


def _counts(db: ViewDB, tenant: str, lo: str | None, hi: str | None, rollup_sql: str,
            rows_sql: str, *, rollup_key: Callable[[Any], Any] | None = None,
            ) -> dict[Any, list[int]]:
    """Sums per key over ``lo <= ts <= hi``: whole hours from an hourly rollup, the
    partial hours at either end of the window from the rows (so always exact).
    ``rollup_key`` turns the rollup's stored key into the rows' form."""
    out: dict[Any, list[int]] = {}

    def add(rows: list[tuple[Any, ...]], convert: Callable[[Any], Any] | None = None) -> None:
        for key, *sums in rows:
            acc = out.setdefault(convert(key) if convert else key, [0] * len(sums))
            for i, value in enumerate(sums):
                acc[i] += int(value or 0)

    def from_rows(a: str | None, b: str | None) -> None:
        where, params = _window(tenant, a, b)
        add(db.query(rows_sql.replace("{where}", where), params))

    first = None if lo is None else lo[:13] if lo[13:] == _HOUR_START else _hour(lo[:13], 1)
    last = None if hi is None else hi[:13] if hi[13:] == _HOUR_END else _hour(hi[:13], -1)
    if first is not None and last is not None and first > last:
        from_rows(lo, hi)  # no whole hour inside the window
        return out
    hours, params = _between("hour", first, last)
    add(db.query(rollup_sql.replace("{hours}", hours), (tenant, *params)), rollup_key)
    if lo is not None and first is not None and lo[:13] != first:
        from_rows(lo, lo[:13] + _HOUR_END)
    if hi is not None and last is not None and hi[:13] != last:
        from_rows(hi[:13] + _HOUR_START, hi)
    return out


def _hour(hour: str, delta: int) -> str:
    try:
        moved = datetime.strptime(hour, "%Y-%m-%dT%H") + timedelta(hours=delta)
    except OverflowError:  # beyond year 1..9999: nothing is stored there
        return hour
    return f"{moved.year:04}-{moved:%m-%dT%H}"  # strftime's %Y drops a year's leading zeros
