"""File rules by identity in REAL runc containers (issue 13, must-have 1), the way an
attacker inside the container would walk around a path rule. Root only; one agent per
module. This host's tier: the open is killed after the fact, a change by identity is
killed after the fact and what it left is undone (tests/kernels/guest_tests/test_identity.py
runs the same techniques host-scoped on every kernel of the matrix, EPERM where BPF LSM is).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import SHADOW_MARKER, WAIT_GO, build_rootfs, run_runc
from tests.helpers.policies import ctr_policy as policy
from tests.helpers.policies import for_container as _for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProc]:
    with AgentProc() as a:
        yield a


def _rootfs() -> Path:
    root = build_rootfs(Path(tempfile.mkdtemp(prefix="moray-ident-rootfs-")) / "rootfs")
    (root / "etc" / "bar-secret").write_text(SHADOW_MARKER + "-bar\n")
    (root / "root" / "p").write_text("/tmp/evil.so\n")
    return root


def test_hard_link_to_shadow_never_prints_it(agent: AgentProc) -> None:
    """`ln /etc/shadow /root/l; cat /root/l`: the link is killed (a new name for a read-
    protected file), and whatever name exists, cat through it is killed by identity."""
    agent.apply("id-ln", policy("id-ln", "mr-id-ln*", """
files: {deny: [{path: /etc/shadow, access: read}]}
"""))
    try:
        # the container stays until the agent has reported: the residue of a change is
        # looked at through a live process of the container (one that exited first is
        # reported as unknown, docs/policy.md)
        with run_runc("mr-id-ln", ["sh", "-c", "ln /etc/shadow /root/l; echo ln=$?; "
                                   "cat /root/l; echo cat=$?; echo done; " + WAIT_GO]) as ctr:
            ctr.start()
            ev = agent.wait_event(lambda e: _for(e, "mr-id-ln", "file-change", "killed"))
            (ctr.bundle.parent / "rootfs" / "tmp" / "go").touch()
            res = ctr.wait()
        assert SHADOW_MARKER not in res.stdout + res.stderr
        assert "ln=137" in res.stdout and "done" in res.stdout, res
        enf = enforcement(ev)
        assert enf["path"] == "/etc/shadow" and enf["access"] == "link"
        assert enf["rule"] == "files.deny: /etc/shadow (read)"
        assert any("hard link" in x for x in enf["residue"]["left"]), enf["residue"]
        # the link the killed call made cannot be read either
        assert "cat=137" in res.stdout, res
        ev = agent.wait_event(lambda e: _for(e, "mr-id-ln", "file", "killed"))
        assert enforcement(ev)["path"] == "/root/l"
        assert enforcement(ev)["file"]["covered_path"] == "/etc/shadow"
    finally:
        agent.delete("id-ln")


def test_moved_secret_stays_unreadable(agent: AgentProc) -> None:
    """`mv /etc/bar-secret /root/x; cat /root/x`: a read rule does not forbid the move,
    but the file keeps its identity."""
    agent.apply("id-mv", policy("id-mv", "mr-id-mv*", """
files: {deny: [{path: /etc/bar-secret, access: read}]}
"""))
    try:
        with run_runc("mr-id-mv", ["sh", "-c", "mv /etc/bar-secret /root/x; echo mv=$?; "
                                   "cat /root/x; echo cat=$?"], rootfs=_rootfs()) as ctr:
            res = ctr.wait()
        assert SHADOW_MARKER not in res.stdout + res.stderr
        assert "mv=0" in res.stdout and "cat=137" in res.stdout, res
        ev = agent.wait_event(lambda e: _for(e, "mr-id-mv", "file", "killed"))
        assert enforcement(ev)["path"] == "/root/x"
        assert enforcement(ev)["rule"] == "files.deny: /etc/bar-secret (read)"
    finally:
        agent.delete("id-mv")


@pytest.mark.parametrize("how", ["mv /root/p /etc/ld.so.preload",
                                 "cd /etc && mv /root/p ld.so.preload",
                                 "ln -s /etc /tmp/e && mv /root/p /tmp/e/ld.so.preload"])
def test_file_moved_into_etc_is_taken_out(agent: AgentProc, how: str) -> None:
    """A rename into a write-protected prefix is a write to it: killed, and the file the
    killed call installed is moved out of /etc (to the filesystem's .moray-quarantine)."""
    name = f"mr-id-in-{abs(hash(how)) % 1000}"
    agent.apply("id-in", policy("id-in", "mr-id-in-*", """
files: {deny: [{path: /etc/*, access: write}]}
"""))
    try:
        rootfs = _rootfs()
        # the container stays up a moment: the agent reaches its files through its processes
        with run_runc(name, ["sh", "-c", f"{how}; echo mv=$?; cat /etc/passwd | head -1; "
                             "sleep 2"], rootfs=rootfs) as ctr:
            res = ctr.wait()
            assert "mv=137" in res.stdout, res
            assert "root:x:0:0" in res.stdout  # reading /etc stays allowed
            ev = agent.wait_event(lambda e: _for(e, name, "file-change", "killed"))
            enf = enforcement(ev)
            assert enf["path"] == "/etc" and enf["rule"] == "files.deny: /etc/* (write)"
            assert "/etc/ld.so.preload added" in enf["residue"]["left"], enf
            assert any(x.startswith("/etc/ld.so.preload moved to /.moray-quarantine/")
                       for x in enf["residue"]["undone"]), enf
        assert not (rootfs / "etc" / "ld.so.preload").exists()
        assert list((rootfs / ".moray-quarantine").iterdir())
    finally:
        agent.delete("id-in")


def test_benign_container_under_identity_rules(agent: AgentProc) -> None:
    """Reading /etc, writing /tmp and /root, linking and renaming outside the covered
    paths: nothing is blocked."""
    agent.apply("id-benign", policy("id-benign", "mr-id-benign*", """
files: {deny: [{path: /etc/*, access: write}, {path: /etc/shadow, access: read}]}
"""))
    try:
        script = ("cat /etc/passwd >/dev/null && ls /etc >/dev/null && echo a >/tmp/a && "
                  "ln /tmp/a /tmp/b && mv /tmp/b /root/c && chmod 600 /root/c && "
                  "cp /etc/passwd /tmp/p && rm /tmp/a /root/c && echo ok")
        with run_runc("mr-id-benign", ["sh", "-c", script]) as ctr:
            res = ctr.wait()
        assert res.exit_code == 0 and "ok" in res.stdout, res
        assert not [e for e in agent.events()
                    if _for(e, "mr-id-benign", "file-change", "killed")
                    or _for(e, "mr-id-benign", "file", "killed")]
    finally:
        agent.delete("id-benign")


def test_repair_after_a_restart_does_not_kill_the_agent(agent: AgentProc) -> None:
    """A restarted agent adopts the pinned enforcement programs of the previous one: its
    own repairs of a covered file (here: a mode put back) must not be refused as a change
    (the agent's pid reaches the kernel through a map, not a load-time constant)."""
    import signal

    from tests.kernels.guest_tests.test_tiers import host_policy, in_child

    work = Path(tempfile.mkdtemp(prefix="moray-ident-restart-"))
    etc = work / "etc"
    etc.mkdir()
    target = etc / "conf"
    target.write_text("x")
    target.chmod(0o644)
    agent.apply("id-restart", host_policy("id-restart",
                                          f"files: {{deny: [{{path: '{etc}/*', access: write}}]}}"))
    try:
        agent.kill()   # SIGKILL: the pinned programs keep enforcing
        agent.start()  # adopts them (same build)
        assert in_child(lambda: os.chmod(target, 0o4755)) == ("signal", signal.SIGKILL)
        ev = agent.wait_event(lambda e: enforcement(e).get("policy") == "id-restart"
                              and enforcement(e).get("kind") == "file-change")
        assert enforcement(ev)["residue"]["undone"] == [f"{target}: mode 644 restored"]
        assert target.stat().st_mode & 0o7777 == 0o644
        assert agent.proc is not None and agent.proc.poll() is None, "the agent was killed"
    finally:
        agent.delete("id-restart")
