"""The replay policy: strict validation naming file and field, rules, keys and digest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import InputError, UsageError
from replay.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parent.parent

YAML_POLICY = """\
retry:
  max_attempts: 2
  per_tool: {search: 3}
  never_retry: [terminal, replaceable]
fallback:
  fetch_doc: [fetch_doc_mirror, fetch_doc_cache]
memory:
  write_on_success: true
  key: "{agent}/{tool}"
rules:
  - name: low_confidence_no_write
    when: {tool: search, confidence_lt: 0.5}
    then: {write_memory: false}
  - when: {success: false, error_class: retryable, attempt_gte: 2}
    then: {fallback: [search_cache]}
max_steps: 50
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def yaml_to_json(tmp_path: Path) -> str:
    import yaml

    return write(tmp_path / "policy.json", json.dumps(yaml.safe_load(YAML_POLICY)))


def usage_error(obj: Any) -> str:
    with pytest.raises(UsageError) as info:
        Policy.from_obj(obj, "policy.yaml")
    return str(info.value)


# -- loading ----------------------------------------------------------------------------------


def test_empty_policy_has_the_documented_defaults() -> None:
    """An empty policy: 1 attempt, never retry terminal, write "{tool}_result", 200 steps."""
    policy = Policy.from_obj({})
    assert policy.retry.max_attempts == 1 and policy.retry.per_tool == {}
    assert policy.retry.never_retry == ["terminal"]
    assert policy.fallback == {} and policy.rules == []
    assert policy.memory.write_on_success is True and policy.memory.key == "{tool}_result"
    assert policy.max_steps == 200


def test_yaml_and_json_files_load_to_the_same_policy(tmp_path: Path) -> None:
    """The same settings as YAML and as JSON give equal settings and equal digests."""
    from_yaml = load_policy(write(tmp_path / "policy.yaml", YAML_POLICY))
    from_json = load_policy(yaml_to_json(tmp_path))
    assert from_yaml.model_dump() == from_json.model_dump()
    assert from_yaml.digest() == from_json.digest()
    assert from_yaml.retry.per_tool == {"search": 3}
    assert from_yaml.rules[1].then.fallback == ["search_cache"]


def test_yml_extension_is_yaml(tmp_path: Path) -> None:
    """A .yml file is read as YAML."""
    assert load_policy(write(tmp_path / "p.yml", "max_steps: 7\n")).max_steps == 7


def test_text_is_the_file_text(tmp_path: Path) -> None:
    """`text` keeps the file exactly as written (comments too), for the replay link."""
    text = "# why: more retries\n" + YAML_POLICY
    assert load_policy(write(tmp_path / "policy.yaml", text)).text == text


def test_inline_policy_text_is_its_canonical_json() -> None:
    """An inline policy's text is the normalised policy as JSON, which re-loads equal."""
    policy = Policy.from_obj({"max_steps": 5})
    assert Policy.from_obj(json.loads(policy.text)) == policy


def test_docs_example_policy_is_valid(tmp_path: Path) -> None:
    """The YAML policy in docs/REPLAY.md loads."""
    doc = (ROOT / "docs" / "REPLAY.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert block is not None
    policy = load_policy(write(tmp_path / "policy.yaml", block.group(1)))
    assert policy.fallback == {"fetch_doc": ["fetch_doc_mirror"]}
    assert policy.rules[0].name == "low_confidence_no_write"


def test_other_extension_is_a_usage_error(tmp_path: Path) -> None:
    """Only .json, .yaml and .yml are policies."""
    with pytest.raises(UsageError, match=r"policy\.toml: expected a \.json, \.yaml or \.yml"):
        load_policy(write(tmp_path / "policy.toml", "max_steps = 3"))


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    """A file that cannot be read is an InputError naming it."""
    with pytest.raises(InputError, match=r"nope\.yaml: cannot read"):
        load_policy(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("policy.json", '{"max_steps": ', "policy.json: not valid JSON"),
    ("policy.yaml", "retry: [unclosed", "policy.yaml: not valid YAML"),
    ("policy.json", '{"max_steps": 1, "max_steps": 2}', "key 'max_steps' given twice"),
    ("policy.yaml", "max_steps: 1\nmax_steps: 2\n", "key 'max_steps' given twice"),
    ("policy.yaml", "", "policy.yaml: expected an object of policy settings, got NoneType"),
    ("policy.json", "[1]", "policy.json: expected an object of policy settings, got list"),
])
def test_malformed_documents_are_usage_errors(tmp_path: Path, name: str, text: str,
                                              expected: str) -> None:
    """Bad syntax, a key given twice or a non-object document is a UsageError naming the file."""
    with pytest.raises(UsageError) as info:
        load_policy(write(tmp_path / name, text))
    assert expected in str(info.value)


# -- validation: every field ------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "line"), [
    ({"retry": {"max_attempts": 0}},
     "policy.yaml: retry.max_attempts: Input should be greater than or equal to 1"),
    ({"retry": {"max_attempts": "3"}},
     "policy.yaml: retry.max_attempts: Input should be a valid integer"),
    ({"retry": {"max_attempts": True}},
     "policy.yaml: retry.max_attempts: Input should be a valid integer"),
    ({"retry": {"per_tool": {"search": 0}}},
     "policy.yaml: retry.per_tool.search: Input should be greater than or equal to 1"),
    ({"retry": {"never_retry": ["fatal"]}},
     "policy.yaml: retry.never_retry[0]: Input should be 'terminal', 'retryable' or "
     "'replaceable'"),
    ({"retry": {"tries": 2}}, "policy.yaml: retry.tries: Extra inputs are not permitted"),
    ({"fallback": {"fetch_doc": "fetch_doc_mirror"}},
     "policy.yaml: fallback.fetch_doc: Input should be a valid list"),
    ({"fallback": {"fetch_doc": [1]}},
     "policy.yaml: fallback.fetch_doc[0]: Input should be a valid string"),
    ({"memory": {"write_on_success": "no"}},
     "policy.yaml: memory.write_on_success: Input should be a valid boolean"),
    ({"memory": {"key": ""}},
     "policy.yaml: memory.key: String should have at least 1 character"),
    ({"memory": {"scope": "x"}}, "policy.yaml: memory.scope: Extra inputs are not permitted"),
    ({"rules": [{"when": {"confidence_lt": 2}, "then": {"retry": True}}]},
     "policy.yaml: rules[0].when.confidence_lt: Input should be less than or equal to 1"),
    ({"rules": [{"when": {"confidence_gte": -0.1}, "then": {"retry": True}}]},
     "policy.yaml: rules[0].when.confidence_gte: Input should be greater than or equal to 0"),
    ({"rules": [{"when": {"attempt_gte": 0}, "then": {"retry": True}}]},
     "policy.yaml: rules[0].when.attempt_gte: Input should be greater than or equal to 1"),
    ({"rules": [{"when": {"error_class": "fatal"}, "then": {"retry": True}}]},
     "policy.yaml: rules[0].when.error_class: Input should be 'terminal', 'retryable' or "
     "'replaceable'"),
    ({"rules": [{"when": {"success": "yes"}, "then": {"retry": True}}]},
     "policy.yaml: rules[0].when.success: Input should be a valid boolean"),
    ({"rules": [{"when": {"tool_name": "x"}, "then": {"retry": True}}]},
     "policy.yaml: rules[0].when.tool_name: Extra inputs are not permitted"),
    ({"rules": [{"when": {}, "then": {}}]},
     "policy.yaml: rules[0].then: must set at least one of write_memory, retry, fallback, "
     "terminate"),
    ({"rules": [{"when": {}, "then": {"fallback": "mirror"}}]},
     "policy.yaml: rules[0].then.fallback: must be true, false or a list of tool names"),
    ({"rules": [{"when": {}, "then": {"retry": True, "terminate": True}}]},
     "policy.yaml: rules[0].then: choose at most one of retry, fallback, terminate "
     "(got retry, terminate)"),
    ({"rules": [{"when": {}, "then": {"skip": True}}]},
     "policy.yaml: rules[0].then.skip: Extra inputs are not permitted"),
    ({"rules": [{"then": {"retry": True}}]}, "policy.yaml: rules[0].when: Field required"),
    ({"rules": [{"when": {}, "then": {"retry": True}, "priority": 1}]},
     "policy.yaml: rules[0].priority: Extra inputs are not permitted"),
    ({"rules": {"a": 1}}, "policy.yaml: rules: Input should be a valid list"),
    ({"max_steps": 0}, "policy.yaml: max_steps: Input should be greater than or equal to 1"),
    ({"steps": 3}, "policy.yaml: steps: Extra inputs are not permitted"),
])
def test_invalid_field_is_named_in_the_error(obj: dict[str, Any], line: str) -> None:
    """Each invalid or unknown field is a UsageError line `file: field.path: message`."""
    assert usage_error(obj) == line


def test_each_error_is_its_own_line() -> None:
    """Several errors give one line each, all naming the file."""
    lines = usage_error({"max_steps": 0, "retry": {"max_attempts": 0}, "x": 1}).splitlines()
    assert len(lines) == 3 and all(line.startswith("policy.yaml: ") for line in lines)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    """A validation error from a file names that file."""
    path = write(tmp_path / "policy.yaml", "retry:\n  max_attempts: 0\n")
    with pytest.raises(UsageError) as info:
        load_policy(path)
    assert str(info.value) == (
        f"{path}: retry.max_attempts: Input should be greater than or equal to 1")


@pytest.mark.parametrize("key", ["{tool}_result", "{agent}/{action_tool}/{tool}", "fixed",
                                 "{{literal}}_{tool}"])
def test_memory_key_templates_with_known_placeholders_are_valid(key: str) -> None:
    """{tool}, {action_tool}, {agent} and escaped braces are accepted."""
    assert Policy.from_obj({"memory": {"key": key}}).memory.key == key


@pytest.mark.parametrize(("key", "reason"), [
    ("{tool}_{result}", "unknown placeholder {result}"),
    ("{}", "unknown placeholder {}"),
    ("{0}", "unknown placeholder {0}"),
    ("{tool.name}", "unknown placeholder {tool.name}"),
    ("{tool:>10}", "unknown placeholder {tool:>10}"),
    ("{tool!r}", "unknown placeholder {tool!r}"),
    ("{tool", "not a valid template"),
    ("tool}", "not a valid template"),
])
def test_bad_memory_key_template_is_named(key: str, reason: str) -> None:
    """A key template with another placeholder, a format spec or bad braces is an error."""
    message = usage_error({"memory": {"key": key}})
    assert message.startswith("policy.yaml: memory.key: " + reason)


# -- behaviour --------------------------------------------------------------------------------


def test_max_attempts_uses_the_tool_override() -> None:
    """per_tool overrides max_attempts for that tool only."""
    policy = Policy.from_obj({"retry": {"max_attempts": 2, "per_tool": {"search": 5}}})
    assert policy.max_attempts("search") == 5
    assert policy.max_attempts("fetch_doc") == 2


def test_memory_key_fills_the_template() -> None:
    """memory_key fills {tool}, {action_tool} and {agent}."""
    policy = Policy.from_obj({"memory": {"key": "{agent}:{action_tool}->{tool}"}})
    assert policy.memory_key("search_cache", "search", "agent-a") == (
        "agent-a:search->search_cache")
    assert Policy.from_obj({}).memory_key("search", "search", "a") == "search_result"


RULES = Policy.from_obj({"rules": [
    {"name": "low", "when": {"tool": "search", "confidence_lt": 0.5},
     "then": {"write_memory": False}},
    {"name": "high", "when": {"confidence_gte": 0.9}, "then": {"write_memory": True}},
    {"name": "late", "when": {"success": False, "attempt_gte": 3}, "then": {"terminate": True}},
    {"name": "mirror", "when": {"action_tool": "fetch_doc", "agent": "agent-b",
                                "error_class": "replaceable"},
     "then": {"fallback": ["fetch_doc_mirror"]}},
]})


@pytest.mark.parametrize(("ctx", "expected"), [
    ({"tool": "search", "confidence": 0.3}, "low"),
    ({"tool": "search", "confidence": 0.5}, None),
    ({"tool": "search", "confidence": None}, None),
    ({"tool": "search"}, None),
    ({"tool": "fetch", "confidence": 0.3}, None),
    ({"tool": "search", "confidence": 0.95}, "high"),
    ({"tool": "x", "confidence": 0.9}, "high"),
    ({"tool": "x", "success": False, "attempt": 3}, "late"),
    ({"tool": "x", "success": False, "attempt": 2}, None),
    ({"tool": "x", "success": True, "attempt": 5}, None),
    ({"tool": "x", "success": False, "attempt": None}, None),
    ({"tool": "m", "action_tool": "fetch_doc", "agent": "agent-b",
      "error_class": "replaceable"}, "mirror"),
    ({"tool": "m", "action_tool": "fetch_doc", "agent": "agent-a",
      "error_class": "replaceable"}, None),
    ({"tool": "m", "action_tool": "fetch_doc", "agent": "agent-b",
      "error_class": "retryable"}, None),
])
def test_matching_rule_needs_every_set_condition(ctx: dict[str, Any],
                                                 expected: str | None) -> None:
    """A rule matches when all its set conditions hold; a None confidence satisfies no bound."""
    rule = RULES.matching_rule(ctx)
    assert (rule.name if rule else None) == expected


def test_first_matching_rule_wins() -> None:
    """Rules are tried in order; an empty `when` matches every context."""
    policy = Policy.from_obj({"rules": [
        {"name": "a", "when": {"tool": "search"}, "then": {"retry": True}},
        {"name": "b", "when": {}, "then": {"terminate": True}},
    ]})
    rule_a, rule_b = policy.matching_rule({"tool": "search"}), policy.matching_rule({"tool": "x"})
    assert rule_a is not None and rule_a.name == "a"
    assert rule_b is not None and rule_b.name == "b"
    assert Policy.from_obj({}).matching_rule({"tool": "search"}) is None


def test_digest_is_of_the_normalised_policy() -> None:
    """Defaults written out or left implicit, and key order, do not change the digest."""
    implicit = Policy.from_obj({"max_steps": 200})
    explicit = Policy.from_obj({"max_steps": 200, "retry": {
        "never_retry": ["terminal"], "max_attempts": 1}, "memory": {"key": "{tool}_result"}})
    assert implicit.digest() == explicit.digest() == Policy.from_obj({}).digest()
    assert implicit.digest().startswith("sha256:") and len(implicit.digest()) == 71


def test_digest_changes_with_any_setting() -> None:
    """Different settings give different digests."""
    digests = {Policy.from_obj(obj).digest() for obj in (
        {}, {"max_steps": 199}, {"retry": {"max_attempts": 2}},
        {"fallback": {"a": ["b"]}}, {"memory": {"write_on_success": False}},
        {"rules": [{"when": {}, "then": {"retry": True}}]})}
    assert len(digests) == 6


def test_policy_is_frozen() -> None:
    """A loaded policy cannot be changed in place."""
    policy = Policy.from_obj({})
    with pytest.raises(Exception, match="frozen"):
        policy.max_steps = 3
