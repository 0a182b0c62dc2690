from __future__ import annotations

import pytest

from controlplane.server.policydoc import PolicyError, parse_policy, selects_host

GOOD = """\
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: web-lockdown, tenant: default}
spec:
  scope:
    {containers: {images: ["registry.local/web:*"], labels: {app: web}}, hosts: {labels: {zone: a}}}
  mode: enforce
  exec:    {deny: [/bin/sh, /usr/bin/nc], drift: block}
  files:   {deny: [{path: /etc/shadow, access: read}], monitor: [{prefix: /etc/, access: write}]}
  network: {egress: {deny: ["0.0.0.0/0:3333", "169.254.169.254/32", "::1/128"]}}
  syscalls: {deny: [ptrace, mount, bpf, init_module, unshare]}
"""


def test_design_example_parses() -> None:
    parsed = parse_policy(GOOD, "web.yaml")
    assert (parsed.name, parsed.tenant) == ("web-lockdown", "default")
    assert parsed.document["spec"]["exec"]["drift"] == "block"


def test_json_is_accepted() -> None:
    text = ('{"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "j"},'
            ' "spec": {}}')
    assert parse_policy(text, "j.json").tenant == "default"


@pytest.mark.parametrize(("old", "new", "line", "field"), [
    ("mode: enforce", "mode: block", 7, "spec.mode"),
    ("drift: block", "drift: yes", 8, "spec.exec.drift"),
    ("/usr/bin/nc]", "nc]", 8, "spec.exec.deny[1]"),
    ("access: read}", "access: reed}", 9, "spec.files.deny[0].access"),
    ('"169.254.169.254/32"', '"999.1.1.1"', 10, "spec.network.egress.deny[1]"),
    ("ptrace,", "'ptrace()',", 11, "spec.syscalls.deny[0]"),
    ("  mode: enforce", "  mood: enforce", 7, "spec.mood"),
    ("{name: web-lockdown,", "{name: Web_Lockdown!,", 3, "metadata.name"),
    ("labels: {zone: a}", "labels: {zone: 1}", 6, "spec.scope.hosts.labels.zone"),
    ("kind: RuntimePolicy", "kind: Policy", 2, "kind"),
])
def test_errors_name_file_line_and_field(old: str, new: str, line: int, field: str) -> None:
    assert old in GOOD
    with pytest.raises(PolicyError) as err:
        parse_policy(GOOD.replace(old, new, 1), "web.yaml")
    assert (err.value.file, err.value.line, err.value.field) == ("web.yaml", line, field)
    assert str(err.value).startswith(f"web.yaml:{line}: {field}: ")


def test_syntax_errors_and_missing_fields() -> None:
    with pytest.raises(PolicyError, match=r"^a.yaml:3: not valid YAML"):
        parse_policy("spec:\n  - [\n", "a.yaml")
    with pytest.raises(PolicyError, match="missing required field 'spec'"):
        parse_policy("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: x}\n", "b")
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy("- 1\n", "c")
    with pytest.raises(PolicyError, match="exactly one of 'path' or 'prefix'"):
        parse_policy(GOOD.replace("{path: /etc/shadow, access: read}", "{access: read}"), "d")


def test_scope_selects_by_host_labels() -> None:
    doc = parse_policy(GOOD).document
    assert selects_host(doc, {"zone": "a", "os": "linux"})
    assert not selects_host(doc, {"zone": "b"})
    assert not selects_host(doc, {})
    unscoped = parse_policy(GOOD.replace(", hosts: {labels: {zone: a}}", "")).document
    assert selects_host(unscoped, {})
