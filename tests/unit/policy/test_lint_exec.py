"""Warnings about exec rules (agent/policy/lint_exec.py, `policy lint`): multi-call
binaries behind a denied name, and the dynamic loader on an allow-list or a deny list;
plus how an exec decision reached through a mapping or a script is explained
(agent/policy/explain.py `via`). Image roots are built under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent, Proc
from moray.agent.policy.explain import explain
from moray.agent.policy.lint_exec import exec_warnings, multi_call, resolve_in
from moray.api.policy.load import load_text

REPO = Path(__file__).resolve().parents[3]


def pol(exec_body: str) -> str:
    return ("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: t}\n"
            f"spec:\n  scope: {{host: true}}\n  exec: {exec_body}\n")


def image(root: Path) -> Path:
    for d in ("bin", "usr/bin", "sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
    for applet in ("sh", "wget", "nc"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr/bin/toybox").write_bytes(b"\x7fELF toybox")
    (root / "usr/bin/ls").symlink_to("/usr/bin/toybox")  # absolute: inside the image
    (root / "usr/bin/coreutils").write_bytes(b"\x7fELF coreutils")
    for name in ("cat", "head", "tail"):
        (root / "usr/bin" / name).symlink_to("coreutils")
    (root / "usr/bin/bash").write_bytes(b"\x7fELF bash")
    (root / "usr/bin/python3.11").write_bytes(b"\x7fELF python")
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "usr/bin/gzip").write_bytes(b"\x7fELF gzip")
    os.link(root / "usr/bin/gzip", root / "usr/bin/gunzip")
    (root / "usr/bin/tool").write_bytes(b"\x7fELF tool")
    for name in ("t1", "t2", "t3"):
        (root / "sbin" / name).symlink_to("/usr/bin/tool")
    return root


def test_resolve_in_follows_links_inside_the_root(tmp_path: Path) -> None:
    root = image(tmp_path)
    assert resolve_in(str(root), "/usr/bin/ls") == str(root / "usr/bin/toybox")
    assert resolve_in(str(root), "/bin/wget") == str(root / "bin/busybox")
    assert resolve_in(str(root), "/bin/missing") is None


def test_multi_call_names(tmp_path: Path) -> None:
    root = str(image(tmp_path))
    assert "busybox" in (multi_call(root, "/bin/wget") or "")
    assert "toybox" in (multi_call(root, "/usr/bin/ls") or "")
    assert "coreutils" in (multi_call(root, "/usr/bin/head") or "")
    assert "hard links" in (multi_call(root, "/usr/bin/gunzip") or "")
    assert "also runs as" in (multi_call(root, "/usr/bin/tool") or "")
    # the multi-call binary itself, and an ordinary program: nothing to say
    assert multi_call(root, "/bin/busybox") is None
    assert multi_call(root, "/usr/bin/bash") is None
    assert multi_call(root, "/bin/missing") is None


def test_warnings_name_the_rule(tmp_path: Path) -> None:
    root = str(image(tmp_path))
    p = load_text(pol("{deny: [/bin/wget, /bin/busybox, /usr/bin/bash, /bin/*], "
                      "allow: [\"/lib/*\", /usr/bin/bash]}"))[0]
    ws = exec_warnings(p, ["/nonexistent-root", root])
    assert [(w.field, w.text) for w in ws] == [("spec.exec.deny[0]", "/bin/wget"),
                                              ("spec.exec.allow[0]", "/lib/*")]
    assert "image " + root in ws[0].message
    assert "ld.so PROGRAM" in ws[1].message


def test_denying_a_symlink_name_warns_mappings_see_the_target(tmp_path: Path) -> None:
    root = str(image(tmp_path))
    ws = exec_warnings(load_text(pol("{deny: [/usr/bin/python3]}"))[0], [root])
    assert len(ws) == 1 and "deny /usr/bin/python3.11 too" in ws[0].message


def test_denying_the_loader_warns() -> None:
    p = load_text(pol("{deny: [/lib64/ld-linux-x86-64.so.2]}"))[0]
    ws = exec_warnings(p, [])
    assert len(ws) == 1 and "every dynamically linked program" in ws[0].message


def test_lint_prints_warnings_and_passes(tmp_path: Path) -> None:
    root = image(tmp_path / "img")
    f = tmp_path / "p.yaml"
    f.write_text(pol("{deny: [/bin/nc]}"))
    res = subprocess.run([sys.executable, "-m", "moray.agent.cli", "policy", "lint", str(f),
                          "--image-root", str(root)], capture_output=True, text=True,
                         cwd=REPO, check=False)
    assert res.returncode == 0, res
    assert f"{f}:6: warning: t: spec.exec.deny[0]: /bin/nc: /bin/nc is /bin/busybox" \
        in res.stderr, res


PROC = Proc(pid=40, tid=40, ppid=1, uid=0, euid=0, gid=0, mntns=1, cgroup_id=7,
            start_ns=5, pstart_ns=1, comm="sh")


def _ev(kind: int, arg: int, path: str) -> EnforceEvent:
    return EnforceEvent(ts=1, proc=PROC, kind=kind, action=abi.EAction.KILLED, policies=1,
                        enforced=1, arg=arg, family=0, daddr=None, dport=0, path=path,
                        path2="")


def test_explain_says_how_the_code_was_reached() -> None:
    p = load_text(pol("{deny: [/usr/bin/head], allow: [/bin/sh], drift: block}"))[0]
    tiers = {"exec": "kill"}
    e = explain(_ev(abi.EKind.EXEC, abi.ExecVia.MMAP, "/usr/bin/head"), {0: p}, tiers)
    assert (e["via"], e["rule"], e["binary"]) == ("mmap", "exec.deny: /usr/bin/head",
                                                  "/usr/bin/head")
    assert "none of the mapped code ran" in e["note"]
    e = explain(_ev(abi.EKind.DRIFT, abi.ExecVia.MPROTECT, "/tmp/x.so"), {0: p}, tiers)
    assert (e["via"], e["rule"]) == ("mprotect", "exec.drift: block")
    # a script not on the allow-list: the allow-list applies to scripts
    e = explain(_ev(abi.EKind.EXEC, abi.ExecVia.SCRIPT, "/tmp/a.sh"), {0: p}, tiers)
    assert (e["via"], e["rule"]) == ("script", "exec.allow: not listed")
    assert "no line of the script ran" in e["note"]
    # an exec of the file itself has no `via`
    e = explain(_ev(abi.EKind.EXEC, abi.ExecVia.EXEC, "/usr/bin/head"), {0: p}, tiers)
    assert "via" not in e


def test_exec_map_programs_attached_only_while_an_exec_rule_is_live() -> None:
    """The kill tier's mmap / mprotect / script programs follow exec rules like the syscall
    program follows syscall rules: on before the flip that makes one live, off after the
    flip that removes the last."""
    from moray.agent.policy.apply import MAP_NAMES, Applier, u32
    from moray.agent.policy.compile import compile_policies

    from .test_policy import FakeMap

    log: list[tuple[str, str, bytes]] = []
    maps = {n: FakeMap(log, n) for n in MAP_NAMES}
    ap = Applier(maps, grace=0,  # type: ignore[arg-type]
                 exec_hook=lambda on: log.append(("hook", "on" if on else "off", b"")))
    net_only = load_text(pol("{}").replace("  exec: {}\n",
                                           "  network: {egress: {deny: [10.0.0.0/8]}}\n"))[0]
    with_exec = load_text(pol("{drift: block}"))[0]
    ap.publish(compile_policies([(0, net_only)]), {})
    assert ("hook", "on", b"") not in log and log[-1] == ("hook", "off", b"")
    log.clear()
    ap.publish(compile_policies([(1, with_exec)]), {})
    flip = log.index(("mr_pgen", "update", u32(0)))
    assert log.index(("hook", "on", b"")) < flip and ("hook", "off", b"") not in log
    log.clear()
    ap.publish(compile_policies([(0, net_only)]), {})
    flip = log.index(("mr_pgen", "update", u32(0)))
    assert log.index(("hook", "off", b"")) > flip and ("hook", "on", b"") not in log
