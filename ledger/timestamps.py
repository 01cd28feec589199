"""Timestamps of the contract: RFC 3339 with an offset, normalised to UTC.

Kept apart from :mod:`ledger.events` (the pydantic models) so that readers of stored
records, ``verify`` above all, do not import pydantic and build the models: that
took ~0.17 s of every ``agentledger verify`` and of each of its worker processes.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

TS = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
UTC_TS = re.compile(  # the usual form, already normal but for the fraction's length
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?Z"
)


def normalize_ts(ts: str) -> str:
    """An RFC 3339 timestamp as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC.

    Fractions beyond microseconds are truncated; a leap second (``:60``) counts as
    the next second; instants beyond year 1..9999 in UTC are clamped to that range.
    """
    if UTC_TS.fullmatch(ts) and _valid_date(ts[:10]):  # half the time of the general path
        return (ts[:-1] if len(ts) > 20 else ts[:19] + ".").ljust(26, "0") + "Z"
    m = TS.fullmatch(ts)
    if m is None:
        raise ValueError("not of the form 2026-11-20T10:00:00.123Z")
    date, hh, mm, ss, frac, offset = m.groups()
    if offset in "Zz" and ss < "60" and hh < "24" and mm < "60" and _valid_date(date):
        return f"{date}T{hh}:{mm}:{ss}.{(frac or '0')[:6]:0<6}Z"  # fast path: already UTC
    leap = ss == "60"
    text = f"{date}T{hh}:{mm}:{'59' if leap else ss}.{(frac or '0')[:6]:0<6}"
    parsed = datetime.fromisoformat(text + ("+00:00" if offset in "Zz" else offset))
    try:
        utc = parsed.astimezone(UTC) + timedelta(seconds=1 if leap else 0)
    except OverflowError:
        return "0001-01-01T00:00:00.000000Z" if parsed.year < 5000 else _LATEST
    return f"{utc.year:04}-{utc:%m-%dT%H:%M:%S.%f}Z"  # strftime's %Y drops a year's zeros


_LATEST = "9999-12-31T23:59:59.999999Z"


def stored_ts_utc(ts: Any) -> str | None:
    """:func:`normalize_ts` of a stored record's ``ts``, which passed validation when it
    was stored; None where it is not a timestamp (a record altered since).

    The usual form (``Z``, no leap second) is normalised by slicing alone, half the
    time of ``normalize_ts``, which must also validate: what verify does per event.
    """
    if not isinstance(ts, str):
        return None
    if len(ts) > 20 and ts[-1] == "Z" and ts[10] == "T" and ts[19] == "." and (
        ts[17:19] != "60"
    ):
        return (ts[:26] if len(ts) > 27 else ts[:-1].ljust(26, "0")) + "Z"
    try:
        return normalize_ts(ts)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _valid_date(date: str) -> bool:
    try:
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        return False
    return True
