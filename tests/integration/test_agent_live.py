"""The agent end to end, as a user runs it: `moray-agent run`, real processes, real
containers (runc and dockerd), events read back from its JSON lines output. Root only."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess, Event
from tests.helpers.containers import DOCKER_IMAGE, SHADOW_MARKER, Dockerd, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with AgentProcess() as a:
        yield a


class LoopbackServer:
    """A TCP server on 127.0.0.1 that records what it received."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with c:
                c.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received.append(c.recv(4096))

    def close(self) -> None:
        self.sock.close()


def _by_pid(t: str, pid: int) -> object:
    return lambda e: e["type"] == t and e["process"]["pid"] == pid


def test_host_exec_open_connect_with_ancestry(agent: AgentProcess, tmp_path: Path) -> None:
    srv = LoopbackServer()
    try:
        script = (f"cat /etc/shadow > /dev/null; "
                  "python3 -c 'import socket; "
                  f"socket.create_connection((\"127.0.0.1\", {srv.port})).send(b\"hi\")'")
        sh = subprocess.Popen(["/bin/sh", "-c", script], cwd=tmp_path)
        sh.wait(20)
        ev = agent.events
        sh_exec = ev.wait_for(lambda e: e["type"] == "exec" and e["process"]["pid"] == sh.pid,
                              what="exec of /bin/sh")
        assert sh_exec["process"]["args"] == ["/bin/sh", "-c", script]
        assert sh_exec["process"]["cwd"] == str(tmp_path)
        assert sh_exec["process"]["filename"] == "/bin/sh"
        assert sh_exec["process"]["binary"] == os.path.realpath("/bin/sh")
        assert sh_exec["parent"]["pid"] == os.getpid()
        assert sh_exec["container"] is None

        cat_exec = ev.wait_for(lambda e: e["type"] == "exec" and e["process"]["binary"]
                               == "/usr/bin/cat" and e["parent"]["pid"] == sh.pid,
                               what="exec of cat under the shell")
        assert cat_exec["process"]["args"] == ["cat", "/etc/shadow"]
        assert cat_exec["parent"]["exec_id"] == sh_exec["process"]["exec_id"]
        assert cat_exec["parent"]["binary"] == sh_exec["process"]["binary"]

        opened = ev.wait_for(lambda e: e["type"] == "open" and e["file"]["path"] == "/etc/shadow"
                             and e["process"]["exec_id"] == cat_exec["process"]["exec_id"],
                             what="open of /etc/shadow by cat")
        assert opened["file"]["access"] == "read" and opened["file"]["result"] == 0
        assert opened["parent"]["pid"] == sh.pid

        conn = ev.wait_for(lambda e: e["type"] == "connect"
                           and e["network"]["dport"] == srv.port, what="connect")
        assert conn["network"]["daddr"] == "127.0.0.1"
        assert conn["network"]["protocol"] == "tcp"
        assert conn["process"]["binary"].startswith("/") and "python" in conn["process"]["binary"]
        assert conn["parent"]["pid"] == sh.pid

        # the server side of it: listen (this test process) and accept
        lst = ev.all(lambda e: e["type"] == "listen" and e["network"]["sport"] == srv.port)
        assert lst == [] or lst[0]["process"]["pid"] == os.getpid()
        acc = ev.wait_for(lambda e: e["type"] == "accept" and e["network"]["sport"] == srv.port,
                          what="accept")
        assert acc["process"]["pid"] == os.getpid()
        assert acc["network"]["saddr"] == "127.0.0.1"

        ex = ev.wait_for(lambda e: e["type"] == "exit" and e["process"]["pid"] == sh.pid,
                         what="exit of the shell")
        assert ex["exit"]["code"] == 0 and ex["exit"]["signal"] is None
    finally:
        srv.close()


def test_listen_udp_ipv6_and_failed_open(agent: AgentProcess, tmp_path: Path) -> None:
    code = """
import socket, os
s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); s.listen(); print(s.getsockname()[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("127.0.0.1", 9))
try:
    open("/etc/moray-does-not-exist")
except OSError:
    pass
os._exit(7)
"""
    p = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=20)
    port = int(p.stdout.strip())
    assert p.returncode == 7
    ev = agent.events
    lst = ev.wait_for(lambda e: e["type"] == "listen" and e["network"]["sport"] == port,
                      what="IPv6 listen")
    assert lst["network"]["family"] == "ipv6" and lst["network"]["saddr"] == "::1"
    send = ev.wait_for(lambda e: e["type"] == "send" and e["network"]["dport"] == 9
                       and e["process"]["pid"] == lst["process"]["pid"], what="UDP send")
    assert send["network"]["protocol"] == "udp"
    failed = ev.wait_for(lambda e: e["type"] == "open"
                         and e["file"]["path"] == "/etc/moray-does-not-exist", what="failed open")
    assert failed["file"]["error"] == "ENOENT" and failed["file"]["path_as_written"]
    ex = ev.wait_for(lambda e: e["type"] == "exit" and e["process"]["pid"] == lst["process"]["pid"],
                     what="exit")
    assert ex["exit"]["code"] == 7


def test_unwatched_opens_do_not_reach_user_space(agent: AgentProcess, tmp_path: Path) -> None:
    f = tmp_path / "unwatched"
    f.write_text("x")
    subprocess.run(["sh", "-c", f"for i in 1 2 3 4 5; do cat {f} > /dev/null; done; "
                    "cat /etc/hostname > /dev/null"], check=True, timeout=20)
    agent.events.wait_for(lambda e: e["type"] == "open" and e["file"]["path"] == "/etc/hostname",
                          what="watched open")
    assert agent.events.all(lambda e: e["type"] == "open" and e["file"]["path"] == str(f)) == []


def test_a_burst_of_opens_comes_out_whole(agent: AgentProcess) -> None:
    """200 opens of a watched file by one process (after the first of a batch, the
    compiled path: agent/pipeline/fastopen.py), then a failed open of a path with hostile
    bytes: every event arrives, each whole, the path escaped as the Python path does."""
    # held open, so each has its own fd: 200 distinct events (identical ones would be
    # counted into a summary by the kernel, bpf/progs/agg.bpf.c)
    code = ("import os\n"
            "fds = [os.open('/etc/hostname', os.O_RDONLY) for _ in range(200)]\n"
            "for fd in fds:\n"
            "    os.close(fd)\n"
            "try:\n"
            "    os.open(b'/etc/moray-' + bytes([0xff, 0x22, 0x71, 0x5c, 0x0a]) + b'-x', 0)\n"
            "except OSError:\n"
            "    pass\n")
    p = subprocess.Popen(["python3", "-c", code])
    assert p.wait(20) == 0
    ev = agent.events
    hostile = ev.wait_for(lambda e: e["type"] == "open" and e["process"]["pid"] == p.pid
                          and e["file"]["path"].startswith("/etc/moray-"),
                          what="the failed open of the hostile path")
    assert hostile["file"]["path"] == '/etc/moray-\\xff"q\\\n-x'
    assert hostile["file"]["error"] == "ENOENT" and hostile["file"]["fd"] is None
    opens = ev.all(lambda e: e["type"] == "open" and e["process"]["pid"] == p.pid
                   and e["file"]["path"] == "/etc/hostname")
    assert len(opens) == 200
    assert {o["process"]["exec_id"] for o in opens} == {hostile["process"]["exec_id"]}
    assert all(o["file"]["result"] == 0 and o["file"]["fd"] >= 0 and o["file"]["error"] is None
               and o["file"]["access"] == "read" and o["parent"]["pid"] == os.getpid()
               for o in opens)
    times = [o["time"] for o in opens]
    assert times == sorted(times)
    assert "open events: " in agent.log()


def _in_container(cid: str) -> object:
    return lambda e: (e.get("container") or {}).get("id") == cid


def test_runc_container_events(agent: AgentProcess) -> None:
    srv = LoopbackServer()
    try:
        script = (f"cat /etc/shadow; echo hi | nc 127.0.0.1 {srv.port}; true")
        with run_runc("moray-agent-runc", ["/bin/sh", "-c", script], network="host",
                      annotations={"org.opencontainers.image.ref.name": "moray-test/busybox:1"}
                      ) as ctr:
            res = ctr.wait()
            assert SHADOW_MARKER in res.stdout
            ev = agent.events
            inside = _in_container("moray-agent-runc")
            sh = ev.wait_for(lambda e: e["type"] == "exec" and inside(e)
                             and e["process"]["pid"] == ctr.pid, what="container shell exec")
            assert sh["container"]["runtime"] == "runc"
            assert sh["container"]["name"] == "moray-agent-runc"
            assert sh["process"]["filename"] == "/bin/sh"
            assert sh["process"]["binary"] == "/bin/busybox"  # resolved inside the container
            assert sh["process"]["cgroup_id"] == ctr.cgroup_id
            cat = ev.wait_for(lambda e: e["type"] == "exec" and inside(e)
                              and e["process"]["args"][:1] == ["cat"], what="cat in container")
            assert cat["parent"]["exec_id"] == sh["process"]["exec_id"]
            assert cat["parent"]["binary"] == "/bin/busybox"
            op = ev.wait_for(lambda e: e["type"] == "open" and inside(e)
                             and e["file"]["path"] == "/etc/shadow",
                             what="shadow open in container")
            assert op["process"]["exec_id"] == cat["process"]["exec_id"]
            conn = ev.wait_for(lambda e: e["type"] == "connect" and inside(e)
                               and e["network"]["dport"] == srv.port, what="connect in container")
            assert conn["network"]["daddr"] == "127.0.0.1"
            assert conn["parent"]["exec_id"] == sh["process"]["exec_id"]
        deadline = time.monotonic() + 5
        while not srv.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.received and srv.received[0].startswith(b"hi")
    finally:
        srv.close()


@pytest.mark.docker
def test_docker_container_events(agent: AgentProcess) -> None:
    script = ("nc -l -p 8080 > /dev/null & sleep 0.3; cat /etc/shadow > /dev/null; "
              "echo hi | nc 127.0.0.1 8080; sleep 0.3; exit 3")
    with Dockerd() as d:
        c = d.run("/bin/sh", "-c", script, name="moray-agent-docker")
        d.docker("wait", c.id, timeout=60)
        ev = agent.events
        inside = _in_container(c.id)
        sh = ev.wait_for(lambda e: e["type"] == "exec" and inside(e)
                         and e["process"]["pid"] == c.pid, timeout=15, what="docker shell exec")
        cont = sh["container"]
        assert cont["runtime"] == "docker"
        assert cont["name"] == "moray-agent-docker"
        assert cont["image"] == DOCKER_IMAGE
        assert cont["image_digest"] == d.image_id
        op = ev.wait_for(lambda e: e["type"] == "open" and inside(e)
                         and e["file"]["path"] == "/etc/shadow", what="shadow in docker")
        assert op["parent"]["exec_id"] == sh["process"]["exec_id"]
        assert op["process"]["args"] == ["cat", "/etc/shadow"]
        lst = ev.wait_for(lambda e: e["type"] == "listen" and inside(e)
                          and e["network"]["sport"] == 8080, what="listen in docker")
        assert lst["process"]["args"][:2] == ["nc", "-l"]
        conn = ev.wait_for(lambda e: e["type"] == "connect" and inside(e)
                           and e["network"]["dport"] == 8080, what="connect in docker")
        assert conn["network"]["daddr"] == "127.0.0.1"
        acc = ev.wait_for(lambda e: e["type"] == "accept" and inside(e), what="accept in docker")
        assert acc["process"]["pid"] == lst["process"]["pid"]
        ex = ev.wait_for(lambda e: e["type"] == "exit" and e["process"]["pid"] == c.pid,
                         what="container exit")
        assert ex["exit"]["code"] == 3
        assert ex["container"]["id"] == c.id


def test_process_started_before_agent_has_its_real_parent(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # parent shell exists before the agent; it forks `cat` only after the gate opens
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; read x < /etc/shadow; cat /etc/hostname"
    sh = subprocess.Popen(["/bin/sh", "-c", script])
    try:
        with AgentProcess() as a:
            gate.touch()
            sh.wait(20)
            cat = a.events.wait_for(lambda e: e["type"] == "exec"
                                    and e["process"]["args"] == ["cat", "/etc/hostname"],
                                    what="exec of cat")
            assert cat["parent"]["pid"] == sh.pid
            assert cat["parent"]["binary"] == os.path.realpath("/bin/sh")
            # the shell itself (seen only in /proc at start-up) opening /etc/shadow
            own: Event = a.events.wait_for(lambda e: e["type"] == "open"
                                           and e["process"]["pid"] == sh.pid, what="shell read")
            assert own["file"]["path"] == "/etc/shadow"
            assert own["process"]["binary"] == os.path.realpath("/bin/sh")
            assert own["process"]["args"] == ["/bin/sh", "-c", script]
            assert own["parent"]["pid"] == os.getpid()
            assert own["parent"]["binary"]
    finally:
        sh.kill()
