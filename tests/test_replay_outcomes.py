"""Outcome sources for replay: source trace, cassette, scripted, live tools, and their chain."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.errors import InputError, StoreError, UsageError
from ledger.ingest import ingest
from ledger.store import Store
from projections import Projector
from projections.analytics import args_digest, call_key
from projections.sql import view_db
from replay.outcomes import (
    Call,
    Cassette,
    LiveTools,
    Outcome,
    OutcomeChain,
    ScriptedOutcomes,
    SourceOutcomes,
)

MODULE = __name__


def call(tool: str = "search", args: Any = None, *, step: int = 0, attempt: int = 1) -> Call:
    return Call(step, tool, {"q": "x"} if args is None else args, attempt, "agent-a")


def result(outcome: Outcome | None) -> tuple[Any, ...] | None:
    """What an outcome says (success, output, error_reason, error_class, latency_ms)."""
    if outcome is None:
        return None
    return (outcome.success, outcome.output, outcome.error_reason, outcome.error_class,
            outcome.latency_ms)


def output(outcome: Outcome | None) -> Any:
    assert outcome is not None
    return outcome.output


# -- Outcome ----------------------------------------------------------------------------------


def test_success_payload_has_keys_in_contract_order() -> None:
    """A success gives tool, args, success, output, latency_ms, attempt (in that order)."""
    payload = Outcome(True, {"hits": 3}, latency_ms=12).tool_exec_payload(call(attempt=2))
    assert list(payload.items()) == [("tool", "search"), ("args", {"q": "x"}),
                                     ("success", True), ("output", {"hits": 3}),
                                     ("latency_ms", 12), ("attempt", 2)]


def test_failure_payload_has_error_fields_and_no_output() -> None:
    """A failure carries error_reason and error_class; an output is never written for it."""
    outcome = Outcome(False, "ignored", error_reason="429", error_class="retryable")
    assert outcome.tool_exec_payload(call()) == {
        "tool": "search", "args": {"q": "x"}, "success": False, "error_reason": "429",
        "error_class": "retryable", "attempt": 1}


def test_unset_fields_are_left_out() -> None:
    """Fields that are None are absent from the payload."""
    assert list(Outcome(True).tool_exec_payload(call())) == ["tool", "args", "success",
                                                             "attempt"]


def test_recorded_outcome_is_re_emitted_as_recorded() -> None:
    """A recorded payload comes back whole (extras, order) with the call's tool, args, attempt."""
    recorded = {"success": False, "tool": "search", "args": {"q": "x"}, "output": "partial",
                "error_reason": "429", "trace_note": "kept"}
    payload = Outcome.from_payload(recorded).tool_exec_payload(
        call("search", {"q": "x"}, attempt=2))
    assert list(payload.items()) == [
        ("success", False), ("tool", "search"), ("args", {"q": "x"}), ("output", "partial"),
        ("error_reason", "429"), ("trace_note", "kept"), ("attempt", 2)]
    assert "attempt" not in Outcome.from_payload(recorded).tool_exec_payload(call())


# -- source -----------------------------------------------------------------------------------


RECORDED = [
    (0, {"tool": "search", "args": {"q": "x"}, "success": False, "error_reason": "429",
         "error_class": "retryable", "latency_ms": 30}),
    (0, {"tool": "search", "args": {"q": "x"}, "success": True, "output": [1], "attempt": 2}),
    (1, {"tool": "search", "args": {"q": "x"}, "success": True, "output": [2]}),
    (1, {"tool": "search", "args": {"q": "x"}, "success": True, "output": ["again"]}),
]


def test_source_matches_step_tool_attempt_and_args() -> None:
    """The source answers only the same step, tool, attempt and args."""
    source = SourceOutcomes.from_payloads(RECORDED)
    assert result(source.lookup(call())) == (False, None, "429", "retryable", 30)
    assert result(source.lookup(call(attempt=2))) == (True, [1], None, None, None)
    assert result(source.lookup(call(step=1))) == (True, [2], None, None, None)
    assert source.lookup(call(step=2)) is None
    assert source.lookup(call(attempt=3)) is None
    assert source.lookup(call("fetch")) is None
    assert source.lookup(call(args={"q": "y"})) is None


def test_source_keeps_the_first_of_equal_calls() -> None:
    """Two recorded calls with the same key: the earlier one answers."""
    assert output(SourceOutcomes.from_payloads(RECORDED).lookup(call(step=1))) == [2]


# -- cassette (both backends) -----------------------------------------------------------------


def tool_exec(trace: str, seq: int, ts: str, args: Any, *, tool: str = "search",
              tenant: str = "acme", **payload: Any) -> dict[str, Any]:
    payload = {"tool": tool, "args": args, "success": True, **payload}
    return {"tenant": tenant, "trace_id": trace, "seq": seq, "event": "TOOL_EXEC", "ts": ts,
            "agent_owner": "agent-a", "executed_by": "agent-a", "payload": payload}


@pytest.fixture
def record(store: Store, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Ingest events into `store`, with the projections following."""
    Projector(store).attach()
    files = iter(range(1_000_000))

    def write(*events: dict[str, Any]) -> None:
        path = tmp_path / f"events-{next(files)}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        summary = ingest(store, [str(path)], reject_file=str(tmp_path / "rejects.jsonl"))
        assert summary.rejected == 0

    yield write


def test_cassette_answers_a_strict_match(store: Store, record: Callable[..., None]) -> None:
    """The same tool with equal args (any key order) gets the recorded outcome."""
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x", "n": 1},
                     output={"hits": 3}, latency_ms=40))
    cassette = Cassette(store, "acme")
    assert result(cassette.lookup(call(args={"n": 1, "q": "x"}))) == (
        True, {"hits": 3}, None, None, 40)


@pytest.mark.parametrize(("tool", "args"), [
    ("search", {"q": "x", "n": 1.0}),
    ("search", {"q": "x"}),
    ("search", {"q": "x", "n": 1, "extra": None}),
    ("search_cache", {"q": "x", "n": 1}),
])
def test_cassette_does_not_answer_a_near_match(store: Store, record: Callable[..., None],
                                               tool: str, args: Any) -> None:
    """Other args (1.0 is not 1), fewer or more keys, or another tool: no answer."""
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x", "n": 1}, output=1))
    assert Cassette(store, "acme").lookup(call(tool, args)) is None


def test_cassette_returns_recorded_failures(store: Store, record: Callable[..., None]) -> None:
    """A recorded failure comes back with its reason, class and latency."""
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x"}, success=False,
                     error_reason="503 unavailable", error_class="retryable", latency_ms=9))
    assert result(Cassette(store, "acme").lookup(call())) == (
        False, None, "503 unavailable", "retryable", 9)


def test_cassette_takes_the_latest_instant(store: Store, record: Callable[..., None]) -> None:
    """The most recent call wins, comparing instants (offsets normalised), not the text."""
    record(tool_exec("t-a", 1, "2026-01-01T10:00:00Z", {"q": "x"}, output="a"),
           tool_exec("t-b", 1, "2026-01-01T11:30:00+02:00", {"q": "x"}, output="b"),
           tool_exec("t-c", 1, "2026-01-01T09:00:00Z", {"q": "x"}, output="c"))
    assert output(Cassette(store, "acme").lookup(call())) == "a"


def test_cassette_breaks_ties_by_trace_then_seq(store: Store,
                                                record: Callable[..., None]) -> None:
    """At the same instant the greater trace id wins, then the greater seq."""
    ts = "2026-01-01T10:00:00Z"
    record(tool_exec("t-a", 1, ts, {"q": "x"}, output="a1"),
           tool_exec("t-b", 1, ts, {"q": "x"}, output="b1"),
           tool_exec("t-b", 2, ts, {"q": "x"}, output="b2"),
           tool_exec("t-b", 3, ts, {"q": "y"}, output="b3"))
    assert output(Cassette(store, "acme").lookup(call())) == "b2"


def test_cassette_orders_trace_ids_by_code_point(store: Store,
                                                 record: Callable[..., None]) -> None:
    """Trace ids compare by code point on both backends, whatever the database collation."""
    ts = "2026-01-01T10:00:00Z"
    record(tool_exec("t_a", 1, ts, {"q": "x"}, output="underscore"),
           tool_exec("t-b", 1, ts, {"q": "x"}, output="hyphen"),
           tool_exec("t-z", 1, ts, {"q": "y"}, output="z"),
           tool_exec("t-\u00e9", 1, ts, {"q": "y"}, output="e-acute"))
    cassette = Cassette(store, "acme")
    answers = [cassette.lookup(call(args={"q": q})) for q in "xy"]
    assert [a.output if a else None for a in answers] == ["underscore", "e-acute"]


def test_cassette_excludes_the_source_trace(store: Store, record: Callable[..., None]) -> None:
    """Calls of the excluded trace never answer, even when they are the most recent."""
    record(tool_exec("t-old", 1, "2026-01-01T10:00:00Z", {"q": "x"}, output="old"),
           tool_exec("t-src", 1, "2026-01-02T10:00:00Z", {"q": "x"}, output="src"),
           tool_exec("t-src", 2, "2026-01-02T10:00:01Z", {"q": "only-here"}, output="src"))
    cassette = Cassette(store, "acme", exclude_trace="t-src")
    assert output(cassette.lookup(call())) == "old"
    assert cassette.lookup(call(args={"q": "only-here"})) is None


def test_cassette_stays_in_its_tenant(store: Store, record: Callable[..., None]) -> None:
    """Another tenant's calls (even under the same trace id) are never used."""
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x"}, tenant="other",
                     output="theirs"))
    assert Cassette(store, "acme").lookup(call()) is None
    assert output(Cassette(store, "other").lookup(call())) == "theirs"


def test_call_key_follows_its_definition() -> None:
    """Args digest's first 8 bytes XOR sha256(tenant NUL tool)'s, as a signed 64-bit int."""
    digest = args_digest({"q": "x"})
    scope = hashlib.sha256(b"acme\0search").digest()[:8]
    expected = int.from_bytes(bytes(a ^ b for a, b in zip(
        bytes.fromhex(digest.removeprefix("sha256:"))[:8], scope, strict=True)), "big",
        signed=True)
    assert call_key("acme", "search", digest) == expected
    assert len({call_key(t, tool, digest) for t in ("acme", "other")
                for tool in ("search", "fetch")}) == 4
    keys = [call_key("acme", "search", args_digest(n)) for n in range(2_000)]
    assert all(-2**63 <= k < 2**63 for k in keys) and min(keys) < 0 < max(keys)


def test_cassette_tells_apart_calls_that_share_a_lookup_key(
        store: Store, record: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup key is a bucket: with one key for every call (a clash for each pair),
    each lookup still answers by tenant, tool and exact args alone."""
    from projections import analytics
    from replay import outcomes

    for module in (analytics, outcomes):
        monkeypatch.setattr(module, "call_key", lambda tenant, tool, digest: -7)
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x"}, output="x"),
           tool_exec("t-1", 2, "2026-01-01T10:00:01Z", {"q": "y"}, output="y"),
           tool_exec("t-1", 3, "2026-01-01T10:00:02Z", {"q": "x"}, tool="fetch",
                     output="fetch x"),
           tool_exec("t-1", 1, "2026-01-01T10:00:03Z", {"q": "x"}, tenant="other",
                     output="theirs"))
    keys = view_db(store.backend).query("SELECT DISTINCT call_key FROM {tool_calls}")
    assert [tuple(k) for k in keys] == [(-7,)]
    assert output(Cassette(store, "acme").lookup(call())) == "x"
    assert output(Cassette(store, "acme").lookup(call(args={"q": "y"}))) == "y"
    assert output(Cassette(store, "acme").lookup(call("fetch"))) == "fetch x"
    assert output(Cassette(store, "other").lookup(call())) == "theirs"
    assert Cassette(store, "acme").lookup(call(args={"q": "z"})) is None


def test_cassette_answers_each_call_once(store: Store, record: Callable[..., None]) -> None:
    """Answers are cached per (tool, args): a later recording does not change them."""
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x"}, output="first"))
    cassette = Cassette(store, "acme")
    assert output(cassette.lookup(call())) == "first"
    assert cassette.lookup(call(args={"q": "later"})) is None
    record(tool_exec("t-2", 1, "2026-01-02T10:00:00Z", {"q": "x"}, output="second"),
           tool_exec("t-2", 2, "2026-01-02T10:00:01Z", {"q": "later"}, output="later"))
    assert output(cassette.lookup(call(step=5, attempt=2))) == "first"
    assert cassette.lookup(call(args={"q": "later"})) is None
    assert output(Cassette(store, "acme").lookup(call())) == "second"


def test_cassette_refuses_a_view_row_naming_another_event(store: Store,
                                                          record: Callable[..., None]) -> None:
    """A view row that points at an event which is not that call is a StoreError."""
    record(tool_exec("t-1", 1, "2026-01-01T10:00:00Z", {"q": "x"}, output="x"),
           tool_exec("t-1", 2, "2026-01-01T10:00:01Z", {"q": "y"}, output="y"))
    db = view_db(store.backend)
    with db.transaction() as cursor:
        db.execute(cursor, "UPDATE {tool_calls} SET seq = 3 WHERE trace_id = ? AND seq = 2",
                   ("t-1",))
        db.execute(cursor, "UPDATE {tool_calls} SET seq = 2 WHERE trace_id = ? AND seq = 1",
                   ("t-1",))
    with pytest.raises(StoreError, match="rebuild"):
        Cassette(store, "acme").lookup(call())


# -- scripted ---------------------------------------------------------------------------------


def test_scripted_single_outcome_answers_every_call() -> None:
    """`{"tool": outcome}` answers every call of that tool, and no other tool."""
    scripted = ScriptedOutcomes({"search": {"success": True, "output": {"hits": 1}}})
    for attempt in (1, 2, 3):
        assert scripted.lookup(call(attempt=attempt)) == Outcome(True, {"hits": 1})
    assert scripted.lookup(call("fetch_doc")) is None


def test_scripted_list_is_consumed_in_order_then_exhausted() -> None:
    """`{"tool": [o1, o2]}` answers the next two calls in order, then nothing."""
    scripted = ScriptedOutcomes({"fetch_doc_mirror": [
        {"success": False, "error_reason": "404", "error_class": "replaceable"},
        {"success": True, "output": "doc", "latency_ms": 5},
    ]})
    assert scripted.lookup(call("fetch_doc_mirror")) == Outcome(
        False, None, "404", "replaceable")
    assert scripted.lookup(call("fetch_doc_mirror")) == Outcome(True, "doc", latency_ms=5)
    assert scripted.lookup(call("fetch_doc_mirror")) is None


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_scripted_loads_json_and_yaml(tmp_path: Path, suffix: str) -> None:
    """Outcome files are JSON or YAML (by extension)."""
    script = {"search": {"success": True, "output": [1, 2]},
              "fetch": [{"success": False, "error_class": "terminal"}]}
    path = tmp_path / f"outcomes{suffix}"
    path.write_text(json.dumps(script))  # JSON is YAML too
    scripted = ScriptedOutcomes.load(path)
    assert scripted.lookup(call()) == Outcome(True, [1, 2])
    assert scripted.lookup(call("fetch")) == Outcome(False, error_class="terminal")


@pytest.mark.parametrize(("script", "line"), [
    ({"fetch_doc_mirror": [{"success": True}, {"output": 1}]},
     "outcomes.json: fetch_doc_mirror[1].success: Field required"),
    ({"search": {"success": True, "value": 1}},
     "outcomes.json: search.value: Extra inputs are not permitted"),
    ({"search": {"success": False, "error_class": "fatal"}},
     "outcomes.json: search.error_class: Input should be 'terminal', 'retryable' or "
     "'replaceable'"),
    ({"search": {"success": "true"}}, "outcomes.json: search.success: Input should be a valid "
                                      "boolean"),
    ({"search": {"success": True, "latency_ms": -1}},
     "outcomes.json: search.latency_ms: Input should be greater than or equal to 0"),
    ({"search": {"success": False, "output": "x"}},
     "outcomes.json: search: output is only recorded on success"),
    ({"search": {"success": True, "output": {"x": [float("inf")]}}},
     "outcomes.json: search: output.x[0]: inf is not a JSON value"),
    ({"search": {"success": True, "output": "a\x00b"}},
     "outcomes.json: search: output: contains the NUL character (U+0000), which the "
     "ledger does not store"),
    ({"search": {"success": False, "error_reason": "\x00"}},
     "outcomes.json: search: error_reason: contains the NUL character (U+0000), which the "
     "ledger does not store"),
    ({"search": True}, "outcomes.json: search: expected an outcome object or a list of them"),
    ([{"success": True}], "outcomes.json: expected an object mapping tool names to outcomes"),
])
def test_scripted_errors_name_file_and_path(script: Any, line: str) -> None:
    """Each invalid outcome is a UsageError line naming the file and the path in it."""
    with pytest.raises(UsageError) as info:
        ScriptedOutcomes(script, source="outcomes.json")
    assert str(info.value) == line


def test_scripted_reports_every_error(tmp_path: Path) -> None:
    """All invalid outcomes of a file are reported, one line each, naming the file."""
    path = tmp_path / "outcomes.yaml"
    path.write_text("a: {}\nb: [{success: true}, {success: 1}]\nc: 3\n")
    with pytest.raises(UsageError) as info:
        ScriptedOutcomes.load(path)
    assert str(info.value).splitlines() == [
        f"{path}: a.success: Field required",
        f"{path}: b[1].success: Input should be a valid boolean",
        f"{path}: c: expected an outcome object or a list of them",
    ]


def test_scripted_file_errors(tmp_path: Path) -> None:
    """A missing file is an InputError; another extension a UsageError."""
    with pytest.raises(InputError):
        ScriptedOutcomes.load(tmp_path / "missing.json")
    (tmp_path / "outcomes.txt").write_text("{}")
    with pytest.raises(UsageError, match=r"expected a \.json, \.yaml or \.yml file"):
        ScriptedOutcomes.load(tmp_path / "outcomes.txt")


# -- live tools -------------------------------------------------------------------------------


class QuotaError(Exception):
    error_class = "terminal"


class OddError(Exception):
    error_class = "fatal"


RELEASE = threading.Event()


def _mutate(args: dict[str, Any]) -> str:
    args["q"] = "changed"
    return "ok"


def _raise(exc: Exception) -> Callable[[Any], Any]:
    def tool(args: Any) -> Any:
        raise exc
    return tool


REGISTRY: dict[str, Callable[[Any], Any]] = {
    "echo": lambda args: {"echo": args},
    "pair": lambda args: (1, 2),
    "mutate": _mutate,
    "boom": _raise(ValueError("boom")),
    "quota": _raise(QuotaError("quota exceeded")),
    "odd": _raise(OddError("odd")),
    "set": lambda args: {1, 2},
    "nan": lambda args: float("nan"),
    "nul": lambda args: {"text": "a\x00b"},
    "nul_raise": _raise(ValueError("bad \x00 byte")),
    "surrogate": lambda args: {"text": "a\ud800"},
    "surrogate_raise": _raise(ValueError("bad \udcff byte")),
    "hang": lambda args: RELEASE.wait(10),
}
NOT_A_MAPPING = ["echo"]
NOT_CALLABLE = {"echo": "echo"}


@pytest.fixture
def live() -> LiveTools:
    return LiveTools.load(f"{MODULE}:REGISTRY", timeout=5.0)


def test_live_return_value_is_the_output(live: LiveTools) -> None:
    """A tool's return value is a success with that output, and a measured latency."""
    outcome = live.lookup(call("echo", {"q": "x"}))
    assert outcome is not None and outcome.success and outcome.output == {"echo": {"q": "x"}}
    assert outcome.latency_ms is not None and outcome.latency_ms >= 0


def test_live_output_is_taken_as_json(live: LiveTools) -> None:
    """A tuple comes back as a JSON array."""
    outcome = live.lookup(call("pair"))
    assert outcome is not None and outcome.output == [1, 2]


def test_live_tool_gets_a_copy_of_the_args(live: LiveTools) -> None:
    """A tool that changes its args does not change the plan's."""
    c = call("mutate", {"q": "x"})
    live.lookup(c)
    assert c.args == {"q": "x"}


@pytest.mark.parametrize(("tool", "reason", "error_class"), [
    ("boom", "ValueError: boom", "retryable"),
    ("quota", "QuotaError: quota exceeded", "terminal"),
    ("odd", "OddError: odd", "retryable"),
])
def test_live_exception_is_a_failure(live: LiveTools, tool: str, reason: str,
                                     error_class: str) -> None:
    """An exception is a failure: its text, and its valid error_class else retryable."""
    outcome = live.lookup(call(tool))
    assert outcome is not None and not outcome.success
    assert (outcome.error_reason, outcome.error_class) == (reason, error_class)


@pytest.mark.parametrize(("tool", "says"), [
    ("set", "not JSON"), ("nan", "not JSON"),
    ("nul", "the ledger does not take: output.text: contains the NUL character"),
    ("surrogate", "the ledger does not take: output.text: string contains a lone surrogate"),
])
def test_live_non_json_output_is_a_failure(live: LiveTools, tool: str, says: str) -> None:
    """An output that is not JSON (a set, NaN), or that no event can hold (a NUL
    character), is a terminal failure saying so."""
    outcome = live.lookup(call(tool))
    assert outcome is not None and not outcome.success and outcome.error_class == "terminal"
    assert outcome.error_reason is not None and says in outcome.error_reason


def test_live_exception_text_is_kept_storable(live: LiveTools) -> None:
    """A NUL character in an exception's text is written as ``\\x00`` in the reason,
    a lone surrogate (no UTF-8 holds it) as ``\\udcff``."""
    outcome = live.lookup(call("nul_raise"))
    assert outcome is not None and outcome.error_reason == "ValueError: bad \\x00 byte"
    outcome = live.lookup(call("surrogate_raise"))
    assert outcome is not None and outcome.error_reason == "ValueError: bad \\udcff byte"


def test_live_timeout_is_a_retryable_failure() -> None:
    """A call still running after the timeout is a retryable 'timeout after Ns' failure."""
    live = LiveTools.load(f"{MODULE}:REGISTRY", timeout=0.05)
    try:
        outcome = live.lookup(call("hang"))
    finally:
        RELEASE.set()
    assert outcome is not None and not outcome.success
    assert (outcome.error_reason, outcome.error_class) == ("timeout after 0.05s", "retryable")


def test_live_unknown_tool_gets_no_answer(live: LiveTools) -> None:
    """A tool missing from the registry is not answered."""
    assert live.lookup(call("search")) is None


@pytest.mark.parametrize(("spec", "message"), [
    ("no_colon", "expected package.module:registry"),
    (":REGISTRY", "expected package.module:registry"),
    (f"{MODULE}:", "expected package.module:registry"),
    ("no_such_module_for_replay:TOOLS", "no module named 'no_such_module_for_replay'"),
    (f"{MODULE}:MISSING", f"module {MODULE} has no attribute 'MISSING'"),
    (f"{MODULE}:NOT_A_MAPPING", "expected a mapping of tool names to callables, got list"),
    (f"{MODULE}:NOT_CALLABLE", "not a tool name mapped to a callable: 'echo'"),
])
def test_live_bad_registry_is_a_usage_error(spec: str, message: str) -> None:
    """A registry that cannot be imported or is not a mapping of callables is a UsageError."""
    with pytest.raises(UsageError) as info:
        LiveTools.load(spec)
    assert message in str(info.value) and repr(spec) in str(info.value)


def test_live_module_failing_to_import_is_a_usage_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while importing the module is a UsageError naming it."""
    (tmp_path / "replay_broken_tools.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="importing replay_broken_tools failed: "
                                         "RuntimeError: no config"):
        LiveTools.load("replay_broken_tools:TOOLS")
    assert "replay_broken_tools" not in sys.modules


def test_live_timeout_must_be_positive() -> None:
    """A zero or negative timeout is a UsageError."""
    with pytest.raises(UsageError, match="timeout must be a positive"):
        LiveTools.load(f"{MODULE}:REGISTRY", timeout=0)


# -- chain ------------------------------------------------------------------------------------


class Stub:
    def __init__(self, name: str, answers: dict[str, Outcome]) -> None:
        self.name, self.answers, self.asked = name, answers, 0

    def lookup(self, c: Call) -> Outcome | None:
        self.asked += 1
        return self.answers.get(c.tool)


def test_chain_takes_the_first_answer_and_names_its_source() -> None:
    """Sources are asked in order; the first answer wins, its `source` set to that name."""
    first = Stub("source", {"search": Outcome(True, "from source", source="stale")})
    second = Stub("scripted", {"search": Outcome(True, "scripted"),
                               "fetch": Outcome(False, error_reason="404")})
    chain = OutcomeChain([first, second])
    assert chain.resolve(call()) == Outcome(True, "from source", source="source")
    assert second.asked == 0
    assert chain.resolve(call("fetch")) == Outcome(False, error_reason="404", source="scripted")
    assert chain.names == ["source", "scripted"]


def test_chain_without_an_answer_returns_none() -> None:
    """When no source answers, resolve gives None (the replay then needs an outcome)."""
    assert OutcomeChain([Stub("a", {}), Stub("b", {})]).resolve(call()) is None
    assert OutcomeChain([]).resolve(call()) is None


def test_chain_of_real_sources_names_each(live: LiveTools) -> None:
    """source, scripted and live answer in that order and are named so."""
    chain = OutcomeChain([SourceOutcomes.from_payloads(RECORDED),
                          ScriptedOutcomes({"search": [{"success": True, "output": "s"}]}),
                          live])
    answers = [chain.resolve(c) for c in (call(), call(step=9), call(step=9), call("echo"))]
    assert [a.source if a else None for a in answers] == ["source", "scripted", None, "live"]


def test_an_in_memory_store_backtests_in_this_process(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """Worker processes could not open an in-memory database: one process runs it all."""
    from clirun import write_demo

    import replay.backtest
    from replay import Policy, Replayer

    monkeypatch.setattr(replay.backtest, "CHUNK", 1)
    source = write_demo(tmp_path / "demo.jsonl")
    policy = Policy.from_obj({"retry": {"max_attempts": 3}})
    with Store.open("sqlite:///:memory:") as store:
        ingest(store, [str(source)], reject_file=str(tmp_path / "r.jsonl"))
        alone = Replayer(store).backtest("acme", policy)
        with Replayer(store) as replayer:
            shared = replayer.backtest("acme", policy, workers=2)
            assert replayer._workers is None
    assert shared == alone and alone.terminated_traces >= 3
