"""A quick check of decoded JSON against a model, for the values it surely accepts.

Validating an event with pydantic costs several microseconds: the models build
instances that are thrown away. :func:`quick_check` compiles, from the model itself
(no rule is written twice), a plain function that returns True only for values the
model surely accepts. Ingest (:func:`ledger.events.validate_event`) then skips the
model, and readers of stored records (:mod:`ledger.records`) skip the full check.
Anything else, every invalid value included, goes to the model, so what a value is
refused for, and how that is worded, comes from the models alone.

"Surely" is narrower than the model: types must be exact (JSON decoding makes no
subclasses), integers within 64 bits, floats finite and integers given for them
within 2^53, and a string's pattern is matched with Python's ``re`` only when the
string is printable ASCII, where it and pydantic's Rust engine agree (on ``\\s`` and
``$`` they differ for control characters). A model whose annotations, constraints or
validators this module does not know compiles to None: pydantic always checks it.
``tests/test_quick_check.py`` compares the two on generated values.

The function is generated as Python source, as :mod:`dataclasses` does, one line a
field: an envelope and payload checked through nested closures took half as long
again (3.4 against 2.2 µs).
Its input must be decoded JSON, so dictionary keys are strings and are not checked.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import annotated_types
from pydantic import BaseModel, StringConstraints

Check = Callable[[Any], bool]
Rules = dict[type[BaseModel], Check]
_ABSENT = object()
_INT64 = 2**63
_EXACT_FLOAT_INTS = 2**53  # an int beyond this is no longer exact as a float


class Unsupported(Exception):
    """The model holds something this module cannot check surely."""


def quick_check(model: type[BaseModel], rules: Rules | None = None) -> Check | None:
    """A function of a decoded JSON value: True only if ``model`` surely accepts it.

    ``rules`` gives, for a model with model validators, a check that stands for them
    (True only where they surely pass). None if the model cannot be checked quickly.
    """
    try:
        return _Compiler(rules or {}).function(model)
    except Unsupported:
        return None


class _Compiler:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.scope: dict[str, Any] = {"_ABSENT": _ABSENT, "_isfinite": math.isfinite}

    def bind(self, value: Any) -> str:
        """The name by which the generated code refers to ``value``."""
        name = f"_k{len(self.scope)}"
        self.scope[name] = value
        return name

    def function(self, model: type[BaseModel]) -> Check:
        config = model.model_config
        if config.get("strict") is not True or config.get("extra") not in ("allow", "forbid"):
            raise Unsupported(f"{model.__name__}: not strict")
        decorators = model.__pydantic_decorators__
        if decorators.field_validators or decorators.validators or (
            decorators.model_validators and model not in self.rules
        ):
            raise Unsupported(f"{model.__name__}: has validators")
        lines = ["def check(v):", "    if type(v) is not dict: return False"]
        if config.get("extra") == "forbid":
            known = self.bind(frozenset(model.model_fields))
            lines.append(f"    if not {known}.issuperset(v): return False")
        for name, info in model.model_fields.items():
            test = self.test(info.annotation, list(info.metadata))
            if test == "True" and not info.is_required():
                continue
            lines.append(f"    x = v.get({name!r}, _ABSENT)")
            if info.is_required():
                lines.append(f"    if x is _ABSENT or not ({test}): return False")
            else:
                lines.append(f"    if x is not _ABSENT and not ({test}): return False")
        rule = self.rules.get(model)
        lines.append(f"    return {self.bind(rule)}(v)" if rule is not None else "    return True")
        namespace: dict[str, Any] = {}
        exec("\n".join(lines), self.scope, namespace)
        check: Check = namespace["check"]
        return check

    def test(self, annotation: Any, metadata: list[Any]) -> str:
        """A Python expression, true only if ``x`` surely is valid for ``annotation``
        with its constraints (``metadata``)."""
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            base, *more = typing.get_args(annotation)
            return self.test(base, [*more, *metadata])
        if origin in (typing.Union, types.UnionType):
            members = list(typing.get_args(annotation))
            if metadata and (len(members) != 2 or members[1] is not type(None)):
                raise Unsupported(f"constraints on {annotation}")
            tests = [self.test(m, metadata if i == 0 else []) for i, m in enumerate(members)]
            return "(" + " or ".join(f"({t})" for t in tests) + ")"
        if annotation is type(None):
            return "x is None"
        if metadata and (annotation is Any or annotation is bool or origin is not None or (
                isinstance(annotation, type) and issubclass(annotation, BaseModel))):
            raise Unsupported(f"constraints on {annotation}")
        if annotation is Any:
            return "True"
        if origin is typing.Literal:
            options = typing.get_args(annotation)
            kinds = frozenset(type(option) for option in options)
            if not kinds <= {str, int}:
                raise Unsupported(f"{annotation}")  # True == 1, but a bool is of neither kind
            return f"type(x) in {self.bind(kinds)} and x in {self.bind(frozenset(options))}"
        if origin is dict and typing.get_args(annotation) == (str, Any):
            return "type(x) is dict"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return f"{self.bind(self.function(annotation))}(x)"
        if annotation is str:
            return self.string(metadata)
        if annotation is bool:
            return "type(x) is bool"
        if annotation is int:
            low, high = _bounds(metadata)
            return f"type(x) is int and {max(low, -_INT64)!r} <= x <= {min(high, _INT64 - 1)!r}"
        if annotation is float:
            low, high = _bounds(metadata)
            test = (f"((type(x) is float and _isfinite(x)) or (type(x) is int and "
                    f"{-_EXACT_FLOAT_INTS} <= x <= {_EXACT_FLOAT_INTS}))")
            if low != -math.inf:
                test += f" and {low!r} <= x"
            if high != math.inf:
                test += f" and x <= {high!r}"
            return test
        raise Unsupported(f"{annotation}")

    def string(self, metadata: list[Any]) -> str:
        low, high, pattern = 0, math.inf, None
        for item in metadata:
            if isinstance(item, StringConstraints):
                if item.strip_whitespace or item.to_upper or item.to_lower or item.ascii_only:
                    raise Unsupported(f"{item}")
                low = max(low, item.min_length or 0)
                if item.max_length is not None:
                    high = min(high, item.max_length)
                if item.pattern is not None:
                    if pattern is not None:
                        raise Unsupported("two patterns")
                    pattern = str(item.pattern)
            elif isinstance(item, annotated_types.MinLen):
                low = max(low, item.min_length)
            elif isinstance(item, annotated_types.MaxLen):
                high = min(high, item.max_length)
            else:
                raise Unsupported(f"{item}")
        test = "type(x) is str"
        if low:
            test += f" and {low} <= len(x)"
        if high != math.inf:
            test += f" and len(x) <= {high}"
        if pattern is not None:  # pydantic searches too: the pattern anchors itself, or not
            search = self.bind(re.compile(pattern).search)
            test += f" and x.isascii() and x.isprintable() and {search}(x) is not None"
        return test


def _bounds(metadata: list[Any]) -> tuple[float, float]:
    low, high = -math.inf, math.inf
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = max(low, typing.cast(float, item.ge))
        elif isinstance(item, annotated_types.Le):
            high = min(high, typing.cast(float, item.le))
        else:
            raise Unsupported(f"{item}")
    return low, high
