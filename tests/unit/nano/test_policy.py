"""FunctionPolicy documents: validation (file:line errors) and the compiled form."""

from __future__ import annotations

import pytest

from moray.errors import ValidationError
from moray.nano.policy import compile_text
from moray.nano.rules import FORMAT, Rules

FULL = """\
apiVersion: moray/v1
kind: FunctionPolicy
metadata: {name: orders}
spec:
  mode: monitor
  exec:
    allow: [/usr/bin/convert, "/opt/bin/*"]
  files:
    writable: ["/tmp/*", /mnt/efs/out.json]
    deny: [{path: /var/task/.env, access: read}, {prefix: /proc/, access: any}]
  network:
    egress:
      allow:
        - 10.0.0.0/8:443
        - "[2001:db8::/32]:443"
        - {cidr: 192.168.0.0/16, ports: "80-90", protocol: tcp}
        - {host: "*.amazonaws.com", ports: 443}
        - api.example.com:8443
        - localhost
      deny: [169.254.169.254/32]
"""


def test_full_document_compiles_and_loads():
    c = compile_text(FULL, "f.yaml")
    assert c["format"] == FORMAT and c["name"] == "orders" and c["mode"] == "monitor"
    assert c["exec_allow"] == ["/usr/bin/convert", "/opt/bin/*"]
    assert c["writable"] == ["/tmp/*", "/mnt/efs/out.json"]
    assert c["file_deny"] == [{"path": "/var/task/.env", "access": "read"},
                              {"path": "/proc/*", "access": "read,write"}]
    e = c["egress"]
    assert [n["cidr"] for n in e["allow"]] == ["10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16"]
    assert e["allow"][2]["ports"] == [80, 90] and e["allow"][2]["protocol"] == "tcp"
    assert [(h["host"], h["ports"]) for h in e["hosts"]] == [
        ("*.amazonaws.com", [443, 443]), ("api.example.com", [8443, 8443]),
        ("localhost", [0, 65535])]
    assert e["deny"][0]["cidr"] == "169.254.169.254/32"
    Rules.from_json(c)  # what the enforcer reads


def test_defaults_no_exec_writes_only_tmp_egress_open():
    c = compile_text("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: a}\n"
                     "spec: {}\n")
    assert c["mode"] == "enforce" and c["exec_allow"] == [] and c["writable"] == ["/tmp/*"]
    assert c["egress"] == {"allow": None, "hosts": [], "deny": []}


@pytest.mark.parametrize(("spec", "where", "says"), [
    ("spec: {scope: {host: true}}", "spec.scope", "not in a FunctionPolicy"),
    ("spec: {syscalls: {deny: [ptrace]}}", "spec.syscalls", "moray micro"),
    ("spec: {exec: {deny: [/bin/sh]}}", "spec.exec.deny", "unknown field"),
    ("spec: {mode: block}", "spec.mode", "enforce or monitor"),
    ("spec: {code: {ctypes: maybe}}", "spec.code.ctypes", "allow or deny"),
    ("spec: {code: {drift: deny}}", "spec.code.drift", "allow or block"),
    ("spec: {files: {writable: [tmp]}}", "spec.files.writable[0]", "absolute path"),
    ("spec: {network: {egress: {allow: ['not a host!']}}}", "spec.network.egress.allow[0]",
     "neither a CIDR"),
    ("spec: {network: {egress: {allow: [{host: a.b, ports: '9-1'}]}}}",
     "spec.network.egress.allow[0]", "bad port range"),
])
def test_errors_name_file_line_and_field(spec, where, says):
    text = f"apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {{name: a}}\n{spec}\n"
    with pytest.raises(ValidationError) as err:
        compile_text(text, "fn.yaml")
    problems = err.value.problems
    assert any(p.file == "fn.yaml" and p.line == 4 and p.field == where and says in p.message
               for p in problems), problems


def test_a_runtime_policy_is_not_a_function_policy():
    text = ("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: a}\n"
            "spec: {mode: enforce}\n")
    with pytest.raises(ValidationError, match="kind: must be 'FunctionPolicy'"):
        compile_text(text, "x.yaml")
