"""Exec rules hold however the code gets mapped (issue 13, must-haves 2 and 6), on whatever
kernel this runs: tests/kernels/run-matrix runs it on this host (kill tier) and on Debian
6.1 / 6.12 under qemu (BPF LSM: lsm/mmap_file, lsm/file_mprotect, bprm_check_security on
the script). Root only; needs no compiler (the guest has none): the mapped files are copies
of runc and of a library, the mappings are made with Python's mmap / ctypes.

Tier promises (docs/policy.md):
  lsm-deny: mmap / mprotect / dlopen fail with EPERM, the loader cannot map the program,
            a script's exec fails with EPERM: nothing of the file runs, nothing is mapped;
  kill:     the process dies by SIGKILL before it returns to user space from the call
            that mapped the code (or, for a script, from the interpreter's open of it).
Monitor mode lets each through and reports would-block.

Drift is not checked here: the guest's whole root is tmpfs, so every file is drift there
(tests/integration/test_enforce_exec_mapped.py checks drift on an overlayfs on this host).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import build_rootfs, run_runc
from tests.kernels.guest_tests.test_tiers import (
    ctr_policy,
    expected_action,
    host_policy,
    in_child,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

LOADER = "/lib64/ld-linux-x86-64.so.2"
LIBDIR = "/lib/x86_64-linux-gnu"
PROT_READ, PROT_EXEC = 1, 4


@pytest.fixture()
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moray-xmap-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def runc_binary() -> str:
    p = shutil.which("runc")
    assert p, "runc is in every matrix row"
    return os.path.realpath(p)


def a_library() -> str:
    return os.path.realpath(f"{LIBDIR}/libc.so.6")


def mapped(tier: str) -> tuple[str, object]:
    """What in_child reports for a denied mapping on *tier*."""
    return ("errno", errno.EPERM) if tier == "lsm-deny" else ("signal", signal.SIGKILL)


def via_event(name: str, kind: str, action: str, binary: str,
              via: str | None) -> Callable[[dict[str, Any]], bool]:
    def pred(ev: dict[str, Any]) -> bool:
        e = enforcement(ev)
        return (ev.get("type") == "enforce" and e.get("policy") == name
                and e.get("kind") == kind and e.get("action") == action
                and e.get("binary") == binary and e.get("via") == via)
    return pred


def _mmap_exec(path: Path) -> str:
    with path.open("rb") as f:
        m = mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE, PROT_READ | PROT_EXEC)
        m.close()
    return "mapped"


def _mprotect_exec(path: Path) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with path.open("rb") as f:
        addr = libc.mmap(None, 4096, PROT_READ, mmap.MAP_PRIVATE, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        if libc.mprotect(addr, 4096, PROT_READ | PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    return "mprotected"


def _read_implies_exec(path: Path) -> str:
    """mmap(PROT_READ) under personality READ_IMPLIES_EXEC: the kernel adds PROT_EXEC."""
    ctypes.CDLL(None, use_errno=True).personality(0x0400000)
    with path.open("rb") as f:
        m = mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE, PROT_READ)
        m.close()
    return "mapped"


def _dlopen(path: Path) -> str:
    try:
        ctypes.CDLL(str(path))
    except OSError as err:  # dlerror() text, no errno: say what it was
        if "not permitted" in str(err) or "failed to map" in str(err):
            raise OSError(errno.EPERM, str(err)) from err
        raise
    return "loaded"


# ------------------------------------------------------------------ host scope, exact errno


def test_denied_file_mapped_executable(agent: AgentProc, tiers: dict[str, str],
                                       work: Path) -> None:
    lib = work / "denied.so"
    shutil.copy2(a_library(), lib)
    neighbour = work / "neighbour.so"
    shutil.copy2(a_library(), neighbour)
    agent.apply("xm-map", host_policy("xm-map", f"exec: {{deny: ['{lib}']}}"))
    try:
        want = mapped(tiers["exec"])
        assert in_child(lambda: _mmap_exec(lib)) == want
        assert in_child(lambda: _mprotect_exec(lib)) == want
        assert in_child(lambda: _dlopen(lib)) == want
        assert in_child(lambda: _read_implies_exec(lib)) == want
        action = expected_action(tiers["exec"])
        for via in ("mmap", "mprotect"):
            ev = agent.wait_event(via_event("xm-map", "exec", action, str(lib), via))
            assert enforcement(ev)["rule"] == f"exec.deny: {lib}"
            assert enforcement(ev)["tier"] == tiers["exec"]
        # a file no rule names maps, and reading the denied one is not an exec
        assert in_child(lambda: _mmap_exec(neighbour)) == ("ok", "mapped")
        assert in_child(lambda: _mprotect_exec(neighbour)) == ("ok", "mprotected")
        assert in_child(lambda: len(lib.read_bytes()) > 0) == ("ok", True)
    finally:
        agent.delete("xm-map")


def test_denied_program_through_the_loader(agent: AgentProc, tiers: dict[str, str],
                                           work: Path) -> None:
    prog = work / "denied-runc"
    shutil.copy2(runc_binary(), prog)
    agent.apply("xm-ld", host_policy("xm-ld", f"exec: {{deny: ['{prog}']}}"))
    try:
        for argv in ([LOADER, str(prog), "--version"],
                     [os.path.realpath(LOADER), "--library-path", LIBDIR, str(prog),
                      "--version"]):
            res = subprocess.run(argv, capture_output=True, text=True, check=False)
            assert "runc version" not in res.stdout, (argv, res)
            if tiers["exec"] == "lsm-deny":
                assert res.returncode == 127, (argv, res)
            else:
                assert res.returncode == -signal.SIGKILL, (argv, res)
        ev = agent.wait_event(via_event("xm-ld", "exec", expected_action(tiers["exec"]),
                                        str(prog), "mmap"))
        assert enforcement(ev)["rule"] == f"exec.deny: {prog}"
        ok = subprocess.run([LOADER, runc_binary(), "--version"], capture_output=True,
                            text=True, check=False)
        assert ok.returncode == 0 and "runc version" in ok.stdout, ok
    finally:
        agent.delete("xm-ld")


def test_denied_script_run_directly(agent: AgentProc, tiers: dict[str, str],
                                    work: Path) -> None:
    """By its path, through a symlink (the name passed to execve is not the rule's), and
    through fexecve of a descriptor (the name is /dev/fd/N)."""
    script = work / "a.sh"
    ran = work / "ran"
    script.write_text(f"#!/bin/sh\necho ran >> {ran}\n")
    script.chmod(0o755)
    link = work / "link.sh"
    link.symlink_to(script)
    agent.apply("xm-sh", host_policy("xm-sh", f"exec: {{deny: ['{script}']}}"))
    try:
        want = mapped(tiers["exec"])
        assert in_child(lambda: os.execv(script, [str(script)])) == want
        assert in_child(lambda: os.execv(link, [str(link)])) == want

        def fexecve() -> None:
            fd = os.open(script, os.O_RDONLY)  # not close-on-exec: sh opens /dev/fd/N
            os.set_inheritable(fd, True)
            os.execve(fd, [str(script)], dict(os.environ))

        # the kernel refuses it on the LSM tier; on the kill tier sh must open /dev/fd/N,
        # which the guests' devtmpfs lacks (sh then fails to open it: nothing runs either)
        if tiers["exec"] == "lsm-deny" or Path("/dev/fd").exists():
            assert in_child(fexecve) == want
        assert not ran.exists(), "the script ran"
        action = expected_action(tiers["exec"])
        # LSM: bprm_check_security sees the script file itself (no `via`); kill tier: the
        # exec by path matches the filename, the others the interpreter's open of it
        if tiers["exec"] == "lsm-deny":
            agent.wait_event(via_event("xm-sh", "exec", action, str(script), None))
        else:
            agent.wait_event(via_event("xm-sh", "exec", action, str(script), "script"))
        # `sh script` is a read, not an exec: it runs (docs/policy.md)
        assert subprocess.run(["/bin/sh", str(script)], check=False).returncode == 0
        assert ran.exists()
    finally:
        agent.delete("xm-sh")


def test_monitor_mode_lets_mappings_through(agent: AgentProc, work: Path) -> None:
    lib = work / "watched.so"
    shutil.copy2(a_library(), lib)
    prog = work / "watched-runc"
    shutil.copy2(runc_binary(), prog)
    agent.apply("xm-mon", host_policy("xm-mon", f"exec: {{deny: ['{lib}', '{prog}']}}",
                                      mode="monitor"))
    try:
        assert in_child(lambda: _mmap_exec(lib)) == ("ok", "mapped")
        assert in_child(lambda: _mprotect_exec(lib)) == ("ok", "mprotected")
        res = subprocess.run([LOADER, str(prog), "--version"], capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0 and "runc version" in res.stdout, res
        for binary, via in ((str(lib), "mmap"), (str(lib), "mprotect"), (str(prog), "mmap")):
            agent.wait_event(via_event("xm-mon", "exec", "would-block", binary, via))
    finally:
        agent.delete("xm-mon")


# ------------------------------------------------------------------ inside a runc container


def test_container_loader_and_script(agent: AgentProc, tiers: dict[str, str],
                                     work: Path) -> None:
    rootfs = build_rootfs(work / "rootfs")
    libdir = rootfs / LIBDIR.lstrip("/")
    libdir.mkdir(parents=True)
    for lib in ("ld-linux-x86-64.so.2", "libc.so.6", "libseccomp.so.2"):
        shutil.copy2(os.path.realpath(f"{LIBDIR}/{lib}"), libdir / lib)
    (rootfs / "lib64").mkdir()
    (rootfs / "lib64/ld-linux-x86-64.so.2").symlink_to(f"{LIBDIR}/ld-linux-x86-64.so.2")
    (rootfs / "usr/bin").mkdir(parents=True)
    shutil.copy2(runc_binary(), rootfs / "usr/bin/denied")
    agent.apply("xm-ctr", ctr_policy("xm-ctr", "mr-xmap-*", """
exec: {deny: [/usr/bin/denied, /tmp/a.sh]}
"""))
    try:
        script = (
            "/lib64/ld-linux-x86-64.so.2 /usr/bin/denied --version; echo lib64=$?; "
            f"{LIBDIR}/ld-linux-x86-64.so.2 --library-path {LIBDIR} /usr/bin/denied "
            "--version; echo libpath=$?; "
            "printf '#!/bin/sh\\necho script-ran\\n' > /tmp/a.sh; chmod +x /tmp/a.sh; "
            "cd /tmp; ./a.sh; echo relative=$?; ln -s a.sh /tmp/l.sh; /tmp/l.sh; "
            "echo link=$?; sh /tmp/a.sh >/dev/null; echo read=$?")
        with run_runc("mr-xmap-1", ["sh", "-c", script], rootfs=rootfs) as ctr:
            res = ctr.wait()
        out = res.stdout
        assert "runc version" not in out and "script-ran" not in out, res
        assert "read=0" in out, res
        if tiers["exec"] == "lsm-deny":
            for k, v in (("lib64", "127"), ("libpath", "127"), ("relative", "126"),
                         ("link", "126")):
                assert f"{k}={v}" in out, res
            assert "not permitted" in res.stderr.lower(), res
        else:
            for k in ("lib64", "libpath", "relative", "link"):
                assert f"{k}=137" in out, res
        action = expected_action(tiers["exec"])
        ev = agent.wait_event(via_event("xm-ctr", "exec", action, "/usr/bin/denied", "mmap"))
        assert ev["container"]["id"] == "mr-xmap-1"
        agent.wait_event(via_event("xm-ctr", "exec", action, "/tmp/a.sh",
                                   None if tiers["exec"] == "lsm-deny" else "script"))
    finally:
        agent.delete("xm-ctr")
