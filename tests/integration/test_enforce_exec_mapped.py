"""Exec rules hold however the code gets mapped (issue 13, must-have 2), in REAL runc
containers on this kernel (kill tier; root only).

Exec deny and drift must also hold when a file's code is mapped executable without an
exec of it: the dynamic loader run as a program (`ld.so /usr/bin/head`, by either of its
paths, with `--library-path`), LD_PRELOAD and dlopen of a drifted library, mmap(PROT_EXEC)
of a file, mmap(PROT_READ) then mprotect(PROT_EXEC) (one VMA, and one mprotect spanning an
anonymous page and the file's page), mmap(PROT_READ) under personality READ_IMPLIES_EXEC;
and drift must hold for scripts written in the container and run directly (`#!`: by
absolute and relative path, an image script modified in the container so it is copied
up, through fexecve and execveat). Each check: (a) it did
not run (exit 137, no marker, no output of the code), (b) nothing is left (the process
died before returning to user space: the mapping and the open die with it), (c) an
`enforce` event names the mapped or script file, the rule and how (`via`). Monitor mode:
the same run, with would-block events. The benign workload of test_detect_benign runs
under deny, allow-list and drift policies at once with no enforce event.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import RunResult, build_rootfs, run_runc
from tests.helpers.mapped import build_programs, glibc_image, overlay
from tests.helpers.policies import ctr_policy as policy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

ENV = ("PATH=/bin:/usr/bin:/usr/local/bin",)


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProc]:
    with AgentProc() as a:
        yield a


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="moray-xmap-"))
    try:
        yield glibc_image(work / "image", build_programs(work / "build"))
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


def run(name: str, script: str, rootfs: Path) -> RunResult:
    with run_runc(name, ["sh", "-c", script], rootfs=rootfs, env=ENV) as ctr:
        return ctr.wait()


def rcs(res: RunResult) -> dict[str, str]:
    """`name=$?` lines of the container's output."""
    out = {}
    for line in res.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.isidentifier() and v.isdigit():
            out[k] = v
    return out


def enforces(agent: AgentProc, container: str) -> list[dict[str, Any]]:
    return [e for e in agent.events() if e.get("type") == "enforce"
            and (e.get("container") or {}).get("id") == container]


def want(container: str, kind: str, action: str, binary: str,
         via: str | None) -> Callable[[dict[str, Any]], bool]:
    def pred(ev: dict[str, Any]) -> bool:
        e = enforcement(ev)
        return (ev.get("type") == "enforce"
                and (ev.get("container") or {}).get("id") == container
                and e.get("kind") == kind and e.get("action") == action
                and e.get("binary") == binary and e.get("via") == via)
    return pred


# ------------------------------------------------------------------ the dynamic loader


LOADER_SCRIPT = """
/usr/bin/head -c 4 /etc/passwd; echo direct=$?
/lib64/ld-linux-x86-64.so.2 /usr/bin/head -c 4 /etc/passwd; echo lib64=$?
/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /lib/x86_64-linux-gnu \
    /usr/bin/head -c 4 /etc/passwd; echo libpath=$?
/bin/head -c 4 /etc/passwd >/dev/null; echo neighbour=$?
"""


def test_denied_binary_through_the_loader(agent: AgentProc, image: Path) -> None:
    agent.apply("xm-deny", policy("xm-deny", "mr-xm-deny-*", """
exec: {deny: [/usr/bin/head]}
"""))
    try:
        res = run("mr-xm-deny-1", LOADER_SCRIPT, image)
        rc = rcs(res)
        assert rc == {"direct": "137", "lib64": "137", "libpath": "137", "neighbour": "0"}, res
        assert "root" not in res.stdout, res  # head printed nothing
        ev = agent.wait_event(want("mr-xm-deny-1", "exec", "killed", "/usr/bin/head", "mmap"))
        enf = enforcement(ev)
        assert enf["rule"] == "exec.deny: /usr/bin/head" and enf["policy"] == "xm-deny"
        assert "none of the mapped code ran" in enf["note"]
        # one event per loader run (and the direct exec's own)
        agent.wait_event(lambda e: len([x for x in enforces(agent, "mr-xm-deny-1")
                                        if enforcement(x).get("via") == "mmap"]) >= 2)
    finally:
        agent.delete("xm-deny")


# ------------------------------------------------------------------ drift, mapped


MAPPED_SCRIPT = """
cp /usr/local/lib/evil.so /tmp/evil.so
LD_PRELOAD=/tmp/evil.so /usr/bin/head -c 4 /etc/passwd; echo preload=$?
/usr/local/bin/dl /tmp/evil.so; echo dlopen=$?
/usr/local/bin/mapx mmap /tmp/evil.so; echo mmap=$?
/usr/local/bin/mapx mprotect /tmp/evil.so; echo mprotect=$?
/usr/local/bin/mapx span /tmp/evil.so; echo span=$?
/usr/local/bin/mapx readexec /tmp/evil.so; echo readexec=$?
cp /usr/bin/head /tmp/h; /lib64/ld-linux-x86-64.so.2 /tmp/h -c 4 /etc/passwd; echo loader=$?
[ -e /tmp/lib-ran ]; echo marker=$?
/usr/bin/head -c 4 /etc/passwd >/dev/null; echo image=$?
/usr/local/bin/mapx mprotect /usr/local/lib/evil.so; echo imagemap=$?
"""


def test_drifted_code_mapped(agent: AgentProc, image: Path) -> None:
    agent.apply("xm-drift", policy("xm-drift", "mr-xm-drift-*", "exec: {drift: block}"))
    try:
        with overlay(image) as rootfs:
            res = run("mr-xm-drift-1", MAPPED_SCRIPT, rootfs)
            upper_left = sorted(p.name for p in (rootfs / "tmp").iterdir())
        rc = rcs(res)
        assert rc == {"preload": "137", "dlopen": "137", "mmap": "137", "mprotect": "137",
                      "span": "137", "readexec": "137", "loader": "137", "marker": "1",
                      "image": "0", "imagemap": "0"}, res
        assert "LIB-RAN" not in res.stdout and "MAPPED-EXEC\n" * 2 not in res.stdout, res
        assert res.stdout.count("MAPPED-EXEC") == 1, res  # the image file's mapping only
        assert "lib-ran" not in upper_left, upper_left
        c = "mr-xm-drift-1"
        for binary, via in (("/tmp/evil.so", "mmap"), ("/tmp/evil.so", "mprotect"),
                            ("/tmp/h", "mmap")):
            ev = agent.wait_event(want(c, "drift", "killed", binary, via))
            assert enforcement(ev)["rule"] == "exec.drift: block"
        # every killed run has its event: preload, dlopen, mmap, readexec (4 mmap of
        # evil.so), the two mprotect variants, the loader
        agent.wait_event(lambda e: len(enforces(agent, c)) >= 7)
    finally:
        agent.delete("xm-drift")


# ------------------------------------------------------------------ drift, scripts


SCRIPTS = r"""
printf '#!/bin/sh\necho script-ran > /tmp/s1\n' > /tmp/a.sh; chmod +x /tmp/a.sh
/tmp/a.sh; echo direct=$?
(cd /tmp && ./a.sh); echo relative=$?
/usr/local/bin/tool.sh; echo image=$?
echo 'echo hacked > /tmp/s2' >> /usr/local/bin/tool.sh
/usr/local/bin/tool.sh; echo copiedup=$?
/usr/local/bin/fexec fexecve /tmp/a.sh; echo fexecve=$?
/usr/local/bin/fexec execveat /tmp/a.sh; echo execveat=$?
[ -e /tmp/s1 ] || [ -e /tmp/s2 ]; echo marker=$?
"""


def test_drifted_scripts_run_directly(agent: AgentProc, image: Path) -> None:
    agent.apply("xm-script", policy("xm-script", "mr-xm-script-*", "exec: {drift: block}"))
    try:
        with overlay(image) as rootfs:
            res = run("mr-xm-script-1", SCRIPTS, rootfs)
            # a dropped script as the container's first exec (held until classified)
            entry = rootfs / "tmp" / "entry.sh"
            entry.write_text("#!/bin/sh\necho entry-ran\n")
            entry.chmod(0o755)
            with run_runc("mr-xm-script-2", ["/tmp/entry.sh"], rootfs=rootfs, env=ENV) as ctr:
                first = ctr.wait()
        assert first.exit_code == 137 and "entry-ran" not in first.stdout, first
        agent.wait_event(want("mr-xm-script-2", "drift", "killed", "/tmp/entry.sh", "script"))
        rc = rcs(res)
        assert rc == {"direct": "137", "relative": "137", "image": "0", "copiedup": "137",
                      "fexecve": "137", "execveat": "137", "marker": "1"}, res
        assert "tool-ok" in res.stdout and "hacked" not in res.stdout, res
        c = "mr-xm-script-1"
        for binary in ("/tmp/a.sh", "/usr/local/bin/tool.sh"):
            ev = agent.wait_event(want(c, "drift", "killed", binary, "script"))
            enf = enforcement(ev)
            assert enf["rule"] == "exec.drift: block"
            assert "no line of the script ran" in enf["note"]
        agent.wait_event(lambda e: len(enforces(agent, c)) >= 5)
    finally:
        agent.delete("xm-script")


def test_allow_list_and_the_loader(agent: AgentProc, image: Path) -> None:
    """An allow-list does not apply to mappings (every program maps its libraries), the
    loader run as a program is refused unless listed, a script not listed is refused."""
    agent.apply("xm-allow", policy("xm-allow", "mr-xm-allow-*", """
exec: {allow: ["/bin/*", /usr/bin/head, "/usr/local/bin/*"]}
"""))
    try:
        script = r"""
/usr/bin/head -c 4 /etc/passwd; echo; echo head=$?
/usr/local/bin/dl /usr/local/lib/evil.so; echo dlopen=$?
/lib64/ld-linux-x86-64.so.2 /usr/bin/head -c 4 /etc/passwd; echo loader=$?
printf '#!/bin/sh\necho script-ran\n' > /tmp/a.sh; chmod +x /tmp/a.sh
/tmp/a.sh; echo script=$?
"""
        res = run("mr-xm-allow-1", script, image)
        rc = rcs(res)
        assert rc == {"head": "0", "dlopen": "0", "loader": "137", "script": "137"}, res
        assert "LIB-RAN" in res.stdout and "script-ran" not in res.stdout, res
        c = "mr-xm-allow-1"
        ev = agent.wait_event(want(c, "exec", "killed",
                                   "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", None))
        assert enforcement(ev)["rule"] == "exec.allow: not listed"
        ev = agent.wait_event(want(c, "exec", "killed", "/tmp/a.sh", "script"))
        assert enforcement(ev)["rule"] == "exec.allow: not listed"
    finally:
        agent.delete("xm-allow")


def test_monitor_mode_lets_it_run(agent: AgentProc, image: Path) -> None:
    agent.apply("xm-mon", policy("xm-mon", "mr-xm-mon-*", """
exec: {deny: [/usr/bin/head], drift: block}
""", mode="monitor"))
    try:
        script = r"""
/lib64/ld-linux-x86-64.so.2 /usr/bin/head -c 4 /etc/passwd; echo; echo loader=$?
cp /usr/local/lib/evil.so /tmp/evil.so
/usr/local/bin/dl /tmp/evil.so; echo dlopen=$?
/usr/local/bin/mapx mprotect /tmp/evil.so; echo mprotect=$?
printf '#!/bin/sh\necho script-ran\n' > /tmp/a.sh; chmod +x /tmp/a.sh
/tmp/a.sh; echo script=$?
"""
        with overlay(image) as rootfs:
            res = run("mr-xm-mon-1", script, rootfs)
        rc = rcs(res)
        assert rc == {"loader": "0", "dlopen": "0", "mprotect": "0", "script": "0"}, res
        assert "root" in res.stdout and "LIB-RAN" in res.stdout, res
        assert "MAPPED-EXEC" in res.stdout and "script-ran" in res.stdout, res
        c = "mr-xm-mon-1"
        agent.wait_event(want(c, "exec", "would-block", "/usr/bin/head", "mmap"))
        for binary, via in (("/tmp/evil.so", "mmap"), ("/tmp/evil.so", "mprotect"),
                            ("/tmp/a.sh", "script")):
            agent.wait_event(want(c, "drift", "would-block", binary, via))
    finally:
        agent.delete("xm-mon")


# ------------------------------------------------------------------ benign


def test_benign_workload_under_deny_allow_and_drift(agent: AgentProc) -> None:
    """test_detect_benign's workload (shell scripts run with `sh`, python's http.server,
    wget; /usr bind-mounted from the host) on an overlay rootfs, under three enforcing
    policies at once: not one enforce event, the workload finishes."""
    from tests.integration.test_detect_benign import ENTRY, JOB

    work = Path(tempfile.mkdtemp(prefix="moray-xmben-"))
    netns = f"mrxm{os.getpid()}"
    names = "mr-xm-ben-*"
    for name, body in (("xm-ben-deny", "exec: {deny: [/bin/nc, /usr/bin/perl]}"),
                       ("xm-ben-allow", 'exec: {allow: ["/bin/*", "/usr/bin/*"]}'),
                       ("xm-ben-drift", "exec: {drift: block}")):
        agent.apply(name, policy(name, names, body))
    try:
        lower = build_rootfs(work / "image")
        for d in ("work", "usr"):
            (lower / d).mkdir(exist_ok=True)
        for link in ("lib", "lib64"):
            (lower / link).symlink_to(f"usr/{link}")
        (lower / "work" / "job.sh").write_text(JOB)
        (lower / "entry.sh").write_text(ENTRY.replace("exec sleep 600\n", "echo entry-done\n"))
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        usr: dict[str, object] = {"destination": "/usr", "type": "bind", "source": "/usr",
                                  "options": ["rbind", "ro"]}
        with overlay(lower) as rootfs, run_runc(
                "mr-xm-ben-1", ["/bin/sh", "/entry.sh"], rootfs=rootfs,
                network=f"/run/netns/{netns}", mounts=[usr],
                env=("PATH=/bin:/usr/bin", "HOME=/root")) as ctr:
            res = ctr.wait(120)
        assert "benign-done" in res.stdout and "entry-done" in res.stdout, res
        assert res.exit_code == 0, res
        # the first exec is held until the container is classified, then continued
        blocks = [enforcement(e) for e in enforces(agent, "mr-xm-ben-1")
                  if enforcement(e)["action"] != "held"]
        assert blocks == []
    finally:
        for name in ("xm-ben-deny", "xm-ben-allow", "xm-ben-drift"):
            agent.delete(name)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)
