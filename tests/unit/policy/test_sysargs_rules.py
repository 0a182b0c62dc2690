"""Namespace and setid rule kinds (issue 13): schema, compiled rows, the publishing switch of
their program, the record decoder, the explanation, and the residue repair on a real file
(no privileges beyond owning the file)."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from moray.agent.bpf import abi
from moray.agent.events.decode import decode_enforce
from moray.agent.events.types import EnforceEvent, Proc
from moray.agent.policy.apply import MAP_NAMES, Applier, dec_conf, enc_conf, u32
from moray.agent.policy.compile import compile_policies
from moray.agent.policy.explain import explain
from moray.agent.policy.inroot import open_in_root, target_of
from moray.agent.policy.residue import Residue
from moray.api.policy.load import PolicyError, load_text
from moray.api.policy.model import NAMESPACES, SETID_KINDS

from .test_policy import HOST, FakeMap

E, A = abi.EKind, abi.EAction


def doc(body: str, mode: str = "enforce") -> str:
    return ("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: p}\n"
            f"spec:\n  scope: {{host: true}}\n  mode: {mode}\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines()))


# ------------------------------------------------------------------ schema


def test_load_names_and_all() -> None:
    p = load_text(doc("namespaces: {deny: [net, user]}\nsetid: {deny: [caps]}"))[0]
    assert p.namespaces.deny == ("user", "net")  # kernel index order
    assert p.setid.deny == ("caps",)
    p = load_text(doc("namespaces: {deny: [all]}\nsetid: {deny: [all]}"))[0]
    assert p.namespaces.deny == NAMESPACES and p.setid.deny == SETID_KINDS
    assert p.rule_count() == len(NAMESPACES) + len(SETID_KINDS)


@pytest.mark.parametrize(("body", "where"), [
    ("namespaces: {deny: [users]}", "p.yaml:7: spec.namespaces.deny[0]"),
    ("setid: {deny: [setuid, suid]}", "p.yaml:7: spec.setid.deny[1]"),
    ("setid: {allow: [setuid]}", "p.yaml:7: spec.setid.allow"),
])
def test_errors_name_file_line_field(body: str, where: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_text(doc(body), "p.yaml")
    assert where in str(err.value), str(err.value)


# ------------------------------------------------------------------ rows


def test_compile_rows_and_conf_roundtrip() -> None:
    a = load_text(doc("namespaces: {deny: [user, mount]}"))[0]
    b = load_text(doc("setid: {deny: [setuid, caps]}", mode="monitor"))[0]
    c = compile_policies([(0, a), (3, b)])
    assert c.conf.args == 0b1001
    assert c.conf.ns[NAMESPACES.index("user")] == 1 and c.conf.ns[1] == 1
    assert c.conf.ns[NAMESPACES.index("net")] == 0
    assert c.conf.setid == (1 << 3, 0, 1 << 3, 0)
    assert c.to_json()["conf"]["ns.user"] == "0x1"
    assert c.to_json()["conf"]["setid.caps"] == "0x8"
    row, gen = dec_conf(enc_conf(c.conf, 7))
    assert (row, gen) == (c.conf, 7)
    assert len(enc_conf(c.conf, 0)) == abi.PCONF.size
    # a policy without these rules renders as before (golden files unchanged)
    assert "args" not in compile_policies([(0, load_text(HOST, "h")[0])]).to_json()["conf"]


def test_args_program_attached_only_while_such_a_rule_is_live() -> None:
    log: list[tuple[str, str, bytes]] = []
    maps = {n: FakeMap(log, n) for n in MAP_NAMES}
    ap = Applier(maps, grace=0,  # type: ignore[arg-type]
                 args_hook=lambda on: log.append(("args", "on" if on else "off", b"")))
    ap.publish(compile_policies([(0, load_text(doc("setid: {deny: [all]}"))[0])]), {})
    flip = log.index(("mr_pgen", "update", u32(0)))
    assert log.index(("args", "on", b"")) < flip and ("args", "off", b"") not in log
    log.clear()
    ap.publish(compile_policies([(1, load_text(HOST, "h")[0])]), {})
    flip = log.index(("mr_pgen", "update", u32(0)))
    assert log.index(("args", "off", b"")) > flip and ("args", "on", b"") not in log


# ------------------------------------------------------------------ records

PROC = Proc(pid=40, tid=40, ppid=1, uid=0, euid=0, gid=0, mntns=1, cgroup_id=7,
            start_ns=5, pstart_ns=1, comm="sh")


def record(kind: int, action: int, nr: int, value: int, family: int = 0, path: bytes = b"",
           path2: bytes = b"") -> bytes:
    st = abi.ENFORCE.compile()
    vals = [0] * len(abi.ENFORCE.index)
    ix = abi.ENFORCE.index
    vals[ix["hdr.op"]] = abi.Op.ENFORCE
    vals[ix["hdr.size"]] = st.size + len(path) + len(path2)
    vals[ix["proc.comm"]] = b"sh"
    vals[ix["policies"]] = vals[ix["enforced"]] = 1
    vals[ix["kind"]], vals[ix["action"]], vals[ix["arg"]] = kind, action, nr
    vals[ix["family"]] = family
    vals[ix["addr"]] = struct.pack("<Q", value) + bytes(8)
    vals[ix["path_len"]], vals[ix["path2_len"]] = len(path), len(path2)
    return st.pack(*vals) + path + path2


def test_decode_ns_and_setid_values() -> None:
    ev = decode_enforce(record(E.NS, A.KILLED, 435, 0x10020000))
    assert (ev.kind, ev.value, ev.daddr) == (E.NS, 0x10020000, None)
    # family carries setid bits (2 = setgid would read as AF_INET otherwise)
    ev = decode_enforce(record(E.SETID, A.KILLED, 90, 0o2755, 2, b"/tmp", b"b"))
    assert (ev.value, ev.family, ev.daddr, ev.path, ev.path2) == (0o2755, 2, None, "/tmp", "b")
    assert target_of(ev) == "/tmp/b"


def _ev(kind: int, action: int, nr: int, value: int, family: int = 0, path: str = "",
        path2: str = "") -> EnforceEvent:
    return EnforceEvent(1, PROC, kind, action, 1, 1 if action != A.WOULD_BLOCK else 0, nr,
                        family, None, 0, path, path2, value=value)


def test_explain_namespaces() -> None:
    pol = {0: load_text(doc("namespaces: {deny: [user, uts]}"))[0]}
    e = explain(_ev(E.NS, A.KILLED, 435, 0x10000000 | 0x20000), pol, {})
    assert e["kind"] == "namespaces" and e["syscall"] == "clone3"
    assert e["namespaces"] == ["user", "mount"] and e["rule"] == "namespaces.deny: user"
    assert e["tier"] == "kill-after" and "no child and no namespace" in e["note"]
    e = explain(_ev(E.NS, A.BLOCKED, 272, 0x10000000), pol, {})
    assert e["tier"] == "lsm-deny" and "note" not in e
    e = explain(_ev(E.NS, A.KILLED, 308, 0x04000000), pol, {})
    assert e["syscall"] == "setns" and "joined" in e["note"]


def test_explain_setid() -> None:
    pol = {0: load_text(doc("setid: {deny: [setuid, caps]}"))[0]}
    e = explain(_ev(E.SETID, A.KILLED, 268, 0o4755, 1, "/work", "bin/x"), pol, {})
    assert (e["kind"], e["syscall"], e["path"], e["mode"]) == ("setid", "fchmodat",
                                                               "/work/bin/x", "4755")
    assert e["setid"] == ["setuid"] and e["rule"] == "setid.deny: setuid"
    e = explain(_ev(E.SETID, A.BLOCKED, 190, 0, 4, "/usr/bin/ping"), pol, {})
    assert e["setid"] == ["caps"] and e["path"] == "/usr/bin/ping" and "mode" not in e


# ------------------------------------------------------------------ residue


def _dead_child() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_residue_clears_only_what_the_call_asked_for(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("")
    f.chmod(0o6755)
    mntns = os.stat("/proc/self/ns/mnt").st_ino
    proc = PROC._replace(pid=_dead_child(), ppid=os.getpid(), mntns=mntns)
    ev = _ev(E.SETID, A.KILLED, 90, 0o4755, 1, "", str(f))._replace(proc=proc)
    enf: dict[str, object] = {}
    Residue()(ev, enf)
    assert enf["left"] == [{"path": str(f), "what": "setuid", "mode": "6755"}]
    assert enf["undone"] == [{"path": str(f), "what": "setuid bit cleared", "mode": "2755"}]
    assert stat.S_IMODE(f.stat().st_mode) == 0o2755  # setgid was not asked for: kept
    # monitor mode: nothing touched
    f.chmod(0o4755)
    Residue()(ev._replace(action=A.WOULD_BLOCK), enf2 := {})
    assert enf2 == {} and f.stat().st_mode & stat.S_ISUID


def test_residue_stays_inside_the_root(tmp_path: Path) -> None:
    """A symlink in the container pointing at an absolute path resolves inside the
    container's root, never to the agent's file of that name."""
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "l").symlink_to("/etc/hostname-of-host")
    with pytest.raises(FileNotFoundError):
        os.close(open_in_root(str(root), "/tmp/l"))
    (root / "etc").mkdir()
    (root / "etc" / "hostname-of-host").write_text("inside")
    fd = open_in_root(str(root), "/tmp/l")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(root / "etc" / "hostname-of-host")
    finally:
        os.close(fd)


def test_residue_without_a_live_process_says_so() -> None:
    proc = PROC._replace(pid=_dead_child(), ppid=0, mntns=1)  # no such mount namespace
    enf: dict[str, object] = {}
    Residue()(_ev(E.SETID, A.KILLED, 90, 0o4755, 1, "", "/x")._replace(proc=proc), enf)
    assert enf["left"] == [] and "no live process" in str(enf["unchecked"])


def test_lsm_groups_load_only_where_the_kernel_has_their_hooks(tmp_path: Path) -> None:
    """A kernel with BPF LSM but without userns_create (before 6.1) keeps the setid LSM
    programs and leaves user namespaces to the tracepoint program (cfg_args_lsm bit 1
    clear), instead of failing the whole object's load."""
    from moray.agent.policy.programs import args_lsm

    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"\0bpf_lsm_path_chmod\0bpf_lsm_path_mknod\0bpf_lsm_inode_setxattr\0")
    mount = ["mr_lsm_mount", "mr_lsm_move_mount", "mr_lsm_umount"]
    assert args_lsm(True, str(btf)) == (2, ["mr_lsm_userns", *mount])
    btf.write_bytes(btf.read_bytes() + b"bpf_lsm_userns_create\0")
    assert args_lsm(True, str(btf)) == (3, mount)
    # issue 13, mount calls (bpf/progs/enforce_sys.bpf.c): a group of their own
    btf.write_bytes(btf.read_bytes() + b"bpf_lsm_sb_mount\0bpf_lsm_move_mount\0"
                    b"bpf_lsm_sb_umount\0")
    assert args_lsm(True, str(btf)) == (7, [])
    assert args_lsm(False, str(btf))[0] == 0 and len(args_lsm(False, str(btf))[1]) == 7
