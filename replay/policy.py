"""The replay policy: retries, fallbacks, memory writes and rules (docs/REPLAY.md, Policy).

A policy is JSON or YAML, validated strictly: unknown fields, wrong types and bad
templates are errors, each naming its file and field path::

    policy = load_policy("policy.yaml")
    policy.max_attempts("search")
    policy.matching_rule({"tool": "search", "success": True, "confidence": 0.3})
    policy.memory_key("search", "search", "agent-a")   # "search_result"
    policy.digest()                                    # "sha256:..." of the normalised policy

The engine decides with it; this module only holds and checks the settings.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ledger import chain
from ledger.errors import InputError, UsageError

ErrorClass = Literal["terminal", "retryable", "replaceable"]
KEY_PLACEHOLDERS = frozenset({"tool", "action_tool", "agent"})
DOCUMENT_SUFFIXES = (".json", ".yaml", ".yml")

_CONFIG = ConfigDict(frozen=True, extra="forbid", strict=True)


class RetryPolicy(BaseModel):
    """Attempts per call (1 = no retry), overrides by tool, error classes never retried."""

    model_config = _CONFIG

    max_attempts: int = Field(1, ge=1)
    per_tool: dict[str, Annotated[int, Field(ge=1)]] = {}
    never_retry: list[ErrorClass] = ["terminal"]


class MemoryPolicy(BaseModel):
    """Whether a success writes memory, and under which key (a template)."""

    model_config = _CONFIG

    write_on_success: bool = True
    key: str = Field("{tool}_result", min_length=1)

    @field_validator("key")
    @classmethod
    def _check_template(cls, key: str) -> str:
        try:
            parts = list(string.Formatter().parse(key))
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc})") from None
        allowed = ", ".join("{" + p + "}" for p in sorted(KEY_PLACEHOLDERS))
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in KEY_PLACEHOLDERS or spec or conversion:
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (
                    f":{spec}" if spec else "") + "}"
                raise ValueError(f"unknown placeholder {shown}; allowed: {allowed}")
        return key


Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


class Condition(BaseModel):
    """When a rule applies: every condition that is set must hold (none set: always)."""

    model_config = _CONFIG

    tool: str | None = None
    action_tool: str | None = None
    agent: str | None = None
    success: bool | None = None
    error_class: ErrorClass | None = None
    attempt_gte: Annotated[int, Field(ge=1)] | None = None
    confidence_lt: Confidence | None = None
    confidence_gte: Confidence | None = None

    def holds(self, ctx: Mapping[str, Any]) -> bool:
        """Whether the context (tool, action_tool, agent, success, error_class, attempt,
        confidence) satisfies every set condition; a missing value satisfies none."""
        for name in ("tool", "action_tool", "agent", "success", "error_class"):
            wanted = getattr(self, name)
            if wanted is not None and ctx.get(name) != wanted:
                return False
        attempt, confidence = ctx.get("attempt"), ctx.get("confidence")
        if self.attempt_gte is not None and (attempt is None or attempt < self.attempt_gte):
            return False
        if self.confidence_lt is not None and (
                confidence is None or not confidence < self.confidence_lt):
            return False
        return self.confidence_gte is None or (
            confidence is not None and confidence >= self.confidence_gte)


class Decision(BaseModel):
    """What a rule decides; it sets only what it names (at least one thing).

    ``fallback`` is ``true`` (the policy's next alternative), ``false`` (none) or a
    list of tools to fall back to. At most one of retry, fallback, terminate is on.
    """

    model_config = _CONFIG

    write_memory: bool | None = None
    retry: bool | None = None
    fallback: Any = None
    terminate: bool | None = None

    @field_validator("fallback")
    @classmethod
    def _check_fallback(cls, value: Any) -> Any:
        ok = value is None or isinstance(value, bool) or (
            isinstance(value, list) and all(isinstance(t, str) for t in value))
        if not ok:
            raise ValueError("must be true, false or a list of tool names")
        return value

    @model_validator(mode="after")
    def _check_set(self) -> Decision:
        if all(v is None for v in (self.write_memory, self.retry, self.fallback,
                                   self.terminate)):
            raise ValueError("must set at least one of write_memory, retry, fallback, "
                             "terminate")
        on = [n for n in ("retry", "fallback", "terminate") if getattr(self, n)]
        if len(on) > 1:
            raise ValueError(f"choose at most one of retry, fallback, terminate "
                             f"(got {', '.join(on)})")
        return self


class Rule(BaseModel):
    """A named condition and the decision it takes; the first matching rule wins."""

    model_config = _CONFIG

    name: str | None = None
    when: Condition
    then: Decision


class Policy(BaseModel):
    """A whole replay policy. ``text`` is the text it was loaded from."""

    model_config = _CONFIG

    retry: RetryPolicy = RetryPolicy()
    fallback: dict[str, list[str]] = {}
    memory: MemoryPolicy = MemoryPolicy()
    rules: list[Rule] = []
    max_steps: int = Field(200, ge=1)

    _text: str = PrivateAttr(default="")

    @classmethod
    def from_obj(cls, obj: Any, source: str = "<inline>", *, text: str | None = None) -> Policy:
        """Validate a decoded document; errors are one UsageError naming ``source``.

        ``text`` defaults to the canonical JSON of the normalised policy.
        """
        if not isinstance(obj, Mapping):
            raise UsageError(f"{source}: expected an object of policy settings, "
                             f"got {type(obj).__name__}")
        try:
            policy = cls.model_validate(obj)
        except pydantic.ValidationError as exc:
            raise UsageError(format_errors(source, exc)) from None
        policy._text = policy.canonical().decode() if text is None else text
        return policy

    @property
    def text(self) -> str:
        """The original text (file contents, or canonical JSON for an inline policy)."""
        return self._text

    def canonical(self) -> bytes:
        """The normalised policy (defaults filled in) as JSON with sorted keys."""
        return chain.encode(self.model_dump(mode="json"), sort_keys=True)

    def digest(self) -> str:
        """``sha256:`` of the canonical JSON: equal for equal policies, however written."""
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()

    def max_attempts(self, tool: str) -> int:
        """Attempts allowed per call of ``tool`` (its override, else the default)."""
        return self.retry.per_tool.get(tool, self.retry.max_attempts)

    def matching_rule(self, ctx: Mapping[str, Any]) -> Rule | None:
        """The first rule whose conditions all hold for ``ctx``, else None."""
        return next((rule for rule in self.rules if rule.when.holds(ctx)), None)

    def memory_key(self, tool: str, action_tool: str, agent: str) -> str:
        """The memory key a success of ``tool`` writes (the key template filled in)."""
        return self.memory.key.format(tool=tool, action_tool=action_tool, agent=agent)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (.json, .yaml or .yml)."""
    obj, text = load_document(path)
    return Policy.from_obj(obj, str(path), text=text)


def load_document(path: str | Path) -> tuple[Any, str]:
    """A JSON or YAML file (by extension) decoded, and its text.

    UsageError for another extension, bad syntax or a key given twice; InputError
    when the file cannot be read.
    """
    name = str(path)
    suffix = Path(name).suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise UsageError(f"{name}: expected a .json, .yaml or .yml file")
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{name}: cannot read: {reason}") from None
    try:
        if suffix == ".json":
            return json.loads(text, object_pairs_hook=_unique_keys), text
        return yaml.load(text, Loader=_UniqueKeyLoader), text
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{name}: not valid {suffix[1:].upper()}: {_one_line(exc)}") from None


def format_errors(source: str, exc: pydantic.ValidationError,
                  at: tuple[int | str, ...] = ()) -> str:
    """One line per error: ``source: field.path[1].name: message`` (``at`` leads the path)."""
    lines = []
    for err in exc.errors():
        field = loc_path(at + tuple(err["loc"]))
        message = err["msg"]
        if err["type"] == "value_error":
            message = str(err.get("ctx", {}).get("error", message))
        lines.append(f"{source}: {field}: {message}" if field else f"{source}: {message}")
    return "\n".join(lines)


def loc_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as ``a.b[1].c``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += part
        else:
            out += f".{part}" if out else str(part)
    return out


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} given twice")
        result[key] = value
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping key given twice (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # unhashable: the base loader reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
