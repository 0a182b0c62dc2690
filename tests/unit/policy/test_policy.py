"""Policy loading (file:line errors), compiling (golden rows, LPM cover merge) and the
gapless publisher (fake maps record every write). No privileges."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moray.agent.policy.apply import MAP_NAMES, Applier, dec_conf, dec_exec, enc_path_key, u32
from moray.agent.policy.compile import ExecVal, PathKey, compile_policies
from moray.agent.policy.scope import slots_for
from moray.api.policy.load import PolicyError, load_text

GOLDEN = Path(__file__).parent / "golden"

WEB = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: web-lockdown}
spec:
  scope: {containers: {images: ["registry.local/web:*"], labels: {app: web}}}
  mode: enforce
  exec: {deny: [/bin/sh, "/usr/bin/*"], drift: block}
  files:
    deny: [{path: /etc/shadow, access: read}]
    monitor: [{prefix: /etc/, access: write}]
  network: {egress: {deny: ["0.0.0.0/0:3333", "169.254.169.254/32",
                            {cidr: "10.0.0.0/8", ports: "1-1024", protocol: tcp}]}}
  syscalls: {deny: [ptrace, mount, bpf, init_module, unshare]}
"""

HOST = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: host-watch}
spec:
  scope: {host: true, containers: {}}
  mode: monitor
  exec: {deny: [/usr/bin/nc]}
  network: {egress: {deny: ["10.1.0.0/16"]}}
"""


def test_golden_rows() -> None:
    pols = load_text(WEB, "web.yaml") + load_text(HOST, "host.yaml")
    got = compile_policies([(0, pols[0]), (5, pols[1])]).to_json()
    path = GOLDEN / "web_host.json"
    if os.environ.get("MORAY_UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_lpm_rows_carry_covering_prefixes() -> None:
    pols = load_text(WEB, "web.yaml") + load_text(HOST, "host.yaml")
    c = compile_policies([(0, pols[0]), (5, pols[1])])
    # /usr/bin/nc (exact, slot 5) also gets the /usr/bin/* prefix bit of slot 0
    assert c.exec[PathKey(b"/usr/bin/nc", True)] == ExecVal(deny=0b100001)
    # 10.1.0.0/16 (slot 5) is inside 10.0.0.0/8:1-1024/tcp (slot 0) and 0.0.0.0/0:3333
    rules = {(e.port_lo, e.port_hi, e.proto): e.deny for e in c.net[
        next(k for k in c.net if str(k) == "10.1.0.0/16")]}
    assert rules == {(0, 65535, 0): 1 << 5, (1, 1024, 6): 1, (3333, 3333, 0): 1}


@pytest.mark.parametrize(("text", "where"), [
    (WEB.replace("mode: enforce", "mode: enforcing"), "web.yaml:6: spec.mode"),
    (WEB.replace("ptrace,", "ptrac,"), "web.yaml:13: spec.syscalls.deny[0]"),
    (WEB.replace("/bin/sh", "bin/sh"), "web.yaml:7: spec.exec.deny[0]"),
    (WEB.replace('"169.254.169.254/32"', '"169.254.300.1/32"'),
     "web.yaml:11: spec.network.egress.deny[1]"),
    (WEB.replace("exec:", "exe:"), "web.yaml:7: spec.exe"),
    (WEB.replace("/usr/bin/*", "/usr/*/nc"), "web.yaml:7: spec.exec.deny[1]"),
])
def test_errors_name_file_line_field(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_text(text, "web.yaml")
    assert where in str(err.value), str(err.value)


def test_scope_matching() -> None:
    @dataclass
    class C:
        id: str = "abc"
        name: str | None = "web-1"
        runtime: str = "docker"
        image: str | None = "registry.local/web:2"
        image_digest: str | None = None
        pod_namespace: str | None = None
        labels: dict[str, str] = field(default_factory=lambda: {"app": "web"})

    pols = load_text(WEB, "w") + load_text(HOST, "h")
    slotted = [(0, pols[0]), (5, pols[1])]
    assert slots_for(C(), slotted) == 0b100001
    assert slots_for(C(labels={"app": "db"}), slotted) == 1 << 5
    assert slots_for(None, slotted) == 1 << 5


class FakeMap:
    def __init__(self, log: list[tuple[str, str, bytes]], name: str) -> None:
        self.d: dict[bytes, bytes] = {}
        self.log = log
        self.name = name

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self.log.append((self.name, "update", key))
        self.d[key] = value

    def lookup(self, key: bytes) -> bytes | None:
        return self.d.get(key)

    def delete(self, key: bytes) -> bool:
        self.log.append((self.name, "delete", key))
        return self.d.pop(key, None) is not None

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.d))


def test_publish_is_one_final_write_and_leaves_nothing_stale() -> None:
    log: list[tuple[str, str, bytes]] = []
    maps = {n: FakeMap(log, n) for n in MAP_NAMES}
    ap = Applier(maps, grace=0)  # type: ignore[arg-type]
    v1 = load_text(WEB, "w")[0]
    ap.publish(compile_policies([(0, v1)]), {42: 1})
    v2 = load_text(WEB.replace("/bin/sh", "/bin/bash"), "w")[0]
    log.clear()
    ap.publish(compile_policies([(1, v2)]), {42: 2})
    flip = log.index(("mr_pgen", "update", u32(0)))
    before, after = log[:flip], log[flip + 1:]
    # nothing deleted before the flip; the old /bin/sh row survives until then
    assert not any(op == "delete" for _m, op, _k in before)
    assert ("mr_pexec", "delete", enc_path_key(PathKey(b"/bin/sh", True))) in after
    conf, _gen = dec_conf(maps["mr_pconf"].d[u32(maps["mr_pgen"].d[u32(0)][0])])
    assert conf.active == 2
    # no row carries the old slot's bit any more
    for v in maps["mr_pexec"].d.values():
        assert dec_exec(v).deny & 1 == 0
    assert maps["mr_pscope"].d[(42).to_bytes(8, "little")] == (2).to_bytes(8, "little")


def test_syscall_program_attached_before_its_rules_go_live_detached_after() -> None:
    """mr_enf_sys runs on every syscall of the host, so it is attached only while a live
    policy has a syscall rule: switched on before the flip that makes such rules live (no
    gap), off after the flip that removes the last one."""
    log: list[tuple[str, str, bytes]] = []
    maps = {n: FakeMap(log, n) for n in MAP_NAMES}
    ap = Applier(maps, grace=0,  # type: ignore[arg-type]
                 syscall_hook=lambda on: log.append(("hook", "on" if on else "off", b"")))
    ap.publish(compile_policies([(0, load_text(HOST, "h")[0])]), {})  # no syscall rule
    assert ("hook", "on", b"") not in log and log[-1] == ("hook", "off", b"")
    log.clear()
    ap.publish(compile_policies([(1, load_text(WEB, "w")[0])]), {})
    flip = log.index(("mr_pgen", "update", u32(0)))
    assert log.index(("hook", "on", b"")) < flip and ("hook", "off", b"") not in log
    log.clear()
    ap.publish(compile_policies([(0, load_text(HOST, "h")[0])]), {})
    flip = log.index(("mr_pgen", "update", u32(0)))
    assert log.index(("hook", "off", b"")) > flip and ("hook", "on", b"") not in log


@pytest.mark.parametrize(("path", "suggests"), [
    ("/proc/self/mem", "/proc/<pid>/"),
    ("/proc/thread-self/environ", "/proc/<pid>/"),
    ("/proc/self/*", "/proc/<pid>/"),
    ("/dev/fd/3", "name that file"),
    ("/dev/stdin", "name that file"),
    ("/etc/../etc/shadow", "'/etc/shadow'"),
    ("/etc//shadow", "'/etc/shadow'"),
    ("/etc/./ssh/*", "'/etc/ssh/*'"),
])
def test_lint_refuses_rules_that_can_never_match(path: str, suggests: str) -> None:
    """The kernel compares resolved paths: a rule spelled another way never fires, so lint
    refuses it, naming file, line and field and the form that would match."""
    text = WEB.replace("/bin/sh", path)
    with pytest.raises(PolicyError) as err:
        load_text(text, "web.yaml")
    msg = str(err.value)
    assert "web.yaml:7: spec.exec.deny[0]" in msg and "never matches" in msg, msg
    assert suggests in msg, msg


@pytest.mark.parametrize("path", ["/proc/selinux*", "/proc/sys/kernel/*", "/dev/fdx",
                                  "/usr/bin/", "/opt/app*"])
def test_lint_keeps_rules_that_can_match(path: str) -> None:
    load_text(WEB.replace("/bin/sh", path.rstrip("/") + ("/*" if path.endswith("/") else "")),
              "web.yaml")
