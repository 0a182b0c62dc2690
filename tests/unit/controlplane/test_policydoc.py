"""The server validates policies with the agent's loader (api/policy/load.py) plus its
own agent selector, ``spec.scope.agents``."""

from __future__ import annotations

import pytest

from moray.api.policy.load import load_text
from moray.controlplane.server.policydoc import (
    PolicyError,
    agent_document,
    parse_policies,
    parse_policy,
    selects_host,
)

GOOD = """\
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: web-lockdown, tenant: default}
spec:
  scope:
    agents: {labels: {zone: a}}
    containers: {images: ["registry.local/web:*"], labels: {app: web}}
  mode: enforce
  exec:    {deny: [/bin/sh, /usr/bin/nc], drift: block}
  files:   {deny: [{path: /etc/shadow, access: read}], monitor: [{prefix: /etc/, access: write}]}
  network: {egress: {deny: ["0.0.0.0/0:3333", "169.254.169.254/32"]}}
  syscalls: {deny: [ptrace, mount, bpf, init_module, unshare]}
"""


def test_design_example_parses_and_agents_get_it_without_the_selector() -> None:
    parsed = parse_policy(GOOD, "web.yaml")
    assert (parsed.name, parsed.tenant) == ("web-lockdown", "default")
    assert parsed.document["spec"]["scope"]["agents"] == {"labels": {"zone": "a"}}
    wire = agent_document(parsed.document)
    assert "agents" not in wire["spec"]["scope"]
    assert "agents" in parsed.document["spec"]["scope"]      # the stored one is untouched
    (policy,) = load_text(__import__("json").dumps(wire), "wire.json")  # the agent takes it
    assert policy.name == "web-lockdown"


def test_several_documents_and_json() -> None:
    two = GOOD + "---\n" + GOOD.replace("web-lockdown", "second")
    assert [p.name for p in parse_policies(two, "two.yaml")] == ["web-lockdown", "second"]
    text = ('{"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "j"},'
            ' "spec": {"scope": {"host": true}, "exec": {"deny": ["/bin/sh"]}}}')
    assert parse_policy(text, "j.json").tenant == "default"
    with pytest.raises(PolicyError, match="expected one policy document"):
        parse_policy(two, "two.yaml")


@pytest.mark.parametrize(("old", "new", "line", "field"), [
    ("mode: enforce", "mode: block", 8, "spec.mode"),
    ("/usr/bin/nc]", "nc]", 9, "spec.exec.deny[1]"),
    ("access: read}", "access: reed}", 10, "spec.files.deny[0].access"),
    ("  mode: enforce", "  mood: enforce", 8, "spec.mood"),
    ("{name: web-lockdown,", "{name: Web_Lockdown!,", 3, "metadata.name"),
    ("labels: {zone: a}", "labels: {zone: 1}", 6, "spec.scope.agents.labels.zone"),
    ("agents: {labels:", "agents: {label:", 6, "spec.scope.agents.label"),
    ("kind: RuntimePolicy", "kind: Policy", 2, "kind"),
])
def test_errors_name_file_line_and_field(old: str, new: str, line: int, field: str) -> None:
    assert old in GOOD
    with pytest.raises(PolicyError) as err:
        parse_policy(GOOD.replace(old, new, 1), "web.yaml")
    assert (err.value.file, err.value.line, err.value.field) == ("web.yaml", line, field)
    assert str(err.value).startswith(f"web.yaml:{line}: {field}: ")
    assert err.value.as_dict()["problems"][0]["field"] == field


def test_every_problem_is_listed() -> None:
    bad = GOOD.replace("mode: enforce", "mode: x").replace("zone: a", "zone: [a]")
    with pytest.raises(PolicyError) as err:
        parse_policy(bad, "web.yaml")
    assert [p["field"] for p in err.value.problems] == ["spec.scope.agents.labels.zone",
                                                       "spec.mode"]


def test_syntax_errors_and_missing_fields() -> None:
    with pytest.raises(PolicyError, match=r"^a.yaml:3: "):
        parse_policy("spec:\n  - [\n", "a.yaml")
    with pytest.raises(PolicyError, match="spec"):
        parse_policy("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: x}\n", "b")


def test_agent_selector_by_host_labels() -> None:
    doc = parse_policy(GOOD).document
    assert selects_host(doc, {"zone": "a", "os": "linux"})
    assert not selects_host(doc, {"zone": "b"})
    assert not selects_host(doc, {})
    everyone = parse_policy(GOOD.replace("    agents: {labels: {zone: a}}\n", "")).document
    assert selects_host(everyone, {})
