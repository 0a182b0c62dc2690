"""Namespace and setid rules against REAL runc containers on this kernel (root only; issue
13): every way to make or enter a namespace, every way to set a setuid / setgid bit or
file capabilities, at least two variants each, with what the killed call left behind and
what the agent undid.

Tier on this machine (no BPF LSM): kill-after through tp_btf/sys_enter. clone / clone3
leave nothing (the kernel aborts a fork whose caller has SIGKILL pending); unshare /
setns die with their namespace; chmod & co DID set the bit, the agent clears it and the
enforce event lists it under `left` and `undone`. The LSM tier (EPERM, nothing set) is
tests/kernels/guest_tests/test_sysargs.py in the kernel matrix.

Each container's script ends by waiting for /tmp/go, so a process of its mount namespace
is alive while the agent looks at the files; the test creates /tmp/go (through the
rootfs) once it has the events, then reads the files from the host.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import WAIT_GO, build_rootfs, run_runc
from tests.helpers.policies import ctr_policy as policy
from tests.helpers.sysargs import mountpoints, sysargs_rootfs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]



@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProc]:
    with AgentProc() as a:
        yield a


@pytest.fixture()
def rootfs(tmp_path: Path) -> Path:
    return sysargs_rootfs(tmp_path / "rootfs")


def ours(agent: AgentProc, cid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in agent.events() if e.get("type") == "enforce"
            and (e.get("container") or {}).get("id") == cid
            and enforcement(e).get("kind") == kind]


def wait_n(agent: AgentProc, cid: str, kind: str, n: int,
           timeout: float = 30) -> list[dict[str, Any]]:
    """The container's enforce events of *kind* once there are *n* (reads the output
    once per poll: it grows large on a slow guest)."""
    deadline = time.monotonic() + timeout
    while len(got := ours(agent, cid, kind)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)} of {n} {kind} events: "
                               f"{[enforcement(e) for e in got]}")
        time.sleep(0.1)
    return got


def rcs(stdout: str) -> dict[str, str]:
    """`name=<exit status>` lines of a script (the test program's own `x=ok` lines are
    left out)."""
    pairs = (line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return {k: v for k, v in pairs if v.isdigit()}


# ------------------------------------------------------------------ namespaces


NS_SCRIPT = """
/bin/unshare -U true; echo unshare-U=$?
/bin/sysargs clone user; echo clone-user=$?
/bin/sysargs clone3 user; echo clone3-user=$?
/bin/sysargs unshare uts; echo unshare-uts=$?
/bin/sysargs clone3 mount; echo clone3-mount=$?
/bin/nsenter -t 1 -u true; echo nsenter-uts=$?
/bin/sysargs setns /proc/1/ns/uts 0; echo setns0-uts=$?
/bin/sysargs setns /proc/1/ns/ipc 0; echo setns0-ipc=$?
/bin/sysargs unshare ipc; echo unshare-ipc=$?
ls /tmp; echo listed=$?
"""


def test_namespaces_every_syscall(agent: AgentProc, rootfs: Path) -> None:
    """deny [user, uts, mount]: unshare, clone, clone3, setns (typed and nstype 0, resolved
    from the fd) are killed; ipc (not denied) is not; clone children never exist."""
    agent.apply("ns-deny", policy("ns-deny", "mr-ns-*", "namespaces: {deny: [user, uts, mount]}"))
    try:
        with run_runc("mr-ns-1", ["sh", "-c", NS_SCRIPT], rootfs=rootfs) as ctr:
            res = ctr.wait()
        rc = rcs(res.stdout)
        why = (res, [enforcement(e) for e in ours(agent, "mr-ns-1", "namespaces")])
        for v in ("unshare-U", "clone-user", "clone3-user", "unshare-uts", "clone3-mount",
                  "nsenter-uts", "setns0-uts"):
            assert rc.get(v) == "137", (v, why)
        # not denied: the call itself fails (no CAP_SYS_ADMIN in runc's default set) or
        # works, but nobody is killed
        assert rc.get("setns0-ipc") != "137" and rc.get("unshare-ipc") != "137", why
        assert rc.get("listed") == "0", why
        # (b) nothing left: the forks were aborted, no child ever ran
        assert not list((rootfs / "tmp").glob("child-*")), list((rootfs / "tmp").iterdir())
        evs = wait_n(agent, "mr-ns-1", "namespaces", 7)
        got = {(enforcement(e)["syscall"], tuple(enforcement(e)["namespaces"])) for e in evs}
        assert got >= {("unshare", ("user",)), ("clone", ("user",)), ("clone3", ("user",)),
                       ("unshare", ("uts",)), ("clone3", ("mount",)), ("setns", ("uts",))}, got
        for e in evs:
            enf = enforcement(e)
            assert enf["action"] == "killed" and enf["tier"] == "kill-after", enf
            assert enf["policy"] == "ns-deny"
            assert enf["rule"].startswith("namespaces.deny: "), enf
            assert enf["left"] == [] and enf["undone"] == [], enf
            if enf["syscall"] in ("clone", "clone3"):
                assert "no child and no namespace" in enf["note"], enf
        assert not any("ipc" in enforcement(e)["namespaces"] for e in evs), got
    finally:
        agent.delete("ns-deny")


def test_namespaces_all_and_monitor(agent: AgentProc, rootfs: Path) -> None:
    """Monitor mode: allowed, would-block, nothing undone; `all` covers net and time."""
    agent.apply("ns-mon", policy("ns-mon", "mr-nsmon-*", "namespaces: {deny: [all]}",
                                 mode="monitor"))
    try:
        script = ("/bin/unshare -U true; echo unshare-U=$?; "
                  "/bin/sysargs clone3 user; echo clone3-user=$?; ls /tmp")
        with run_runc("mr-nsmon-1", ["sh", "-c", script], rootfs=rootfs) as ctr:
            res = ctr.wait()
        rc = rcs(res.stdout)
        assert rc.get("unshare-U") == "0" and rc.get("clone3-user") == "0", res
        assert (rootfs / "tmp" / "child-clone3").exists(), "monitor mode lets the fork happen"
        evs = wait_n(agent, "mr-nsmon-1", "namespaces", 2)
        for e in evs:
            enf = enforcement(e)
            assert enf["action"] == "would-block" and "left" not in enf, enf
            assert enf["rule"] == "namespaces.deny: user", enf
    finally:
        agent.delete("ns-mon")


# ------------------------------------------------------------------ setid


SETID_VARIANTS = {  # name -> (shell command, file it changes, what it asks for)
    "chmod-us": ("chmod u+s /tmp/a", "a", "setuid"),
    "rel-gs": ("cd /tmp; chmod g+s b", "b", "setgid"),
    "fchmod": ("/bin/sysargs fchmod /tmp/c 4755", "c", "setuid"),
    "fchmodat2": ("/bin/sysargs fchmodat2 /tmp/d 4755", "d", "setuid"),
    "fchmodat2-fd": ("/bin/sysargs fchmodat2-fd /tmp/e 2755", "e", "setgid"),
    "creat": ("/bin/sysargs creat /tmp/f 4755", "f", "setuid"),
    "mknod": ("/bin/sysargs mknod /tmp/g 6755", "g", "setuid"),
    "setcap": ("/bin/sysargs setcap /tmp/h", "h", "caps"),
    "fsetcap": ("/bin/sysargs fsetcap /tmp/i", "i", "caps"),
}


def setid_script() -> str:
    lines = ["for f in a b c d e h i k; do cp /bin/busybox /tmp/$f; chmod 755 /tmp/$f; done"]
    lines += [f"{cmd}; echo {name}=$?" for name, (cmd, _f, _w) in SETID_VARIANTS.items()]
    # the plain chmod is of its own file: of /tmp/a it would clear the bit before a
    # pipeline running behind looks for it (`left` empty)
    lines += ["chmod 700 /tmp/k; echo plain-chmod=$?",
              "/bin/sysargs creat /tmp/j 0644; echo plain-creat=$?", WAIT_GO]
    return "\n".join(lines)


def has_caps(p: Path) -> bool:
    try:
        os.getxattr(p, "security.capability")
    except OSError:
        return False
    return True


def test_setid_every_syscall_killed_and_undone(agent: AgentProc, rootfs: Path) -> None:
    """setid deny [all]: every variant is killed (137); what it set is reported in
    `left` and cleared again (`undone`); plain chmod / creat go on."""
    agent.apply("setid", policy("setid", "mr-setid-*", "setid: {deny: [all]}"))
    try:
        with run_runc("mr-setid-1", ["sh", "-c", setid_script()], rootfs=rootfs,
                      caps=["CAP_SETFCAP"]) as ctr:
            ctr.start()
            evs = wait_n(agent, "mr-setid-1", "setid", len(SETID_VARIANTS))
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait()
        rc = rcs(res.stdout)
        details = [enforcement(e) for e in evs]
        why = (res, details)

        for name in SETID_VARIANTS:
            assert rc.get(name) == "137", (name, why)
        assert rc.get("plain-chmod") == "0" and rc.get("plain-creat") == "0", why
        by_path = {}
        for enf in details:
            assert enf["action"] == "killed" and enf["tier"] == "kill-after", enf
            assert enf["rule"].startswith("setid.deny: "), enf
            by_path.setdefault(enf["path"], []).append(enf)
        for name, (_cmd, f, what) in SETID_VARIANTS.items():
            path = f"/tmp/{f}"
            assert path in by_path, (name, sorted(by_path))
            enf = by_path[path][0]
            assert what in enf["setid"], (name, enf)
            assert "unchecked" not in enf, (name, enf)
            # (b) what the killed call left is listed and undone
            left = {x["what"] for x in enf["left"]}
            undone = {x["what"] for x in enf["undone"]}
            assert what in left, (name, enf)
            want = f"{CAPS} removed" if what == "caps" else f"{what} bit cleared"
            assert want in undone, (name, enf)
            host = rootfs / "tmp" / f
            mode = host.stat().st_mode
            assert not mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(mode))
            assert not has_caps(host), name
        syscalls = {enf["syscall"] for enf in details}
        assert {"fchmod", "fchmodat2", "setxattr", "fsetxattr"} <= syscalls, syscalls
        assert syscalls & {"mknod", "mknodat"}, syscalls
        assert syscalls & {"chmod", "fchmodat"}, syscalls
        assert syscalls & {"open", "openat", "creat"}, syscalls
    finally:
        agent.delete("setid")


CAPS = "security.capability"


def test_setid_monitor_allows_and_reports(agent: AgentProc, rootfs: Path) -> None:
    agent.apply("setid-mon", policy("setid-mon", "mr-setidm-*",
                                    "setid: {deny: [setuid, caps]}", mode="monitor"))
    try:
        script = ("cp /bin/busybox /tmp/a; chmod u+s /tmp/a; echo chmod-us=$?; "
                  "/bin/sysargs creat /tmp/f 4755; echo creat=$?; " + WAIT_GO)
        with run_runc("mr-setidm-1", ["sh", "-c", script], rootfs=rootfs) as ctr:
            ctr.start()
            evs = wait_n(agent, "mr-setidm-1", "setid", 2)
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait()
        rc = rcs(res.stdout)
        assert rc.get("chmod-us") == "0" and rc.get("creat") == "0", res
        assert (rootfs / "tmp" / "a").stat().st_mode & stat.S_ISUID
        assert (rootfs / "tmp" / "f").stat().st_mode & stat.S_ISUID
        for e in evs:
            enf = enforcement(e)
            assert enf["action"] == "would-block" and "undone" not in enf, enf
            assert enf["rule"] == "setid.deny: setuid", enf
    finally:
        agent.delete("setid-mon")


def test_setid_only_setuid_leaves_setgid_dirs(agent: AgentProc, rootfs: Path) -> None:
    """A rule on setuid only: `chmod g+s` on a directory (shared group directories) and a
    setgid bit without group execute are not touched."""
    agent.apply("setuid-only", policy("setuid-only", "mr-setuid-*", "setid: {deny: [setuid]}"))
    try:
        script = ("mkdir /tmp/shared; chmod g+s /tmp/shared; echo dir-gs=$?; "
                  "touch /tmp/k; chmod 2644 /tmp/k; echo gs-nox=$?; "
                  "cp /bin/busybox /tmp/a; chmod 4755 /tmp/a; echo chmod-us=$?; " + WAIT_GO)
        with run_runc("mr-setuid-1", ["sh", "-c", script], rootfs=rootfs) as ctr:
            ctr.start()
            wait_n(agent, "mr-setuid-1", "setid", 1)
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait()
        rc = rcs(res.stdout)
        assert rc.get("dir-gs") == "0" and rc.get("gs-nox") == "0", res
        assert rc.get("chmod-us") == "137", res
        assert not (rootfs / "tmp" / "a").stat().st_mode & stat.S_ISUID
    finally:
        agent.delete("setuid-only")


# ------------------------------------------------------------------ benign


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3")
def test_benign_workload_not_blocked(agent: AgentProc, tmp_path: Path) -> None:
    """test_detect_benign.py's workload (shell scripts, files, a Python web server and its
    clients) under namespaces [all] + setid [all] in enforce mode: it runs to its end, no
    enforce event names the container, and runc's own set-up is not stopped."""
    import subprocess

    from tests.integration.test_detect_benign import ENTRY, JOB

    rootfs = build_rootfs(tmp_path / "rootfs")
    for d in ("work", "usr"):
        (rootfs / d).mkdir(exist_ok=True)
    for link in ("lib", "lib64"):
        (rootfs / link).symlink_to(f"usr/{link}")
    (rootfs / "work" / "job.sh").write_text(JOB)
    (rootfs / "entry.sh").write_text(ENTRY.replace("exec sleep 600", "echo benign-exit=0"))
    netns = f"mrsa{os.getpid()}"
    usr: dict[str, object] = {"destination": "/usr", "type": "bind", "source": "/usr",
                              "options": ["rbind", "ro"]}
    agent.apply("benign", policy("benign", "mr-sabenign-*",
                                 "namespaces: {deny: [all]}\nsetid: {deny: [all]}"))
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        with run_runc("mr-sabenign-1", ["/bin/sh", "/entry.sh"], rootfs=rootfs,
                      network=f"/run/netns/{netns}", mounts=[usr],
                      env=("PATH=/bin:/usr/bin", "HOME=/root")) as ctr:
            res = ctr.wait(120)
        assert "benign-done" in res.stdout and "benign-exit=0" in res.stdout, res
        assert (rootfs / "work" / "cache" / "status").read_text().strip() == "ok"
        # (the container's first exec is held until it is classified: that is not a block)
        blocked = [enforcement(e) for e in agent.events() if e.get("type") == "enforce"
                   and (e.get("container") or {}).get("id") == "mr-sabenign-1"
                   and enforcement(e).get("action") != "held"]
        assert blocked == [], blocked
    finally:
        agent.delete("benign")
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


# ------------------------------------------------------------------ mount (issue 13, 5)
# A mount-family syscall under a syscall deny is killed after it ran (kill-after): the
# mount IS made. The enforce event is written at the call's exit with its result and
# target; the agent finds the mount the call made, lists it under `left` and detaches it
# inside the container's mount namespace (`undone`). A call that failed leaves nothing
# and nothing is detached: a mount made before it at the same place (here a tmpfs runc
# mounted at /data) stays.

MOUNT_VARIANTS = {  # name -> (command, syscall, target as passed, where it lands)
    "tmpfs": ("mount -t tmpfs none /mnt/a", "mount", "/mnt/a", "/mnt/a"),
    "bind-file": ("mount --bind /tmp/x /etc/passwd", "mount", "/etc/passwd", "/etc/passwd"),
    "rel-bind": ("cd /mnt; mount --bind /tmp d", "mount", "/mnt/d", "/mnt/d"),
    # a symlink in the container to a path that exists on the host too: the kernel and
    # the agent both resolve it inside the container's root
    "symlink": ("busybox ln -s /run /mnt/e; mount -t tmpfs none /mnt/e", "mount", "/mnt/e", "/run"),
    "fsmount": ("/bin/sysargs fsmount /mnt/b", "move_mount", "/mnt/b", "/mnt/b"),
    "clonetree": ("/bin/sysargs clonetree /tmp /mnt/c", "move_mount", "/mnt/c", "/mnt/c"),
    # over runc's own mount at /vol: the new one (on top) is detached, runc's stays
    "stacked": ("mount -t tmpfs -o size=2m none /vol", "mount", "/vol", ""),
}
DATA_TMPFS: dict[str, object] = {"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                                 "options": ["nosuid", "size=1m"]}
VOL_TMPFS: dict[str, object] = {"destination": "/vol", "type": "tmpfs", "source": "runcvol",
                                "options": ["nosuid", "size=1m"]}


def mount_script(variants: dict[str, tuple[str, str, str, str]], failing: bool = True) -> str:
    lines = ["mkdir -p /mnt/a /mnt/b /mnt/c /mnt/d; echo secret > /tmp/x"]
    lines += [f"{cmd}; echo {name}=$?" for name, (cmd, _s, _t, _w) in variants.items()]
    if failing:  # fails (no such file system type): killed, nothing to detach
        lines += ["mount -t nosuchfs none /data; echo failed=$?"]
    lines += [WAIT_GO, "echo MOUNTINFO; cat /proc/self/mountinfo"]
    return "\n".join(lines)


def test_mount_killed_and_detached(agent: AgentProc, rootfs: Path) -> None:
    """syscalls deny [mount, move_mount]: every variant (mount(2) of a tmpfs, a bind over a
    file, a relative target, the new API through fsmount and through open_tree's clone) is
    killed; the mount it made is reported and detached; a failed mount is killed and
    leaves runc's legitimate /data mount alone."""
    agent.apply("mnt", policy("mnt", "mr-mnt-*", "syscalls: {deny: [mount, move_mount]}"))
    try:
        with run_runc("mr-mnt-1", ["sh", "-c", mount_script(MOUNT_VARIANTS)], rootfs=rootfs,
                      caps=["CAP_SYS_ADMIN"], mounts=[DATA_TMPFS, VOL_TMPFS]) as ctr:
            ctr.start()
            evs = wait_n(agent, "mr-mnt-1", "syscall", len(MOUNT_VARIANTS) + 1)
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait()
        rc = rcs(res.stdout)
        details = [enforcement(e) for e in evs]
        why = (res, details)
        for name in (*MOUNT_VARIANTS, "failed"):
            assert rc.get(name) == "137", (name, why)
        by_path = {d["path"]: d for d in details}
        for name, (_cmd, syscall, target, _where) in MOUNT_VARIANTS.items():
            d = by_path.get(target)
            assert d is not None, (name, sorted(by_path), why)
            assert d["syscall"] == syscall and d["result"] == "ok", (name, d)
            assert d["action"] == "killed" and d["tier"] == "kill-after", (name, d)
            assert d["rule"] == f"syscalls.deny: {syscall}", (name, d)
            assert "unchecked" not in d, (name, d)
            assert [x["what"] for x in d["left"]] == ["mount"], (name, d)
            assert [x["what"] for x in d["undone"]] == ["mount detached"], (name, d)
            assert d["left"][0]["mount_id"] == d["undone"][0]["mount_id"], (name, d)
        assert by_path["/mnt/a"]["left"][0]["fstype"] == "tmpfs", by_path["/mnt/a"]
        failed = by_path["/data"]
        assert failed["result"] == "ENODEV" and failed["left"] == [], failed
        assert failed["undone"] == [], failed
        # (b) after the events the container's mount table has none of them, /data stays
        points = mountpoints(res.stdout)
        assert "/data" in points, res.stdout
        for _cmd, _s, _target, where in MOUNT_VARIANTS.values():
            assert not where or where not in points, (where, points)
        assert by_path["/vol"]["left"][0]["source"] == "none", by_path["/vol"]  # the new one
        assert points.count("/vol") == 1, points  # runc's, under the detached one
        info = res.stdout.split("MOUNTINFO", 1)[1]
        assert " /vol " in info and "runcvol" in info, info
        assert by_path["/mnt/e"]["left"][0]["fstype"] == "tmpfs", by_path["/mnt/e"]
        assert (rootfs / "etc" / "passwd").read_text().startswith("root:"), "bind undone"
    finally:
        agent.delete("mnt")
