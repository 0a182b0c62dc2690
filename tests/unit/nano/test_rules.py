"""The decisions on a compiled policy (pure)."""

from __future__ import annotations

from moray.nano.policy import compile_text
from moray.nano.rules import Rules

POLICY = """\
apiVersion: moray/v1
kind: FunctionPolicy
metadata: {name: fn}
spec:
  exec: {allow: [/usr/bin/true, "/opt/tools/*"]}
  files:
    deny: [{path: /etc/shadow, access: read}, {prefix: /tmp/locked/, access: write}]
  network:
    egress:
      allow: ["10.1.0.0/16:443", {cidr: 10.2.0.0/16, protocol: udp},
              {host: "*.amazonaws.com", ports: 443}, api.example.com]
      deny: [10.1.2.0/24]
"""


def rules(text: str = POLICY) -> Rules:
    return Rules.from_json(compile_text(text))


def test_exec_only_listed_programs():
    r = rules()
    assert r.exec("/usr/bin/true") is None and r.exec("/opt/tools/x/y") is None
    d = r.exec("/usr/bin/curl")
    assert d is not None and d.kind == "exec" and d.rule == "exec.allow"
    none = rules("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: a}\nspec: {}\n")
    assert none.exec("/usr/bin/true").reason == "running programs is not allowed"


def test_writes_only_under_tmp_and_not_where_denied():
    r = rules()
    assert r.write("/tmp/a") is None and r.write("/tmp/sub/b") is None
    for p in ("/var/task/app.py", "/tmp", "/tmpfoo", "/etc/passwd"):
        d = r.write(p)
        assert d is not None and d.rule == "files.writable", p
    assert r.write("/tmp/locked/x").rule == "files.deny /tmp/locked/*"


def test_reads_denied_only_for_listed_files():
    r = rules()
    assert r.read("/etc/shadow").rule == "files.deny /etc/shadow"
    assert r.read("/etc/passwd") is None and r.read("/tmp/locked/x") is None


def test_egress_cidr_ports_protocol_and_deny_first():
    r = rules()
    assert r.connect("10.1.9.9", 443, 6) is None
    assert r.connect("10.1.9.9", 80, 6).rule == "network.egress.allow"
    assert r.connect("10.1.2.3", 443, 6).rule == "network.egress.deny 10.1.2.0/24"
    assert r.connect("10.2.0.1", 53, 17) is None
    assert r.connect("10.2.0.1", 53, 6) is not None  # udp only
    assert r.connect("8.8.8.8", 443, 6) is not None


def test_egress_by_name_resolved_or_given_to_connect():
    r = rules()
    assert r.resolve("s3.eu-west-1.amazonaws.com", 443) is None
    assert r.resolve("amazonaws.com", 443) is not None  # *.x is under x, not x itself
    assert r.resolve("s3.amazonaws.com", 80) is not None
    assert r.resolve("evil.example.org", None).target == "evil.example.org"
    assert r.resolve("API.Example.COM.", 1234) is None  # case, trailing dot
    assert r.resolve("1.2.3.4", 1) is None  # literals are judged at connect
    # an address is allowed through the name it was resolved from, on that name's ports
    assert r.connect("52.1.2.3", 443, 6, ("s3.amazonaws.com",)) is None
    assert r.connect("52.1.2.3", 22, 6, ("s3.amazonaws.com",)) is not None
    assert r.connect("52.1.2.3", 443, 6) is not None
    # a socket given a name resolves it itself
    assert r.connect("api.example.com", 8080, 6) is None


def test_unrestricted_egress_still_applies_deny():
    r = rules("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: a}\n"
              "spec: {network: {egress: {deny: [169.254.169.254/32]}}}\n")
    assert r.connect("1.1.1.1", 443, 6) is None and r.resolve("anything.org", 1) is None
    assert r.connect("169.254.169.254", 80, 6) is not None


def test_runtime_api_is_always_allowed():
    r = rules().allowing("127.0.0.1", 9001)
    assert r.connect("127.0.0.1", 9001, 6) is None
    assert r.connect("127.0.0.1", 9002, 6) is not None
    named = rules().allowing("runtime.local", 9001)
    assert named.resolve("runtime.local", 9001) is None


def test_an_ipv4_mapped_address_is_its_ipv4_address():
    r = rules("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: a}\n"
              "spec: {network: {egress: {deny: [169.254.169.254/32]}}}\n")
    assert r.connect("::ffff:169.254.169.254", 80, 6) is not None
    assert rules().connect("::ffff:10.1.9.9", 443, 6) is None
