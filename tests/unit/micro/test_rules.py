"""Policy -> MicroEnforcer plan and decisions (moray/micro/rules.py), pure."""

from __future__ import annotations

import ipaddress

from moray.api.policy.load import load_text
from moray.api.policy.syscalls import X86_64
from moray.micro import rules
from moray.micro.rules import Action, Branch, Check, Op

SUP = 4242

DOC = """
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: lock}
spec:
  scope: {host: true}
  exec: {deny: [/bin/nc, "/usr/sbin/*"], drift: block}
  files: {deny: [{path: /etc/shadow, access: read}, {prefix: /etc/ssl/private/, access: any}],
          monitor: [{prefix: /etc/, access: write}]}
  network: {egress: {deny: ["169.254.169.254/32", "0.0.0.0/0:3333"]}}
  syscalls: {deny: [ptrace, mount, kill]}
---
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: watch}
spec:
  scope: {containers: {}}
  mode: monitor
  exec: {allow: [/app/*, /bin/*]}
  syscalls: {deny: [unshare]}
  namespaces: {deny: [user]}
  network: {egress: {allow: ["10.0.0.0/8"]}}
"""


def _pols() -> list:
    return load_text(DOC, "t.yaml")


def test_plan_golden() -> None:
    p = rules.plan(_pols(), SUP)
    table = {r.name: (r.default, r.branches) for r in p.rules}
    for name in ("execve", "execveat", "open", "openat", "openat2", "creat", "connect",
                 "sendmsg", "sendmmsg"):
        assert table[name] == (Action.NOTIFY, ()), name
    assert table["sendto"] == (Action.ALLOW, (Branch((Check(4, Op.NONZERO),), Action.NOTIFY),))
    assert table["mmap"] == (Action.ALLOW, (Branch(
        (Check(2, Op.SET, 4), Check(4, Op.NOT_EQ32, 0xFFFFFFFF)), Action.NOTIFY),))
    # syscall rules of an enforcing policy: refused by the filter itself
    assert table["ptrace"] == (Action.ERRNO_EPERM, ())
    assert table["mount"] == (Action.ERRNO_EPERM, ())
    assert table["kill"] == (Action.ERRNO_EPERM, ())   # the rule wins over the guard
    # a monitor-mode syscall rule is notified (would-block event), not refused
    assert table["unshare"] == (Action.NOTIFY, ())
    assert table["io_uring_setup"] == (Action.ERRNO_EPERM, ())
    # the supervisor guard
    assert table["tgkill"] == (Action.ALLOW, (Branch((Check(0, Op.EQ32, SUP),), Action.NOTIFY),))
    assert table["pidfd_open"][1][0].checks == (Check(0, Op.EQ32, SUP),)
    assert table["ptrace"][0] is Action.ERRNO_EPERM
    assert table["pidfd_send_signal"] == (Action.NOTIFY, ())
    assert [r.nr for r in p.rules] == sorted(r.nr for r in p.rules)
    assert p.unsupported == ()
    # namespaces: creation checked on the flags in the filter, setns always notified
    assert table["clone"] == (Action.ALLOW, (Branch((Check(0, Op.SET, 0x10000000),),
                                                    Action.NOTIFY),))
    assert table["setns"] == (Action.NOTIFY, ()) and table["clone3"][0] is Action.ERRNO_ENOSYS
    assert any("io_uring" in n for n in p.notes)


def test_plan_without_rules_only_guards() -> None:
    pol = load_text("""
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: s}
spec: {scope: {host: true}, syscalls: {deny: [bpf]}}
""")
    p = rules.plan(pol, SUP)
    assert {r.name for r in p.rules} == {"bpf", "kill", "tkill", "tgkill", "pidfd_open",
                                         "ptrace", "process_vm_readv", "process_vm_writev",
                                         "pidfd_send_signal"}
    assert p.rule("bpf").default is Action.ERRNO_EPERM
    guard = p.rule("kill")
    assert guard.branches == (Branch((Check(0, Op.EQ32, SUP),), Action.NOTIFY),
                              Branch((Check(0, Op.EQ32, 0xFFFFFFFF),), Action.NOTIFY))
    assert "io_uring_setup" not in {r.name for r in p.rules}


def test_exec_decisions() -> None:
    pols = _pols()
    v = rules.decide_exec(pols, "/usr/bin/busybox", "/bin/nc", False)
    assert v.deny and v.kind == "exec"
    assert v.matches[0] == rules.Match("lock", "enforce", "exec.deny: /bin/nc")
    # the monitor policy's allow-list does not list /usr/bin/busybox nor /bin/nc... /bin/* does
    assert [m.policy for m in v.matches] == ["lock"]
    v = rules.decide_exec(pols, "/usr/sbin/iptables", "/usr/sbin/iptables", False)
    assert v.deny and v.matches[0].rule == "exec.deny: /usr/sbin/*"
    assert v.matches[1] == rules.Match("watch", "monitor", "exec.allow: not listed")
    v = rules.decide_exec(pols, "/app/server", "/app/server", True)
    assert v.deny and v.kind == "drift" and v.matches[0].rule == "exec.drift: block"
    v = rules.decide_exec(pols, "/app/server", "/app/server", False)
    assert v is rules.ALLOWED and not v.deny and v.action is None
    v = rules.decide_exec(pols, "/opt/x", "/opt/x", False)
    assert not v.deny and v.action == "would-block"


def test_mapped_code_is_drift_only() -> None:
    pols = _pols()
    assert rules.decide_mapped(pols, "/tmp/evil.so", True).deny
    assert rules.decide_mapped(pols, "/lib/libc.so.6", False) is rules.ALLOWED


def test_open_decisions() -> None:
    pols = _pols()
    assert rules.access_of(0) == 1 and rules.access_of(1) == 2 and rules.access_of(2) == 3
    assert rules.access_of(0o100) == 3 and rules.access_of(0o1000) == 3
    assert rules.access_of(0o10000000) == 0
    v = rules.decide_open(pols, ["/etc/shadow"], 1)
    assert v.deny and v.matches[0].rule == "files.deny: /etc/shadow (read)"
    # a write of /etc/shadow: no deny rule, the monitor rule on /etc/ writes
    v = rules.decide_open(pols, ["/etc/shadow"], 2)
    assert not v.deny and v.action == "would-block"
    assert v.matches[0].rule == "files.monitor: /etc/* (write)"
    # matched through the covered name (identity: a hard link elsewhere)
    v = rules.decide_open(pols, ["/tmp/link", "/etc/shadow"], 1)
    assert v.deny
    # a prefix rule covers the directory itself
    assert rules.decide_open(pols, ["/etc/ssl/private"], 1).deny
    assert rules.decide_open(pols, ["/etc/passwd"], 1) is rules.ALLOWED
    assert rules.decide_open(pols, ["/etc/shadow"], 0) is rules.ALLOWED  # O_PATH


def test_connect_decisions() -> None:
    pols = _pols()
    ip = ipaddress.ip_address
    v = rules.decide_connect(pols, ip("169.254.169.254"), 80, 6)
    assert v.deny and v.matches[0].rule == "network.egress.deny: 169.254.169.254/32"
    # IPv4-mapped IPv6 is the IPv4 address
    assert rules.decide_connect(pols, ip("::ffff:169.254.169.254"), 80, 6).deny
    assert rules.decide_connect(pols, ip("1.2.3.4"), 3333, 17).deny
    v = rules.decide_connect(pols, ip("1.2.3.4"), 443, 6)
    assert not v.deny and v.matches == (rules.Match("watch", "monitor",
                                                    "network.egress.allow: not listed"),)
    assert rules.decide_connect(pols, ip("10.1.1.1"), 443, 6) is rules.ALLOWED
    assert rules.effective_address(ip("0.0.0.0")) == ip("127.0.0.1")
    assert rules.effective_address(ip("::")) == ip("::1")


def test_syscall_decision() -> None:
    v = rules.decide_syscall(_pols(), "unshare")
    assert v.matches == (rules.Match("watch", "monitor", "syscalls.deny: unshare"),)
    assert X86_64["unshare"] in {r.nr for r in rules.plan(_pols(), SUP).rules}


SETID = """
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: s}
spec:
  scope: {host: true}
  setid: {deny: [setuid, caps]}
  namespaces: {deny: [all]}
"""


def test_setid_and_namespaces_plan_and_decisions() -> None:
    pols = load_text(SETID)
    p = rules.plan(pols, SUP)
    assert p.rule("chmod").branches == (Branch((Check(1, Op.SET, 0o4000),), Action.NOTIFY),)
    assert p.rule("openat").branches == (Branch((Check(3, Op.SET, 0o4000),
                                                 Check(2, Op.SET, 0o100)), Action.NOTIFY),)
    assert p.rule("fsetxattr").default is Action.NOTIFY
    assert p.rule("openat2").default is Action.NOTIFY
    # unshare already refused wholesale by a syscall rule keeps that rule
    both = load_text(SETID.replace("namespaces: {deny: [all]}",
                                   "namespaces: {deny: [all]}\n  syscalls: {deny: [unshare]}"))
    assert rules.plan(both, SUP).rule("unshare").default is Action.ERRNO_EPERM
    assert rules.ns_names(0x10000000 | 0x40000000) == ["user", "net"]
    v = rules.decide_namespaces(pols, ["user"])
    assert v.deny and v.matches[0].rule == "namespaces.deny: user"
    assert rules.setid_kinds(0o6755) == ["setuid", "setgid"]
    v = rules.decide_setid(pols, ["setuid", "setgid"])
    assert v.deny and v.matches[0].rule == "setid.deny: setuid"
    assert rules.decide_setid(pols, ["setgid"]) is rules.ALLOWED
