"""Where a replayed tool call gets its result: the outcome sources, in order.

A replay never invents a result. Each call is put to the sources in turn
(docs/REPLAY.md, "Outcome sources"); the first that answers decides it, and the
outcome carries that source's name for the report::

    chain = OutcomeChain([SourceOutcomes.from_payloads(recorded),
                          Cassette(store, "acme", exclude_trace="t-1"),
                          ScriptedOutcomes.load("outcomes.yaml"),
                          LiveTools.load("my_agent.tools:REGISTRY", timeout=30.0)])
    outcome = chain.resolve(Call(step=2, tool="search", args={"q": "x"}, attempt=1,
                                 agent="agent-a"))   # None: nobody could answer
"""

from __future__ import annotations

import copy
import importlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, get_args

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ledger import chain
from ledger.errors import StoreError, UsageError
from ledger.records import decode_stored
from ledger.store import Store
from ledger.strict_json import non_json
from projections.analytics import args_digest, call_key
from projections.sql import view_db
from replay.policy import ErrorClass, format_errors, load_document

ERROR_CLASSES = frozenset(get_args(ErrorClass))

CallKey = tuple[int, str, int, str]  # (step, tool, attempt, args_digest)


@dataclass(frozen=True)
class Call:
    """One tool call the replay needs a result for (``args`` are the plan's)."""

    step: int
    tool: str
    args: Any
    attempt: int
    agent: str


@dataclass(frozen=True)
class Outcome:
    """The result of a call, and the name of the source that gave it."""

    success: bool
    output: Any = None
    error_reason: str | None = None
    error_class: str | None = None
    latency_ms: int | None = None
    source: str = ""
    recorded: Mapping[str, Any] | None = None  # the TOOL_EXEC payload it was read from

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Outcome:
        """The outcome a recorded ``TOOL_EXEC`` payload reports (kept whole, extras too)."""
        return cls(payload.get("success") is True, payload.get("output"),
                   payload.get("error_reason"), payload.get("error_class"),
                   payload.get("latency_ms"), recorded=payload)

    def tool_exec_payload(self, call: Call) -> dict[str, Any]:
        """The ``TOOL_EXEC`` payload for ``call`` (optional keys only when set).

        A recorded outcome is re-emitted as recorded (every field, in its order),
        with the call's tool, args and attempt.
        """
        if self.recorded is not None:
            payload = dict(self.recorded)
            payload["tool"], payload["args"] = call.tool, call.args
            if "attempt" in payload or call.attempt != 1:
                payload["attempt"] = call.attempt
            return payload
        payload = {"tool": call.tool, "args": call.args,
                                   "success": self.success}
        if self.success and self.output is not None:
            payload["output"] = self.output
        for name in ("error_reason", "error_class", "latency_ms"):
            value = getattr(self, name)
            if value is not None:
                payload[name] = value
        payload["attempt"] = call.attempt
        return payload


class OutcomeSource(Protocol):
    """Something that may know the result of a call (``None``: it does not)."""

    name: str

    def lookup(self, call: Call) -> Outcome | None: ...


class SourceOutcomes:
    """The source trace's own recorded calls: same step, tool, attempt and args."""

    name = "source"

    def __init__(self, calls: Mapping[CallKey, Mapping[str, Any]]) -> None:
        self.calls = calls

    @classmethod
    def from_payloads(cls, payloads: Iterable[tuple[int, Mapping[str, Any]]]) -> SourceOutcomes:
        """Index ``(step, TOOL_EXEC payload)`` pairs; the first of equal calls is kept."""
        calls: dict[CallKey, Mapping[str, Any]] = {}
        for step, p in payloads:
            key = (step, p["tool"], int(p.get("attempt", 1)), args_digest(p.get("args")))
            calls.setdefault(key, p)
        return cls(calls)

    def lookup(self, call: Call) -> Outcome | None:
        payload = self.calls.get((call.step, call.tool, call.attempt, args_digest(call.args)))
        return None if payload is None else Outcome.from_payload(payload)


class CassetteIndex:
    """Where a tenant's recorded calls are, by (tool, args), and their outcomes; shared.

    One indexed query per distinct (tool, args) finds every recorded call of it;
    one read per chosen call gives its outcome. A backtest shares one index across
    its replays, so a call many traces make is looked up once.
    """

    def __init__(self, store: Store, tenant: str) -> None:
        self.store, self.tenant = store, tenant
        self._db = view_db(store.backend)
        self._calls: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
        self._outcomes: dict[tuple[str, int], Outcome] = {}  # (trace, seq) -> its outcome

    def latest(self, tool: str, digest: str, exclude: str | None) -> tuple[str, int] | None:
        """The most recent call (latest ts, then trace id, then seq) not in ``exclude``.

        Ties are broken in Python (by code point), so the pick does not depend on a
        PostgreSQL database's collation.
        """
        calls = self._calls.get((tool, digest))
        if calls is None:
            calls = sorted(((str(ts), str(trace), int(seq)) for ts, trace, seq in self._db.query(
                "SELECT ts, trace_id, seq FROM {tool_calls} "
                "WHERE call_key = ? AND tenant = ? AND tool = ? AND args_digest = ?",
                (call_key(self.tenant, tool, digest), self.tenant, tool, digest))),
                reverse=True)
            self._calls[(tool, digest)] = calls
        for _ts, trace, seq in calls:
            if trace != exclude:
                return trace, seq
        return None

    def outcome(self, tool: str, digest: str, trace_id: str, seq: int) -> Outcome:
        """The outcome of the stored call at (trace, seq), checked to be that call."""
        found = self._outcomes.get((trace_id, seq))
        if found is None:
            found = self._outcomes[(trace_id, seq)] = self._read(tool, digest, trace_id, seq)
        return found

    def _read(self, tool: str, digest: str, trace_id: str, seq: int) -> Outcome:
        state = self.store.backend.read_state(chain.trace_stream_id(self.tenant, trace_id), seq)
        record = {} if state is None else decode_stored(
            state, tenant=self.tenant, name=trace_id, seq=seq)
        payload = record.get("payload") or {}
        if (record.get("event") != "TOOL_EXEC" or payload.get("tool") != tool
                or args_digest(payload.get("args")) != digest):
            raise StoreError(
                f"cassette: the analytics view names {trace_id!r} seq {seq} for a {tool} "
                "call, but the stored event there is not that call (rebuild the views: "
                "agentledger projections rebuild analytics)")
        return Outcome.from_payload(payload)


class Cassette:
    """The most recent recorded call of the same tool with the same args in the tenant.

    Strict: args must be equal as JSON (``projections.analytics.args_digest``).
    Reads the ``analytics`` view (kept current by a projector) for where the call
    is, then the stored event itself for its outcome. The index caches both per
    (tool, args), so one replay sees one answer for a call.
    """

    name = "cassette"

    def __init__(self, store: Store, tenant: str, *, exclude_trace: str | None = None,
                 index: CassetteIndex | None = None) -> None:
        self.exclude_trace = exclude_trace
        self.index = index if index is not None else CassetteIndex(store, tenant)

    def lookup(self, call: Call) -> Outcome | None:
        digest = args_digest(call.args)
        found = self.index.latest(call.tool, digest, self.exclude_trace)
        return None if found is None else self.index.outcome(call.tool, digest, *found)


class ScriptedOutcome(BaseModel):
    """One outcome written in an outcomes file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    success: bool
    output: Any = None
    error_reason: str | None = None
    error_class: ErrorClass | None = None
    latency_ms: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _output_on_success_only(self) -> ScriptedOutcome:
        if not self.success and self.output is not None:
            raise ValueError("output is only recorded on success")
        for name in ("output", "error_reason"):  # what the replayed TOOL_EXEC will hold
            found = non_json(getattr(self, name), name)
            if found is not None:
                raise ValueError(f"{found[0]}: {found[1]}")
        return self

    def outcome(self) -> Outcome:
        return Outcome(self.success, self.output, self.error_reason, self.error_class,
                       self.latency_ms)


class ScriptedOutcomes:
    """Outcomes written by hand, per tool.

    ``{"tool": outcome}`` answers every call of the tool; ``{"tool": [o1, o2]}``
    answers its next calls in order, then no more. Other tools get no answer.
    """

    name = "scripted"

    def __init__(self, script: Any, *, source: str = "<inline>") -> None:
        if not isinstance(script, Mapping):
            raise UsageError(f"{source}: expected an object mapping tool names to outcomes")
        errors: list[str] = []
        self._every: dict[str, Outcome] = {}
        self._queues: dict[str, deque[Outcome]] = {}
        for tool, spec in script.items():
            if isinstance(spec, Mapping):
                outcome = self._validate(source, (str(tool),), spec, errors)
                if outcome is not None:
                    self._every[str(tool)] = outcome
            elif isinstance(spec, list):
                queue = [self._validate(source, (str(tool), i), s, errors)
                         for i, s in enumerate(spec)]
                self._queues[str(tool)] = deque(o for o in queue if o is not None)
            else:
                errors.append(f"{source}: {tool}: expected an outcome object or a list of them")
        if errors:
            raise UsageError("\n".join(errors))

    @classmethod
    def load(cls, path: str | Path) -> ScriptedOutcomes:
        """Read an outcomes file (.json, .yaml or .yml)."""
        obj, _ = load_document(path)
        return cls(obj, source=str(path))

    @staticmethod
    def _validate(source: str, loc: tuple[int | str, ...], spec: Any,
                  errors: list[str]) -> Outcome | None:
        try:
            return ScriptedOutcome.model_validate(spec).outcome()
        except pydantic.ValidationError as exc:
            errors.append(format_errors(source, exc, loc))
            return None

    def lookup(self, call: Call) -> Outcome | None:
        if call.tool in self._every:
            return self._every[call.tool]
        queue = self._queues.get(call.tool)
        return queue.popleft() if queue else None


ToolRegistry = Mapping[str, Callable[[Any], Any]]


class LiveTools:
    """Real tools, called now: ``registry[tool](args)`` with a timeout.

    A return value is the output (it must be JSON); an exception is a failure whose
    ``error_class`` is the exception's ``error_class`` attribute, else ``retryable``;
    a call still running after ``timeout`` seconds is a ``retryable`` failure (its
    thread is abandoned, not stopped). Tools not in the registry get no answer.
    """

    name = "live"

    def __init__(self, registry: ToolRegistry, *, timeout: float = 30.0,
                 spec: str = "<registry>") -> None:
        if not timeout > 0:
            raise UsageError(f"tools {spec!r}: timeout must be a positive number of seconds")
        self.registry, self.timeout, self.spec = registry, timeout, spec

    @classmethod
    def load(cls, spec: str, *, timeout: float = 30.0) -> LiveTools:
        """Import ``package.module:attribute``, a mapping of tool names to callables."""
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise UsageError(f"tools {spec!r}: expected package.module:registry")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise UsageError(f"tools {spec!r}: no module named {exc.name!r}") from None
        except Exception as exc:
            raise UsageError(f"tools {spec!r}: importing {module_name} failed: "
                             f"{type(exc).__name__}: {exc}") from None
        if not hasattr(module, attr):
            raise UsageError(f"tools {spec!r}: module {module_name} has no attribute {attr!r}")
        registry = getattr(module, attr)
        if not isinstance(registry, Mapping):
            raise UsageError(f"tools {spec!r}: expected a mapping of tool names to callables, "
                             f"got {type(registry).__name__}")
        bad = sorted(repr(k) for k, v in registry.items()
                     if not isinstance(k, str) or not callable(v))
        if bad:
            raise UsageError(f"tools {spec!r}: not a tool name mapped to a callable: "
                             f"{', '.join(bad)}")
        return cls(registry, timeout=timeout, spec=spec)

    def lookup(self, call: Call) -> Outcome | None:
        tool = self.registry.get(call.tool)
        if tool is None:
            return None
        result: list[Any] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(tool(copy.deepcopy(call.args)))
            except BaseException as exc:  # the tool's failure is the outcome
                failure.append(exc)

        worker = threading.Thread(target=run, name=f"replay-tool-{call.tool}", daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(self.timeout)
        latency = int((time.monotonic() - started) * 1000)
        if worker.is_alive():
            return Outcome(False, error_reason=f"timeout after {self.timeout:g}s",
                           error_class="retryable", latency_ms=latency)
        if failure:
            exc = failure[0]
            declared = getattr(exc, "error_class", None)
            error_class = declared if declared in ERROR_CLASSES else "retryable"
            reason = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00").encode(
                "utf-8", "backslashreplace").decode("utf-8")  # storable: "\\ud800"
            return Outcome(False, error_reason=reason, error_class=error_class,
                           latency_ms=latency)
        if not result:  # pragma: no cover - the thread ended without returning or raising
            return Outcome(False, error_reason="the tool returned nothing",
                           error_class="retryable", latency_ms=latency)
        try:
            output = json.loads(json.dumps(result[0], allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            return Outcome(False, error_reason=f"returned a value that is not JSON: {exc}",
                           error_class="terminal", latency_ms=latency)
        found = non_json(output, "output")
        if found is not None:  # a NUL character or a lone surrogate: no event can hold it
            return Outcome(False, error_reason=f"returned a value the ledger does not take: "
                           f"{found[0]}: {found[1]}", error_class="terminal", latency_ms=latency)
        return Outcome(True, output, latency_ms=latency)


class OutcomeChain:
    """The outcome sources in order; the first that answers a call decides it."""

    def __init__(self, sources: Sequence[OutcomeSource]) -> None:
        self.sources = list(sources)

    @property
    def names(self) -> list[str]:
        """The sources' names, in order (for the replay's link and report)."""
        return [s.name for s in self.sources]

    def resolve(self, call: Call) -> Outcome | None:
        """The first answer, its ``source`` set to the answering source's name."""
        for source in self.sources:
            outcome = source.lookup(call)
            if outcome is not None:
                return replace(outcome, source=source.name)
        return None
