"""Queries over the projections: memory, failures, attribution, findings, statistics.

Every query takes a store and exactly one tenant, reads the view tables only
(plus the stream catalog to tell a missing trace from an empty answer), and
returns dataclasses whose ``as_json()`` has the field names documented in
docs/CLI.md. Time bounds are RFC 3339 or ``YYYY-MM-DD`` (``ledger.reader.parse_window``).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from ledger import chain
from ledger.backends.base import StreamHead
from ledger.errors import MemoryDisagreementError, NotFoundError, UsageError
from ledger.memory import memory_hash
from ledger.reader import parse_window
from ledger.store import Store
from projections.base import name_equals
from projections.sql import view_db
from projections.stats import failure_stats, fallback_stats, retry_stats, unknown_callback_stats
from projections.streamed import stream_query

__all__ = [
    "READS", "FailureRow", "FindingRow", "GrantRow", "MemoryDiff", "MemoryVersion", "MemoryView",
    "WriteRow", "audit_findings", "audit_writes", "failure_stats", "failures", "fallback_stats",
    "grants", "memory_diff", "memory_histories", "memory_history", "memory_state", "retry_stats",
    "unknown_callback_stats",
]

READS: dict[str, tuple[str, ...]] = {
    "memory_state": ("memory",), "memory_diff": ("memory",), "memory_history": ("memory",),
    "memory_histories": ("memory",), "failures": ("failures",), "audit_writes": ("attribution",),
    "audit_findings": ("findings", "attribution"), "grants": ("attribution",),
    "fallback_stats": ("analytics",), "retry_stats": ("analytics",),
    "failure_stats": ("failures", "analytics"), "unknown_callback_stats": ("analytics",),
}
"""The projections whose views each query reads: on a store this process may not write,
a query needs only these built by this version (``Projector(store, READS[name])``)."""


class _Row:
    def as_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]


class _FlatRow(_Row):
    """A row whose fields are all scalars (text, numbers, booleans, None): its fields as
    a dict without ``asdict``'s deep copy, which cost ten times as much (about 10 µs a
    row), for output of any size."""

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class MemoryView(_Row):
    tenant: str
    trace_id: str
    scope: str
    seq: int
    state: dict[str, Any]
    memory_hash: str


@dataclass(frozen=True)
class MemoryDiff(_Row):
    tenant: str
    trace_id: str
    scope: str
    from_seq: int
    to_seq: int
    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class MemoryVersion(_Row):
    tenant: str
    trace_id: str
    scope: str
    seq: int
    ts: str
    key: str
    op: str
    value: Any
    memory_hash: str
    executed_by: str
    agent_owner: str


@dataclass(frozen=True)
class FailureRow(_FlatRow):
    tenant: str
    trace_id: str
    seq: int
    ts: str
    event: str
    tool: str | None
    executed_by: str
    reason: str | None
    error_class: str | None
    error_code: str | int | None


@dataclass(frozen=True)
class WriteRow(_FlatRow):
    tenant: str
    trace_id: str
    seq: int
    ts: str
    scope: str
    key: str
    op: str
    executed_by: str
    agent_owner: str
    cross_agent: bool
    authorized: bool
    basis: str | None


@dataclass(frozen=True)
class FindingRow(_FlatRow):
    tenant: str
    trace_id: str | None
    seq: int | None
    kind: str
    detail: str
    at: str | None


@dataclass(frozen=True)
class GrantRow(_FlatRow):
    grant_id: str
    tenant: str
    agent: str
    scope: str
    valid_from: str
    valid_until: str | None
    by: str | None
    reason: str | None
    recorded_at: str | None
    revoked_at: str | None
    revoked_by: str | None
    revoke_reason: str | None


# -- memory -------------------------------------------------------------------------

def _trace_head(store: Store, tenant: str, trace_id: str) -> StreamHead:
    sid = chain.trace_stream_id(tenant, trace_id)
    head = store.backend.load_heads([sid]).get(sid)
    if head is None:
        raise NotFoundError(f"no trace {trace_id!r} in tenant {tenant!r}")
    return head


def _seq(head: StreamHead, seq: int | None, name: str) -> int:
    if seq is None:
        return head.last_seq
    if not 0 <= seq <= head.last_seq:
        raise UsageError(f"--{name} {seq} is outside trace {head.name!r} (seq 1..{head.last_seq})")
    return seq


def _scope(head: StreamHead, scope: str | None) -> str:
    return scope if scope is not None else f"memory/{head.agent_owner}"


def _fold(store: Store, head: StreamHead, scope: str, at: int) -> tuple[dict[str, Any], str]:
    same_scope, values = name_equals("scope", scope)
    rows = view_db(store.backend).query(
        "SELECT seq, key, op, value, memory_hash FROM {memory_writes} WHERE tenant = ? "
        f"AND trace_id = ? AND {same_scope} AND seq <= ? ORDER BY seq",
        (head.tenant, head.name, *values, at))
    state: dict[str, Any] = {}
    for _, key, op, value, _ in rows:
        if op == "delete":
            state.pop(key, None)
        else:
            state[key] = orjson.loads(value)
    digest = memory_hash(state)
    if rows and rows[-1][4] != digest:  # a record or the view was altered
        raise MemoryDisagreementError(
            head.tenant, head.name, int(rows[-1][0]),
            f"the memory of {scope} in the memory view disagrees with the ledger's record")
    return state, digest


def memory_state(store: Store, tenant: str, trace_id: str, *, scope: str | None = None,
                 at: int | None = None) -> MemoryView:
    """The memory of (trace, scope) after event ``at`` (default: the trace's last)."""
    head = _trace_head(store, tenant, trace_id)
    seq, name = _seq(head, at, "at"), _scope(head, scope)
    state, digest = _fold(store, head, name, seq)
    return MemoryView(tenant, trace_id, name, seq, state, digest)


def memory_diff(store: Store, tenant: str, trace_id: str, from_seq: int, to_seq: int, *,
                scope: str | None = None) -> MemoryDiff:
    """What changed in (trace, scope) between after ``from_seq`` and after ``to_seq``."""
    head = _trace_head(store, tenant, trace_id)
    lo, hi, name = _seq(head, from_seq, "from"), _seq(head, to_seq, "to"), _scope(head, scope)
    before, _ = _fold(store, head, name, lo)
    after, _ = _fold(store, head, name, hi)
    added = {k: v for k, v in after.items() if k not in before}
    removed = {k: v for k, v in before.items() if k not in after}
    changed = {k: {"from": before[k], "to": v} for k, v in after.items()
               if k in before and chain.encode(v, sort_keys=True)
               != chain.encode(before[k], sort_keys=True)}
    return MemoryDiff(tenant, trace_id, name, lo, hi, added, removed, changed)


def memory_history(store: Store, tenant: str, trace_id: str, *,
                   scope: str | None = None) -> list[MemoryVersion]:
    """Every memory write of a trace (of one scope, or all), in seq order."""
    _trace_head(store, tenant, trace_id)
    sql = ("SELECT scope, seq, ts, key, op, value, memory_hash, executed_by, agent_owner "
           "FROM {memory_writes} WHERE tenant = ? AND trace_id = ?")
    params: list[Any] = [tenant, trace_id]
    if scope is not None:
        clause, values = name_equals("scope", scope)
        sql += " AND " + clause
        params += values
    rows = view_db(store.backend).query(sql + " ORDER BY seq", tuple(params))
    return [MemoryVersion(tenant, trace_id, r[0], r[1], r[2], r[3], r[4],
                          None if r[5] is None else orjson.loads(r[5]), r[6], r[7], r[8])
            for r in rows]


def memory_histories(store: Store, tenant: str,
                     trace_ids: list[str]) -> list[MemoryVersion]:
    """The memory writes of many traces (by trace, then seq): one query per 500 traces."""
    db, out = view_db(store.backend), []
    for i in range(0, len(trace_ids), 500):
        chunk = trace_ids[i:i + 500]
        rows = db.query(
            "SELECT trace_id, scope, seq, ts, key, op, value, memory_hash, executed_by, "
            "agent_owner FROM {memory_writes} WHERE tenant = ? AND trace_id IN ("
            + ",".join("?" * len(chunk)) + ") ORDER BY trace_id, seq", (tenant, *chunk))
        out += [MemoryVersion(tenant, r[0], r[1], r[2], r[3], r[4], r[5],
                              None if r[6] is None else orjson.loads(r[6]), r[7], r[8], r[9])
                for r in rows]
    return out


# -- failures, writes, findings ---------------------------------------------------------

_NAMES = frozenset({"tool", "executed_by", "event", "scope", "key"})  # see ``indexed``


def _where(tenant: str, filters: dict[str, Any], since: str | None,
           until: str | None) -> tuple[str, list[Any]]:
    clauses, params = ["tenant = ?"], [tenant]
    for column, value in filters.items():
        if value is not None:  # a name's index holds a prefix: see ``name_equals``
            clause, values = (name_equals(column, value) if column in _NAMES
                              else (f"{column} = ?", (value,)))
            clauses.append(clause)
            params += values
    lo, hi = parse_window(since, until)
    if lo is not None:
        clauses.append("ts >= ?")
        params.append(lo)
    if hi is not None:
        clauses.append("ts <= ?")
        params.append(hi)
    return " WHERE " + " AND ".join(clauses), params


def _limit(limit: int | None, params: list[Any]) -> str:
    if limit is None:
        return ""
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    params.append(limit)
    return " LIMIT ?"


def failures(store: Store, tenant: str, *, tool: str | None = None, agent: str | None = None,
             event: str | None = None, trace_id: str | None = None, since: str | None = None,
             until: str | None = None, limit: int | None = None) -> list[FailureRow]:
    """Failure points of a tenant, oldest first, filtered."""
    sql, params = _failures_sql(tenant, tool=tool, agent=agent, event=event, trace_id=trace_id,
                                since=since, until=until, limit=limit)
    return [_failure(r) for r in view_db(store.backend).query(sql, params)]


def stream_failures(store: Store, tenant: str, **filters: Any
                    ) -> Generator[FailureRow, None, None]:
    """:func:`failures` (same filters) a row at a time, for output of any size
    (:mod:`projections.streamed`: close it before the store)."""
    sql, params = _failures_sql(tenant, **filters)
    return stream_query(view_db(store.backend), sql, params, _failure)


def _failures_sql(tenant: str, *, tool: str | None = None, agent: str | None = None,
                  event: str | None = None, trace_id: str | None = None,
                  since: str | None = None, until: str | None = None,
                  limit: int | None = None) -> tuple[str, tuple[Any, ...]]:
    where, params = _where(tenant, {"tool": tool, "executed_by": agent, "event": event,
                                    "trace_id": trace_id}, since, until)
    sql = ("SELECT tenant, trace_id, seq, ts, event, tool, executed_by, reason, error_class, "
           "error_code FROM {failures}" + where + " ORDER BY ts, trace_id, seq")
    return sql + _limit(limit, params), tuple(params)


def _failure(r: tuple[Any, ...]) -> FailureRow:
    return FailureRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                      None if r[9] is None else orjson.loads(r[9]))


def audit_writes(store: Store, tenant: str, *, scope: str | None = None, by: str | None = None,
                 key: str | None = None, trace_id: str | None = None, since: str | None = None,
                 until: str | None = None, limit: int | None = None) -> list[WriteRow]:
    """Who wrote what memory (with authorization), oldest first, filtered."""
    sql, params = _writes_sql(tenant, scope=scope, by=by, key=key, trace_id=trace_id,
                              since=since, until=until, limit=limit)
    return [_write(r) for r in view_db(store.backend).query(sql, params)]


def stream_audit_writes(store: Store, tenant: str, **filters: Any
                        ) -> Generator[WriteRow, None, None]:
    """:func:`audit_writes` (same filters) a row at a time, as :func:`stream_failures`."""
    sql, params = _writes_sql(tenant, **filters)
    return stream_query(view_db(store.backend), sql, params, _write)


def _writes_sql(tenant: str, *, scope: str | None = None, by: str | None = None,
                key: str | None = None, trace_id: str | None = None, since: str | None = None,
                until: str | None = None, limit: int | None = None
                ) -> tuple[str, tuple[Any, ...]]:
    where, params = _where(tenant, {"scope": scope, "executed_by": by, "key": key,
                                    "trace_id": trace_id}, since, until)
    sql = ("SELECT tenant, trace_id, seq, ts, scope, key, op, executed_by, agent_owner, "
           "cross_agent, authorized, basis FROM {write_attribution}" + where
           + " ORDER BY ts, trace_id, seq")
    return sql + _limit(limit, params), tuple(params)


def _write(r: tuple[Any, ...]) -> WriteRow:
    return WriteRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]),
                    bool(r[10]), r[11])


FINDING_KINDS = ("conflict", "memory_hash_mismatch", "unauthorized_write", "unreadable_record")


def unreadable_entries(store: Store, tenant: str,
                       trace_id: str | None = None) -> list[tuple[str | None, int, str]]:
    """(trace_id, seq, reason) of the tenant's stored records the views left out because
    they cannot be read (altered behind the ledger's back), in trace and seq order."""
    trace_filter, params = ("", (tenant,)) if trace_id is None else (
        " AND trace_id = ?", (tenant, trace_id))
    rows = view_db(store.backend).query(
        "SELECT trace_id, seq, min(reason) FROM {unreadable_entries} WHERE tenant = ?"
        + trace_filter + " GROUP BY trace_id, seq ORDER BY trace_id, seq", params)
    return [(t, int(s), r) for t, s, r in rows]


def audit_findings(store: Store, tenant: str, *, kind: str | None = None,
                   trace_id: str | None = None) -> list[FindingRow]:
    """Integrity findings of a tenant: the ledger's, every unauthorized write and every
    record the views left out as unreadable; by trace, seq and kind."""
    return list(stream_audit_findings(store, tenant, kind=kind, trace_id=trace_id))


def stream_audit_findings(store: Store, tenant: str, *, kind: str | None = None,
                          trace_id: str | None = None) -> Generator[FindingRow, None, None]:
    """:func:`audit_findings` a row at a time, as :func:`stream_failures`: one read, so
    the three kinds of source are one snapshot."""
    if kind is not None and kind not in FINDING_KINDS:
        raise UsageError(f"unknown finding kind {kind!r}: choose from {', '.join(FINDING_KINDS)}")
    sql, params = _findings_sql(tenant, kind, trace_id)
    return stream_query(view_db(store.backend), sql, params,
                        lambda r: _finding(tenant, r))


_FINDING_COLUMNS = ("trace_id, seq, {} AS kind, {} AS a, {} AS b, {} AS c, {} AS at, "
                    "{} AS source, {} AS n")
_FINDING_SOURCES = (  # (the kind it holds, or None: the ledger's own kinds; its select)
    (None, "SELECT " + _FINDING_COLUMNS.format(
        "kind", "detail", "NULL", "NULL", "recorded_at", "0", "finding_seq")
     + " FROM {findings} WHERE tenant = ?"),
    ("unauthorized_write", "SELECT " + _FINDING_COLUMNS.format(
        "'unauthorized_write'", "scope", "key", "executed_by", "ts", "1", "0")
     + " FROM {write_attribution} WHERE tenant = ? AND authorized = 0"),
    ("unreadable_record", "SELECT " + _FINDING_COLUMNS.format(
        "'unreadable_record'", "min(reason)", "NULL", "NULL", "NULL", "2", "0")
     + " FROM {unreadable_entries} WHERE tenant = ?"),
)


def _findings_sql(tenant: str, kind: str | None,
                  trace_id: str | None) -> tuple[str, tuple[Any, ...]]:
    """One query over the sources of ``kind`` (all: None), ordered by trace, seq, kind,
    source, then the ledger's findings as recorded and writes by scope and key."""
    parts: list[str] = []
    params: list[Any] = []
    for only, select in _FINDING_SOURCES:
        if kind is not None and only is not None and only != kind:
            continue
        if only is None and kind == "unauthorized_write":
            continue  # the ledger records conflicts and mismatches, never these
        sql, params = select, [*params, tenant]
        if trace_id is not None:
            sql, params = sql + " AND trace_id = ?", [*params, trace_id]
        if only is None and kind is not None:
            sql, params = sql + " AND kind = ?", [*params, kind]
        if only == "unreadable_record":
            sql += " GROUP BY trace_id, seq"
        parts.append(sql)
    return ("SELECT trace_id, seq, kind, a, b, c, at, source FROM (" + " UNION ALL ".join(parts)
            + ") AS found ORDER BY coalesce(trace_id, ''), coalesce(seq, 0), kind, source, n, "
            "a, b"), tuple(params)


def _finding(tenant: str, r: tuple[Any, ...]) -> FindingRow:
    trace, seq, kind, a, b, c, at, source = r
    if source == 1:
        detail = (f"{c} wrote {b!r} to {a} with neither an earlier in-trace permission nor "
                  "a tenant grant covering it")
    elif source == 2:
        detail = (f"the stored record cannot be read ({a}); the views leave it out: run "
                  "`agentledger verify`")
    else:
        detail = a
    return FindingRow(tenant, trace, seq, kind, detail, at)


def grants(store: Store, tenant: str) -> list[GrantRow]:
    """The tenant's grants as the attribution view holds them, by valid_from then id."""
    rows = view_db(store.backend).query(
        "SELECT grant_id, tenant, agent, scope, valid_from, valid_until, granted_by, reason, "
        "recorded_at, revoked_at, revoked_by, revoke_reason FROM {grants} WHERE tenant = ? "
        "ORDER BY valid_from, grant_id", (tenant,))
    return [GrantRow(*r) for r in rows]
