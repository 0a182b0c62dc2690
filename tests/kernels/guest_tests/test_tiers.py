"""Each rule kind is enforced the way the tier `moray-agent probe` reports promises, on
whatever kernel this runs (tests/kernels/run-matrix boots Debian 6.1 and 6.12 under qemu,
where BPF LSM is usable, and runs this module on the host too). Root only.

Tier promises (docs/policy.md):
  exec  lsm-deny: execve() fails with EPERM, nothing of the binary runs;
        kill:     the process dies by SIGKILL before the new image's first instruction.
  file  lsm-deny: open() fails with EPERM, nothing is read;
        kill-after: the open completes, the process dies before it returns: nothing read.
  network cgroup-deny: connect() fails with EPERM, the server never sees the connection.
Monitor mode lets each action through and reports a would-block event.

Host-scoped checks run the denied action in a forked child, so the errno (or the signal)
is seen exactly; runc-container checks show the same from inside a real container. Every
denied path is private to the test (a copy of busybox, a file under a temp dir), so a
host-scoped policy touches nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import BUSYBOX, SHADOW_MARKER, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

SECRET = "moray-guest-secret-marker"


def policy(name: str, scope: str, body: str, mode: str = "enforce") -> str:
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  scope: {scope}\n  mode: {mode}\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines()))


def host_policy(name: str, body: str, mode: str = "enforce") -> str:
    return policy(name, "{host: true}", body, mode)


def ctr_policy(name: str, names: str, body: str, mode: str = "enforce") -> str:
    return policy(name, f"{{containers: {{names: ['{names}']}}}}", body, mode)


@pytest.fixture()
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moray-tier-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def in_child(action: Callable[[], object]) -> tuple[str, object]:
    """Run *action* in a forked child: ("signal", n) if the child was killed, ("errno", n)
    if it raised OSError, ("exit", status) if it exec'd an image that exited, ("ok",
    result) otherwise."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into pytest
        os.close(r)
        try:
            out: Any = ["ok", action()]
        except OSError as err:
            out = ["errno", err.errno]
        except BaseException as err:  # reported to the parent
            out = ["error", repr(err)]
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    if not data:  # the child exec'd another image, which exited
        return "exit", os.WEXITSTATUS(status)
    kind, value = json.loads(data)
    return kind, value


def for_policy(name: str, kind: str, action: str) -> Callable[[dict[str, Any]], bool]:
    def pred(ev: dict[str, Any]) -> bool:
        e = enforcement(ev)
        return (ev.get("type") == "enforce" and e.get("policy") == name
                and e.get("kind") == kind and e.get("action") == action)
    return pred


def _trail(agent: AgentProc, container: str) -> str:
    """What the agent did about *container*: its exec/enforce events and the engine's log
    lines (for a failure message)."""
    evs = [f"{e['type']} {e.get('process', {}).get('binary')} {enforcement(e)}"
           for e in agent.events()
           if (e.get("container") or {}).get("id") == container
           and e.get("type") in ("exec", "enforce")]
    logs = [line for line in agent.log_text().splitlines()
            if any(w in line for w in ("held", "classif", "pending", "container"))]
    return "\n".join(["events:", *evs, "agent log:", *logs[-40:]])


def expected_action(tier: str) -> str:
    return {"lsm-deny": "blocked", "cgroup-deny": "blocked",
            "fmodret-deny": "blocked"}.get(tier, "killed")


# ------------------------------------------------------------------ what the kernel offers


def test_probe_tier_follows_active_lsm_list(tiers: dict[str, str]) -> None:
    """LSM tier exactly when BPF LSM programs load *and* `bpf` is an active LSM."""
    lsm = Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    if "bpf" not in lsm:
        assert tiers["exec"] == "kill" and tiers["file"] == "kill-after", (lsm, tiers)
    if tiers["exec"] == "lsm-deny":
        assert "bpf" in lsm and tiers["file"] == "lsm-deny"
    assert tiers["network"] == "cgroup-deny"


# ------------------------------------------------------------------ host scope, exact errno


def test_exec_denied(agent: AgentProc, tiers: dict[str, str], work: Path) -> None:
    denied = work / "denied-touch"
    shutil.copy2(BUSYBOX, denied)
    allowed = work / "allowed-touch"
    shutil.copy2(BUSYBOX, allowed)
    agent.apply("t-exec", host_policy("t-exec", f"exec: {{deny: ['{denied}']}}"))
    try:
        ran = work / "ran"
        kind, value = in_child(lambda: os.execv(denied, ["touch", str(ran)]))
        if tiers["exec"] == "lsm-deny":
            assert (kind, value) == ("errno", errno.EPERM)
        else:
            assert (kind, value) == ("signal", signal.SIGKILL)
        assert not ran.exists(), "the denied binary ran"
        ev = agent.wait_event(for_policy("t-exec", "exec", expected_action(tiers["exec"])))
        assert enforcement(ev)["tier"] == tiers["exec"]
        assert enforcement(ev)["rule"] == f"exec.deny: {denied}"
        # the neighbour runs
        assert in_child(lambda: os.execv(allowed, ["touch", str(work / "ok")])) == ("exit", 0)
        assert (work / "ok").exists()
    finally:
        agent.delete("t-exec")


def test_file_read_denied(agent: AgentProc, tiers: dict[str, str], work: Path) -> None:
    secret = work / "secret"
    secret.write_text(SECRET)
    neighbour = work / "neighbour"
    neighbour.write_text("readable")
    agent.apply("t-file", host_policy(
        "t-file", f"files: {{deny: [{{path: '{secret}', access: read}}]}}"))
    try:
        def read(p: Path) -> str:
            fd = os.open(p, os.O_RDONLY)
            return os.read(fd, 4096).decode()

        kind, value = in_child(lambda: read(secret))
        if tiers["file"] == "lsm-deny":
            assert (kind, value) == ("errno", errno.EPERM)
        else:
            assert (kind, value) == ("signal", signal.SIGKILL)
        assert SECRET not in str(value)
        ev = agent.wait_event(for_policy("t-file", "file", expected_action(tiers["file"])))
        enf = enforcement(ev)
        assert enf["tier"] == tiers["file"] and enf["path"] == str(secret)
        assert ("note" in enf) == (tiers["file"] == "kill-after")
        assert in_child(lambda: read(neighbour)) == ("ok", "readable")
    finally:
        agent.delete("t-file")


class Server:
    """A loopback TCP server counting the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            c.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def _connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return "connected"


def test_connect_denied(agent: AgentProc, tiers: dict[str, str]) -> None:
    denied, allowed = Server(), Server()
    try:
        agent.apply("t-net", host_policy(
            "t-net", f"network: {{egress: {{deny: ['127.0.0.1/32:{denied.port}']}}}}"))
        try:
            assert in_child(lambda: _connect(denied.port)) == ("errno", errno.EPERM)
            assert in_child(lambda: _connect(allowed.port)) == ("ok", "connected")
            ev = agent.wait_event(for_policy("t-net", "network", "blocked"))
            assert enforcement(ev)["tier"] == tiers["network"] == "cgroup-deny"
            assert enforcement(ev)["dport"] == denied.port
            assert denied.accepted == 0
        finally:
            agent.delete("t-net")
    finally:
        denied.close()
        allowed.close()


def test_monitor_mode_lets_each_through(agent: AgentProc, work: Path) -> None:
    binary = work / "watched-touch"
    shutil.copy2(BUSYBOX, binary)
    secret = work / "watched-secret"
    secret.write_text(SECRET)
    srv = Server()
    agent.apply("t-mon", host_policy("t-mon", f"""
exec: {{deny: ['{binary}']}}
files: {{deny: [{{path: '{secret}', access: read}}]}}
network: {{egress: {{deny: ['127.0.0.1/32:{srv.port}']}}}}
""", mode="monitor"))
    try:
        assert in_child(lambda: os.execv(binary, ["touch", str(work / "ran")])) == ("exit", 0)
        assert (work / "ran").exists()
        assert in_child(lambda: Path(secret).read_text()) == ("ok", SECRET)
        assert in_child(lambda: _connect(srv.port)) == ("ok", "connected")
        for kind in ("exec", "file", "network"):
            agent.wait_event(for_policy("t-mon", kind, "would-block"))
    finally:
        agent.delete("t-mon")
        srv.close()


# ------------------------------------------------------------------ inside a runc container


def test_container_exec_and_file(agent: AgentProc, tiers: dict[str, str]) -> None:
    """The first exec is allowed (sh), then the denied ones: EPERM on the LSM tier (sh goes
    on), 137 on the kill tiers."""
    agent.apply("t-ctr", ctr_policy("t-ctr", "mr-tier-*", """
exec: {deny: [/bin/touch]}
files: {deny: [{path: /etc/shadow, access: read}]}
"""))
    try:
        script = ("/bin/touch /tmp/ran; echo exec=$?; /bin/cat /etc/shadow; echo file=$?; "
                  "[ -e /tmp/ran ] && echo RAN; /bin/cat /etc/passwd >/dev/null; echo ok=$?")
        with run_runc("mr-tier-1", ["sh", "-c", script]) as ctr:
            res = ctr.wait()
        out = res.stdout + res.stderr
        why = (res, _trail(agent, "mr-tier-1"))
        print(why[1])  # shown with a failure (pytest truncates long assertion messages)
        assert SHADOW_MARKER not in out and "RAN" not in res.stdout, why
        assert "ok=0" in res.stdout, why
        if tiers["exec"] == "lsm-deny":
            assert "exec=126" in res.stdout and "not permitted" in res.stderr.lower(), why
        else:
            assert "exec=137" in res.stdout, why
        if tiers["file"] == "lsm-deny":
            assert "file=1" in res.stdout, why
        else:
            assert "file=137" in res.stdout, why
        for kind, tier in (("exec", tiers["exec"]), ("file", tiers["file"])):
            ev = agent.wait_event(for_policy("t-ctr", kind, expected_action(tier)))
            assert enforcement(ev)["tier"] == tier
            assert ev["container"]["id"] == "mr-tier-1"
    finally:
        agent.delete("t-ctr")


def test_container_monitor(agent: AgentProc) -> None:
    agent.apply("t-ctr-mon", ctr_policy("t-ctr-mon", "mr-tmon-*", """
exec: {deny: [/bin/touch]}
files: {deny: [{path: /etc/shadow, access: read}]}
""", mode="monitor"))
    try:
        with run_runc("mr-tmon-1", ["sh", "-c", "/bin/touch /tmp/ran; echo exec=$?; "
                                                "/bin/cat /etc/shadow; echo file=$?"]) as ctr:
            res = ctr.wait()
        assert "exec=0" in res.stdout and "file=0" in res.stdout, res
        assert SHADOW_MARKER in res.stdout
        for kind in ("exec", "file"):
            agent.wait_event(for_policy("t-ctr-mon", kind, "would-block"))
    finally:
        agent.delete("t-ctr-mon")
