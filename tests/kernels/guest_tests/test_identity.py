"""File rules hold through every other name of the same file (issue 13, must-haves 1 and 8),
on whatever kernel this runs (tests/kernels/run-matrix: this host, Debian 6.1 and 6.12
with BPF LSM). Root only.

Each technique runs in a forked child on host-scoped policies over private temp dirs:
  lsm-deny tier: the call fails with EPERM and nothing changed;
  kill-after tier (this host, 6.13+ timestamp tracepoints): the child dies by SIGKILL, the
    enforce event says what it left (`residue`) and what the agent undid.
Reads through another name (a hard link made before the policy, a renamed file, a bind
mount, a chroot) are refused at open by the file's identity on both tiers.
"""

from __future__ import annotations

import errno
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
from tests.kernels.guest_tests.test_tiers import (
    SECRET,
    expected_action,
    for_policy,
    host_policy,
    in_child,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="module")
def changes_seen(tiers: dict[str, str]) -> bool:
    """Whether this kernel lets moray see a change by identity (`probe`'s file-change
    tier): BPF LSM, fmod_ret on the security_* functions (no BPF LSM, trampolines work), or
    the timestamp tracepoints of 6.13+ (kill-after)."""
    return tiers["file-change"] != "none"


DENY_TIERS = ("lsm-deny", "fmodret-deny")


def change_refused(tiers: dict[str, str]) -> bool:
    """A change by identity is refused before it happens (EPERM) on this kernel."""
    return tiers["file-change"] in DENY_TIERS


@pytest.fixture()
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moray-ident-"))
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d / "bind")], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)


def read(p: Path | str) -> str:
    fd = os.open(p, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def refused(tiers: dict[str, str], outcome: tuple[str, object], kind: str = "file") -> None:
    """The child was refused the way the tier promises."""
    if tiers[kind] in DENY_TIERS:
        assert outcome == ("errno", errno.EPERM), outcome
    else:
        assert outcome == ("signal", signal.SIGKILL), outcome


def applied(agent: AgentProc, name: str, body: str, mode: str = "enforce") -> None:
    agent.apply(name, host_policy(name, body, mode))
    # identities are written right after the publication the status file reports
    agent.wait_status(lambda st: any(p["name"] == name for p in st.get("policies", [])))


def change_event(agent: AgentProc, name: str, tiers: dict[str, str],
                 pred: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
    action = expected_action(tiers["file-change"])
    ev = agent.wait_event(lambda e: for_policy(name, "file-change", action)(e)
                          and pred(enforcement(e)))
    return enforcement(ev)


# ------------------------------------------------------------------ reads by another name


def test_hard_link_made_before_the_policy(agent: AgentProc, tiers: dict[str, str],
                                          work: Path) -> None:
    secret = work / "secret"
    secret.write_text(SECRET)
    link = work / "innocent-name"
    os.link(secret, link)
    applied(agent, "id-link-read", f"files: {{deny: [{{path: '{secret}', access: read}}]}}")
    try:
        out = in_child(lambda: read(link))
        refused(tiers, out)
        assert SECRET not in str(out[1])
        ev = agent.wait_event(for_policy("id-link-read", "file", expected_action(tiers["file"])))
        enf = enforcement(ev)
        assert enf["path"] == str(link)                      # the name the task used
        assert enf["file"]["covered_path"] == str(secret)    # the file the rule covers
        assert enf["rule"] == f"files.deny: {secret} (read)"
    finally:
        agent.delete("id-link-read")


def test_renamed_out_of_a_protected_dir_stays_protected(agent: AgentProc,
                                                       tiers: dict[str, str],
                                                       work: Path) -> None:
    prot = work / "prot"
    prot.mkdir()
    (prot / "bar-secret").write_text(SECRET)
    applied(agent, "id-rename-out", f"files: {{deny: [{{path: '{prot}/*', access: read}}]}}")
    try:
        moved = work / "x"
        # only reads are denied: moving the file is allowed, reading it anywhere is not
        assert in_child(lambda: os.rename(prot / "bar-secret", moved)) == ("ok", None)
        out = in_child(lambda: read(moved))
        refused(tiers, out)
        assert SECRET not in str(out[1])
    finally:
        agent.delete("id-rename-out")


def test_bind_mount_of_a_protected_file(agent: AgentProc, tiers: dict[str, str],
                                        work: Path) -> None:
    secret = work / "secret"
    secret.write_text(SECRET)
    bind = work / "bind"
    bind.write_text("")
    subprocess.run(["mount", "--bind", str(secret), str(bind)], check=True)
    applied(agent, "id-bind", f"files: {{deny: [{{path: '{secret}', access: read}}]}}")
    try:
        out = in_child(lambda: read(bind))
        refused(tiers, out)
        assert SECRET not in str(out[1])
    finally:
        agent.delete("id-bind")


def test_chroot_sees_host_paths(agent: AgentProc, tiers: dict[str, str], work: Path) -> None:
    """A host rule covers the host's file seen from inside a chroot, and does not fire on
    the chroot's own file of the same name (must-have 8)."""
    jail = work / "jail"
    (jail / "etc").mkdir(parents=True)
    (jail / "secret").write_text(SECRET)
    own = f"/etc/moray-chroot-{os.getpid()}"
    (jail / own.lstrip("/")).write_text("the chroot's own")
    applied(agent, "id-chroot", f"files: {{deny: [{{path: '{jail}/secret', access: read}}, "
                                f"{{path: '{own}', access: read}}]}}")
    try:
        def in_jail(p: str) -> Callable[[], str]:
            def act() -> str:
                os.chroot(jail)
                os.chdir("/")
                return read(p)
            return act

        out = in_child(in_jail("/secret"))
        refused(tiers, out)
        assert SECRET not in str(out[1])
        ev = agent.wait_event(for_policy("id-chroot", "file", expected_action(tiers["file"])))
        assert enforcement(ev)["path"] == f"{jail}/secret"   # the path from the namespace root
        assert in_child(in_jail(own)) == ("ok", "the chroot's own")
    finally:
        agent.delete("id-chroot")


# ------------------------------------------------------------------ changes by identity


def test_new_name_for_a_protected_file(agent: AgentProc, tiers: dict[str, str],
                                       changes_seen: bool, work: Path) -> None:
    if not changes_seen:
        pytest.skip("no hook sees a change by identity on this kernel (probe: file-change none)")
    secret = work / "secret"
    secret.write_text(SECRET)
    applied(agent, "id-link-new", f"files: {{deny: [{{path: '{secret}', access: read}}]}}")
    try:
        link = work / "l"
        refused(tiers, in_child(lambda: os.link(secret, link)), "file-change")
        enf = change_event(agent, "id-link-new", tiers)
        assert enf["path"] == str(secret) and enf["access"] == "link"
        assert enf["rule"] == f"files.deny: {secret} (read)"
        if change_refused(tiers):
            assert not link.exists()
        else:
            assert enf["syscall"] == "link"
            assert any("hard link" in x for x in enf["residue"]["left"]), enf
            # whatever name it got, the file stays unreadable
            refused(tiers, in_child(lambda: read(link)))
    finally:
        agent.delete("id-link-new")


@pytest.mark.parametrize("how", ["absolute", "symlinked-dir", "relative"])
def test_move_into_a_protected_dir(agent: AgentProc, tiers: dict[str, str],
                                   changes_seen: bool, work: Path, how: str) -> None:
    if not changes_seen:
        pytest.skip("no hook sees a change by identity on this kernel (probe: file-change none)")
    etc = work / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0")
    payload = work / "p"
    payload.write_text("/tmp/evil.so")
    (work / "elink").symlink_to(etc)
    name = f"id-move-in-{how}"
    applied(agent, name, f"files: {{deny: [{{path: '{etc}/*', access: write}}]}}")
    try:
        def move() -> None:
            if how == "absolute":
                os.rename(payload, etc / "ld.so.preload")
            elif how == "symlinked-dir":
                os.rename(payload, work / "elink" / "ld.so.preload")
            else:
                os.chdir(etc)
                os.rename(payload, "ld.so.preload")

        refused(tiers, in_child(move), "file-change")
        enf = change_event(agent, name, tiers)
        assert enf["path"] == str(etc) and enf["rule"] == f"files.deny: {etc}/* (write)"
        if not change_refused(tiers):
            assert enf["syscall"] in ("rename", "renameat", "renameat2")
            assert f"{etc}/ld.so.preload added" in enf["residue"]["left"], enf
            assert any("moved to" in x for x in enf["residue"]["undone"]), enf
        # nothing is left in the protected directory either way
        assert sorted(os.listdir(etc)) == ["passwd"]
    finally:
        agent.delete(name)


def test_chmod_and_unlink_of_a_protected_file(agent: AgentProc, tiers: dict[str, str],
                                              changes_seen: bool, work: Path) -> None:
    if not changes_seen:
        pytest.skip("no hook sees a change by identity on this kernel (probe: file-change none)")
    etc = work / "etc"
    etc.mkdir()
    passwd = etc / "passwd"
    passwd.write_text("root:x:0:0")
    passwd.chmod(0o644)
    applied(agent, "id-chmod", f"files: {{deny: [{{path: '{etc}/*', access: write}}]}}")
    try:
        refused(tiers, in_child(lambda: os.chmod(passwd, 0o4777)), "file-change")
        enf = change_event(agent, "id-chmod", tiers, lambda e: e.get("path") == str(passwd))
        assert passwd.stat().st_mode & 0o7777 == 0o644   # refused, or put back
        if not change_refused(tiers):
            assert enf["residue"]["undone"] == [f"{passwd}: mode 644 restored"], enf
        refused(tiers, in_child(lambda: os.unlink(passwd)), "file-change")
        enf = change_event(agent, "id-chmod", tiers, lambda e: e.get("path") == str(etc))
        if change_refused(tiers):
            assert passwd.exists()
        else:
            assert f"{passwd} removed or moved away" in enf["residue"]["left"], enf
    finally:
        agent.delete("id-chmod")


def test_monitor_mode_reports_and_allows(agent: AgentProc, tiers: dict[str, str],
                                         changes_seen: bool, work: Path) -> None:
    if not changes_seen:
        pytest.skip("no hook sees a change by identity on this kernel (probe: file-change none)")
    secret = work / "secret"
    secret.write_text(SECRET)
    applied(agent, "id-mon", f"files: {{deny: [{{path: '{secret}', access: read}}]}}",
            mode="monitor")
    try:
        link = work / "l"
        assert in_child(lambda: os.link(secret, link)) == ("ok", None)
        assert in_child(lambda: read(link)) == ("ok", SECRET)
        ev = agent.wait_event(for_policy("id-mon", "file-change", "would-block"))
        assert enforcement(ev)["path"] == str(secret)
        ev = agent.wait_event(for_policy("id-mon", "file", "would-block"))
        assert enforcement(ev)["file"]["covered_path"] == str(secret)
    finally:
        agent.delete("id-mon")


def test_truncating_open_is_reported(agent: AgentProc, tiers: dict[str, str],
                                     work: Path) -> None:
    """`: > passwd` under a write rule: refused at open (LSM), or killed at the open's exit
    with the truncation it already made reported (kill-after: the content is not back)."""
    etc = work / "etc"
    etc.mkdir()
    passwd = etc / "passwd"
    passwd.write_text("root:x:0:0\n")
    applied(agent, "id-trunc", f"files: {{deny: [{{path: '{etc}/*', access: write}}]}}")
    try:
        refused(tiers, in_child(lambda: os.close(os.open(passwd, os.O_WRONLY | os.O_TRUNC))))
        ev = agent.wait_event(for_policy("id-trunc", "file", expected_action(tiers["file"])))
        if tiers["file"] == "lsm-deny":
            assert passwd.read_text() == "root:x:0:0\n"
        else:
            left = enforcement(ev)["residue"]["left"]
            assert left == [f"{passwd}: size 11 -> 0 bytes (content is not restored)"], left
    finally:
        agent.delete("id-trunc")


def test_hard_link_of_a_denied_binary(agent: AgentProc, tiers: dict[str, str],
                                      work: Path) -> None:
    """An exec deny holds for a hard link of the binary, made before or after the policy,
    whatever its name (`ln /usr/bin/nc /tmp/x; /tmp/x`)."""
    from tests.helpers.containers import BUSYBOX

    denied = work / "denied-touch"
    shutil.copy2(BUSYBOX, denied)
    before = work / "innocent-before"
    os.link(denied, before)
    agent.apply("id-exec", host_policy("id-exec", f"exec: {{deny: ['{denied}']}}"))
    agent.wait_status(lambda st: any(p["name"] == "id-exec" for p in st.get("policies", [])))
    try:
        after = work / "innocent-after"
        os.link(denied, after)
        for link in (before, after):
            ran = work / f"ran-{link.name}"
            out = in_child(lambda link=link, ran=ran: os.execv(link, ["touch", str(ran)]))
            if tiers["exec"] == "lsm-deny":
                assert out == ("errno", errno.EPERM), (link, out)
            else:
                assert out == ("signal", signal.SIGKILL), (link, out)
            assert not ran.exists(), f"{link.name} ran"
        ev = agent.wait_event(lambda e: for_policy("id-exec", "exec",
                                                   expected_action(tiers["exec"]))(e)
                              and enforcement(e).get("binary") == str(after))
        enf = enforcement(ev)
        assert enf["rule"] == f"exec.deny: {denied}"
        assert enf["file"]["covered_path"] == str(denied)
    finally:
        agent.delete("id-exec")


def test_file_created_in_a_protected_dir_is_removed(agent: AgentProc, tiers: dict[str, str],
                                                    work: Path) -> None:
    """`: > etc/new` under a write rule on etc/*: refused (LSM, fmod_ret), or killed at the
    open's exit with the empty file the call created removed by the agent (kill-after)."""
    etc = work / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0\n")
    applied(agent, "id-creat", f"files: {{deny: [{{path: '{etc}/*', access: write}}]}}")
    try:
        new = etc / "ld.so.preload"
        # LSM and fmod_ret tiers: refused at the covered directory's write permission (a
        # change of it); kill tier: the open is checked at its exit, by the new file's
        # covered path
        kind = "file-change" if change_refused(tiers) else "file"
        refused(tiers, in_child(lambda: os.close(os.open(new, os.O_WRONLY | os.O_CREAT))),
                kind)
        ev = agent.wait_event(for_policy("id-creat", kind, expected_action(tiers[kind])))
        if change_refused(tiers):
            assert enforcement(ev)["path"] == str(etc)
        else:
            assert enforcement(ev)["residue"]["undone"] == [
                f"{new} removed (created by the killed call)"], enforcement(ev)
        assert sorted(os.listdir(etc)) == ["passwd"]
    finally:
        agent.delete("id-creat")
