"""Tenant grants: standing permissions for one agent to write another's memory scope.

A grant lets ``agent`` write ``scope`` (``memory/<owner>``) in any trace of its
tenant from ``valid_from`` until ``valid_until`` (exclusive, ``None`` = open) or its
revocation. Adding and revoking are records in the tenant's hash-chained
``$grants`` stream (topic ``agentledger.grant.v1``), so who granted what, when and
why is itself on the record and checked by ``verify``. The record format is in
``docs/PROJECTIONS.md``; :func:`list_grants` folds the stream back into grants.
"""

from __future__ import annotations

import getpass
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import StoredEvent

from ledger import chain, records
from ledger.backends.base import StreamHead
from ledger.errors import ConcurrencyError, NotFoundError, UsageError
from ledger.paths import is_utf8
from ledger.store import Store
from ledger.strict_json import NUL_REASON, SURROGATE_REASON
from ledger.timestamps import normalize_ts

_SCOPE = re.compile(r"memory/.+", re.S)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ATTEMPTS = 5  # appends tried before a ConcurrencyError reaches the caller


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant as the tenant's grants stream gives it (revocation folded in)."""

    grant_id: str
    tenant: str
    agent: str
    scope: str
    valid_from: str
    valid_until: str | None
    by: str
    reason: str | None
    recorded_at: str
    revoked_at: str | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"grant_id": self.grant_id, "tenant": self.tenant, "agent": self.agent,
                "scope": self.scope, "valid_from": self.valid_from,
                "valid_until": self.valid_until, "by": self.by, "reason": self.reason,
                "recorded_at": self.recorded_at, "revoked_at": self.revoked_at,
                "revoked_by": self.revoked_by, "revoke_reason": self.revoke_reason}


def add_grant(
    store: Store, tenant: str, agent: str, scope: str, *, valid_from: str | None = None,
    valid_until: str | None = None, by: str | None = None, reason: str | None = None,
) -> Grant:
    """Record a grant letting ``agent`` write ``scope`` in ``tenant``; return it.

    Times are RFC 3339 (or ``YYYY-MM-DD``, midnight UTC) and stored in UTC;
    ``valid_from`` defaults to now, ``by`` to ``user:<login name>``. Invalid values
    raise :class:`UsageError` naming the field.
    """
    _check_tenant(tenant)
    _check_text(agent, "agent")
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise UsageError(f"scope: must look like memory/<agent>, got {scope!r}")
    _check_storable(scope, "scope")
    start = _timestamp(valid_from, "valid_from") if valid_from is not None else _now()
    end = _timestamp(valid_until, "valid_until") if valid_until is not None else None
    if end is not None and end <= start:
        raise UsageError(f"valid_until: {end} is not after valid_from {start}")
    grant_id = "g-" + secrets.token_hex(6)
    record = {"action": "add", "grant_id": grant_id, "tenant": tenant,
              "agent": agent, "scope": scope, "valid_from": start, "valid_until": end,
              "by": _by(by), "reason": _reason(reason)}
    return _append(store, tenant, lambda grants: record)[grant_id]


def revoke_grant(
    store: Store, tenant: str, grant_id: str, *, at: str | None = None, by: str | None = None,
    reason: str | None = None,
) -> Grant:
    """Record the end of a grant at ``at`` (default now); return the revoked grant.

    Raises :class:`NotFoundError` for a grant the tenant does not have and
    :class:`UsageError` for one already revoked.
    """
    _check_tenant(tenant)
    end = _timestamp(at, "at") if at is not None else _now()
    record = {"action": "revoke", "grant_id": grant_id, "tenant": tenant, "at": end,
              "by": _by(by), "reason": _reason(reason)}

    def checked(grants: dict[str, Grant]) -> dict[str, Any]:
        grant = grants.get(grant_id)
        if grant is None:
            raise NotFoundError(f"no grant {grant_id!r} in tenant {tenant!r}")
        if grant.revoked_at is not None:
            raise UsageError(f"grant_id: {grant_id} was already revoked at {grant.revoked_at} "
                             f"by {grant.revoked_by}")
        return record

    return _append(store, tenant, checked)[grant_id]


def list_grants(store: Store, tenant: str) -> list[Grant]:
    """A tenant's grants, oldest first, each with its revocation (if any) folded in."""
    stored = store.backend.read_stream(chain.grants_stream_id(tenant))
    return list(_fold(_decoded(tenant, stored)).values())


# -- internals -------------------------------------------------------------------


def _decoded(tenant: str, stored: Iterable[tuple[int, bytes]]) -> Iterator[dict[str, Any]]:
    """The grants stream's records; UnreadableRecordError for one altered so that it
    cannot be read (the grants are not known without it)."""
    for version, state in stored:
        yield records.decode_stored(state, tenant=tenant, name=chain.GRANTS_STREAM_NAME,
                                    seq=version, topic=chain.GRANT_TOPIC)


def _fold(decoded: Iterable[dict[str, Any]]) -> dict[str, Grant]:
    """Grants by id, in the order they were added; the first revocation of each counts."""
    grants: dict[str, Grant] = {}
    for r in decoded:
        _apply(grants, r)
    return grants


def _apply(grants: dict[str, Grant], r: dict[str, Any]) -> None:
    if r.get("action") == "add":
        grants[r["grant_id"]] = Grant(
            r["grant_id"], r["tenant"], r["agent"], r["scope"], r["valid_from"],
            r.get("valid_until"), r["by"], r.get("reason"), r["recorded_at"])
    elif r.get("action") == "revoke":
        grant = grants.get(r["grant_id"])
        if grant is not None and grant.revoked_at is None:
            grants[grant.grant_id] = replace(grant, revoked_at=r["at"], revoked_by=r["by"],
                                             revoke_reason=r.get("reason"))


def _append(
    store: Store, tenant: str, make: Callable[[dict[str, Grant]], dict[str, Any]]
) -> dict[str, Grant]:
    """Chain ``make(current grants)`` onto the tenant's grants stream; return the new fold.

    The stream is read up to its catalog head, so a record appended meanwhile by
    another writer makes this append fail with ``ConcurrencyError``; then the head is
    reloaded and ``make`` asked again (it may refuse, e.g. a revocation that won).
    """
    backend = store.backend
    sid = chain.grants_stream_id(tenant)
    failure: ConcurrencyError | None = None
    for _ in range(_ATTEMPTS):
        head = backend.load_heads([sid]).get(sid) or StreamHead(
            sid, chain.GRANTS_KIND, tenant, chain.GRANTS_STREAM_NAME, 0, chain.GENESIS_HASH)
        stored = backend.read_stream(sid, lte=head.last_seq) if head.last_seq else []
        grants = _fold(_decoded(tenant, stored))
        now = _now()
        record = {"v": chain.RECORD_VERSION, **make(grants), "recorded_at": now,
                  "prev_hash": head.head_hash}
        state = chain.encode(record)
        head = head.advanced(last_seq=head.last_seq + 1, head_hash=chain.record_hash(state),
                             first_ts=min(head.first_ts or now, now),
                             last_ts=max(head.last_ts or now, now))
        try:
            backend.append([StoredEvent(sid, head.last_seq, chain.GRANT_TOPIC, state)], [head])
        except ConcurrencyError as exc:
            failure = exc
            continue
        store.committed()
        _apply(grants, record)
        return grants
    raise ConcurrencyError(f"grants of tenant {tenant!r}: other writers appended first "
                           f"{_ATTEMPTS} times; try again") from failure


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp(value: str, name: str) -> str:
    """An RFC 3339 timestamp (or a date: midnight UTC) as the ledger's UTC string."""
    if not isinstance(value, str):
        raise UsageError(f"{name}: expected an RFC 3339 timestamp, got {value!r}")
    text = value.strip()
    if _DATE.fullmatch(text):
        text += "T00:00:00Z"
    try:
        return normalize_ts(text)
    except ValueError:
        raise UsageError(f"{name}: {value!r} is not an RFC 3339 timestamp "
                         "(e.g. 2026-11-20T10:00:00Z) or a date (YYYY-MM-DD)") from None


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{name}: must be a non-empty string, got {value!r}")
    _check_storable(value, name)
    return value


def _check_tenant(tenant: object) -> None:
    """A tenant as the contract has it: 1-100 characters (the stream catalog indexes it)."""
    if len(_check_text(tenant, "tenant")) > 100:
        raise UsageError(f"tenant: must be at most 100 characters, got {len(str(tenant))}")


def _check_storable(value: str, name: str) -> None:
    """Text a grant's record can hold: no NUL character, no lone surrogate."""
    if "\x00" in value:
        raise UsageError(f"{name}: {NUL_REASON}")
    if not is_utf8(value):
        raise UsageError(f"{name}: {SURROGATE_REASON}")


def _by(by: str | None) -> str:
    if by is None:
        try:
            return "user:" + getpass.getuser()
        except (OSError, KeyError):  # no login name (e.g. an anonymous container user)
            return "user:unknown"
    _check_text(by, "by")
    return by


def _reason(reason: str | None) -> str | None:
    if reason is not None and not isinstance(reason, str):
        raise UsageError(f"reason: must be a string, got {reason!r}")
    if reason is not None:
        _check_storable(reason, "reason")
    return reason
