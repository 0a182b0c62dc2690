"""The detector on synthetic enriched events: each family of default rules, exceptions
that keep ordinary activity quiet, entrypoint tracking, scanning windows, throttling,
alert shape and the detect-then-respond actions. No privileges."""

from __future__ import annotations

from typing import Any

import pytest

from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load, load_texts
from moray.agent.detect.response import Responder
from moray.agent.detect.state import State
from moray.agent.enrich.proctree import Process, ProcessTree

CTR = {"id": "c1", "name": "web", "runtime": "runc", "image": "web:1", "cgroup_id": 77}


def tree() -> ProcessTree:
    t = ProcessTree(proc="/nonexistent")
    t.live["9:1"] = Process("9:1", 9, 1, 1, None, "/usr/sbin/runc", ("runc",), "/", 0, 0, 0,
                            1, "runc")
    t.live["10:1"] = Process("10:1", 10, 1, 9, "9:1", "/usr/bin/python3",
                             ("python3", "app.py"), "/srv", 0, 0, 0, 77, "python3",
                             version=1)
    t.live["11:1"] = Process("11:1", 11, 1, 10, "10:1", "/bin/sh", ("sh", "-c", "x"), "/", 0,
                             0, 0, 77, "sh", version=1)
    return t


@pytest.fixture()
def det() -> Detector:
    d = Detector(load([]), tree(), proc="/nonexistent")
    d.state.entrypoints[77] = "10:1"
    return d


def ev(t: str, pid: int = 11, comm: str = "sh", binary: str = "/bin/sh",
       parent: str = "10:1", container: dict[str, Any] | None = CTR,
       **extra: Any) -> dict[str, Any]:
    return {"type": t, "time": "2026-01-01T00:00:00.000000001Z", "node": "n",
            "process": {"pid": pid, "exec_id": f"{pid}:1", "binary": binary,
                        "args": [comm, "-c", "x"], "comm": comm, "cgroup_id": 77, "uid": 0},
            "parent": {"pid": int(parent.split(":", maxsplit=1)[0]), "exec_id": parent,
                       "binary": None},
            "container": container, **extra}


def rules_of(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["rule"] for a in alerts}


def test_the_pipelines_process_objects_are_used_not_looked_up() -> None:
    """The pipeline hands the detector the process and parent it enriched the event from:
    rules read those (here a tree that knows none of them); the ancestry goes on from
    the parent through the tree."""
    t = tree()
    d = Detector(load([]), t, proc="/nonexistent")
    d.state.entrypoints[77] = "10:1"
    sh = Process("12:1", 12, 1, 9, "9:1", "/bin/sh", ("sh",), "/", 0, 0, 0, 77, "sh")
    runc = t.live.pop("9:1")  # not in the tree: only the pipeline's object names it
    a = d.process(ev("exec", pid=12, parent="9:1"), sh, runc)
    assert rules_of(a) == {"Shell in container not started by the entrypoint"}
    assert [p["exec_id"] for p in a[0]["ancestry"]] == ["9:1"]
    # without the objects the detector looks the parent up, and this tree has none
    (b,) = d.process(ev("exec", pid=13, parent="9:1"))
    assert b["ancestry"] == []


def test_shell_rule_entrypoint_child_quiet_exec_from_runtime_alerts(det: Detector) -> None:
    assert det.process(ev("exec")) == []  # python entrypoint -> sh
    a = det.process(ev("exec", pid=12, parent="9:1"))  # runc exec -> sh
    assert rules_of(a) == {"Shell in container not started by the entrypoint"}
    (alert,) = a
    assert alert["type"] == "alert" and alert["priority"] == "WARNING"
    assert "T1059.004" in alert["tags"] and alert["event"]["container"]["id"] == "c1"
    assert alert["ancestry"][0]["binary"] == "/usr/sbin/runc"


def test_sensitive_read_and_exceptions(det: Detector) -> None:
    def opn(path: str, access: str = "read", comm: str = "cat", ctr: Any = CTR,
            flags: tuple[str, ...] = ("O_RDONLY",)) -> dict[str, Any]:
        return ev("open", comm=comm, container=ctr,
                  file={"path": path, "access": access, "flags": list(flags), "result": 0,
                        "error": None})
    assert rules_of(det.process(opn("/etc/shadow"))) == {"Read sensitive file"}
    assert det.process(opn("/etc/shadow", comm="sshd", ctr=None)) == []
    assert rules_of(det.process(opn("/etc/shadow", comm="sshd"))) == {"Read sensitive file"}
    assert det.process(opn("/etc/passwd")) == []
    assert rules_of(det.process(opn("/home/bob/.aws/credentials"))) == {"Read sensitive file"}
    w = ("O_WRONLY", "O_CREAT", "O_TRUNC")
    assert rules_of(det.process(opn("/etc/sudoers", "write", flags=w))) == {"Modify sudoers"}
    assert rules_of(det.process(opn("/etc/motd", "write", flags=w))) == {"Write below etc"}
    assert rules_of(det.process(opn("/usr/bin/x", "write", flags=w))) == {
        "Write below binary directory"}
    assert det.process(opn("/usr/bin/x", "write", comm="dpkg", flags=w)) == []
    assert det.process(opn("/tmp/x", "write", flags=w)) == []


def test_layer_extraction_and_registry_credentials(det: Detector) -> None:
    """dockerd unpacking a layer into the root it pivoted into writes the layer's
    /etc/passwd, not the host's: quiet. Another host process in a private root still
    alerts, and says so. A registry client reading its own user's docker config: quiet."""
    w = ["O_WRONLY", "O_CREAT", "O_TRUNC"]

    def opn(path: str, binary: str, root: str | None, access: str = "write",
            flags: list[str] = w, error: str | None = None) -> dict[str, Any]:
        return ev("open", comm=binary.rsplit("/", 1)[-1][:15], binary=binary, container=None,
                  file={"path": path, "access": access, "flags": flags,
                        "result": -2 if error else 0, "error": error, "root": root})
    assert det.process(opn("/etc/passwd", "/usr/sbin/dockerd", "private")) == []
    assert det.process(opn("/usr/bin/env", "/usr/sbin/dockerd", "private")) == []
    a = det.process(opn("/etc/passwd", "/usr/bin/dash", "private"))
    assert rules_of(a) == {"Write below etc"} and "root private" in a[0]["output"]
    a = det.process(opn("/etc/motd", "/usr/sbin/dockerd", "host"))
    assert rules_of(a) == {"Write below etc"} and "root host" in a[0]["output"]
    cfg = "/root/.docker/config.json"
    assert det.process(opn(cfg, "/usr/bin/docker", None, "read", ["O_RDONLY"],
                           "ENOENT")) == []
    assert det.process(opn(cfg, "/usr/bin/docker", "host", "read", ["O_RDONLY"])) == []
    assert rules_of(det.process(opn(cfg, "/usr/bin/cat", "host", "read", ["O_RDONLY"]))) == {
        "Read sensitive file"}


def syscall(name: str, **kw: Any) -> dict[str, Any]:
    return ev("syscall", syscall={"name": name, "result": -1, "error": "EPERM", **kw})


def test_syscall_rules(det: Detector) -> None:
    assert rules_of(det.process(syscall("ptrace", request="PTRACE_TRACEME"))) == {
        "Ptrace attach or traceme"}
    assert det.process(syscall("ptrace", request="PTRACE_PEEKDATA")) == []
    assert rules_of(det.process(syscall("mount", path="/mnt"))) == {"Mount in container"}
    runc_init = syscall("mount", path="/proc")
    runc_init["process"].update(exec_id="9:1", pid=9, binary="/usr/sbin/runc")
    assert det.process(runc_init) == []
    assert rules_of(det.process(syscall("chmod", mode="4755", path="/tmp/x"))) == {
        "Setuid or setgid bit set"}
    assert det.process(syscall("chmod", mode="0755", path="/tmp/x")) == []
    assert rules_of(det.process(syscall("socket", family="packet", sock_type="raw"))) == {
        "Raw packet socket"}
    assert rules_of(det.process(syscall("execve", stdio_socket=[0, 1],
                                        peer={"daddr": "10.0.0.1", "dport": 4444}))) == {
        "Reverse shell"}



def piped(args: list[str], binary: str = "/usr/bin/dash", comm: str = "sh",
          parent: str = "11:1", container: dict[str, Any] | None = CTR,
          **kw: Any) -> dict[str, Any]:
    e = ev("syscall", pid=14, comm=comm, binary=binary, parent=parent, container=container,
           syscall={"name": "execve", "result": 0, "stdin_pipe": True, "argc": len(args),
                    "path": binary, "upper_layer": False, "tmpfs": False, **kw})
    e["process"]["args"] = args
    return e


def test_interpreter_fed_by_a_pipe(det: Detector) -> None:
    """`curl | sh`, `bash -s`, `python3 -`: a piped stdin and no program argument; the
    binary's name counts (busybox's shell re-executes itself as /proc/self/exe)."""
    rule = {"Interpreter fed by a pipe"}
    assert rules_of(det.process(piped(["sh"]))) == rule
    assert rules_of(det.process(piped(["bash", "-s"], "/usr/bin/bash", "bash"))) == rule
    assert rules_of(det.process(piped(["python3", "-"], "/usr/bin/python3.12"))) == rule
    assert rules_of(det.process(piped(["sh"], "/bin/busybox", "exe"))) == rule
    assert rules_of(det.process(piped(["sh", "/dev/stdin"]))) == rule
    # a program on the command line, or a script: the pipe is its data
    assert det.process(piped(["sh", "-c", "cat"])) == []
    assert det.process(piped(["python3", "app.py"], "/usr/bin/python3")) == []
    assert det.process(piped(["sh"], stdin_pipe=False)) == []
    assert det.process(piped(["true"], "/bin/busybox", "busybox")) == []  # not a shell
    # the entrypoint started with a piped stdin (docker run -i), runc exec (docker exec -i)
    assert det.process(piped(["sh"], parent="9:1")) == []
    assert det.process(piped(["sh"], container=None)) == []


def test_network_scan_window_and_throttle() -> None:
    now = [0.0]
    d = Detector(load([]), tree(), proc="/nonexistent",
                 state=State(tree(), "/nonexistent", clock=lambda: now[0]))
    hits = []
    for port in range(1000, 1040):
        now[0] += 0.01
        hits += d.process(ev("connect", network={"daddr": "10.0.0.2", "dport": port,
                                                 "protocol": "tcp"}))
    assert rules_of(hits) == {"Network scanning"} and len(hits) == 1  # throttled
    now[0] += 120  # window and throttle expired, a few connects are normal
    assert d.process(ev("connect", network={"daddr": "10.0.0.2", "dport": 80,
                                            "protocol": "tcp"})) == []


def test_metadata_mining(det: Detector) -> None:
    a = det.process(ev("connect", network={"daddr": "169.254.169.254", "dport": 80,
                                           "protocol": "tcp"}))
    assert rules_of(a) == {"Cloud metadata endpoint contacted"}
    a = det.process(ev("connect", network={"daddr": "10.1.1.1", "dport": 3333,
                                           "protocol": "tcp"}))
    assert rules_of(a) == {"Connection to mining pool port"}


def test_rule_exception_raised_is_counted_not_fatal() -> None:
    rs = load_texts([("x.yaml", "- rule: bad\n  condition: evt.type = exec and proc.pid > 3\n"
                      "- rule: good\n  condition: evt.type = exec\n")])
    d = Detector(rs, None, proc="/nonexistent")
    e = ev("exec")
    e["process"]["pid"] = "not a number"  # a malformed event
    assert rules_of(d.process(e)) == {"good"} and d.errors == 1


def test_open_rules_split_by_file_tests_keep_every_rule_semantics() -> None:
    """Open events go through a FilePlan: file-only tests remembered per path and flags, the
    rest evaluated per event; a rule written for two types keeps only its open branch."""
    rs = load_texts([("x.yaml", """
- rule: trunc log
  condition: >
    (evt.type = open and file.flags = O_TRUNC and file.path pmatch (/var/log))
    or (evt.type = syscall and syscall.name = unlink and syscall.path pmatch (/var/log))
- rule: shadow by non-sshd
  condition: evt.type = open and file.path = /etc/shadow and not proc.name = sshd
- rule: any open in container
  condition: evt.type = open and container.id exists
""")])
    d = Detector(rs, tree(), proc="/nonexistent")

    def opn(path: str, comm: str = "cat", flags: tuple[str, ...] = ("O_RDONLY",),
            ctr: Any = CTR) -> dict[str, Any]:
        return ev("open", comm=comm, container=ctr,
                  file={"path": path, "access": "read", "flags": list(flags), "result": 0,
                        "error": None})
    for _ in range(2):  # second round: file tests come from the memo
        assert rules_of(d.process(opn("/var/log/x", flags=("O_WRONLY", "O_TRUNC")))) == {
            "trunc log", "any open in container"}
        assert rules_of(d.process(opn("/etc/shadow", ctr=None))) == {"shadow by non-sshd"}
        assert d.process(opn("/etc/shadow", comm="sshd", ctr=None)) == []
        assert d.process(opn("/var/log/x", ctr=None)) == []
    assert rules_of(d.process(syscall("unlink", path="/var/log/x"))) == {"trunc log"}
    assert "open" in rs.file_plans and len(rs.file_plans["open"].rules) == 3


def test_open_rule_whose_file_test_raises_is_counted_each_time() -> None:
    rs = load_texts([("x.yaml", "- rule: bad\n  condition: evt.type = open and file.name "
                      "= x\n- rule: good\n  condition: evt.type = open\n")])
    d = Detector(rs, None, proc="/nonexistent")
    e = ev("open", file={"path": 5, "access": "read", "flags": ["O_RDONLY"], "result": 0,
                         "error": None})  # a malformed event: path is not a string
    assert rules_of(d.process(e)) == {"good"} and d.errors == 1
    e["file"]["path"] = ["/etc/x"]  # nor hashable
    d.errors = 0
    assert rules_of(d.process(e)) == {"good"} and d.errors == 1
    del e["file"]["flags"]  # nor complete
    d.errors = 0
    assert rules_of(d.process(e)) == {"good"} and d.errors == 1
    assert rules_of(d.process(e)) == {"good"} and d.errors == 2  # not remembered


def test_response_kill_checks_start_time(tmp_path: Any) -> None:
    r = Responder(proc=str(tmp_path))
    out = r.act("kill", {"process": {"pid": 999999, "exec_id": "999999:5"}})
    assert out == {"action": "kill", "detect_then_respond": True, "ok": False,
                   "error": "process already gone"}
    out = r.act("stop_container", {"process": {"pid": 1, "exec_id": "1:1"},
                                   "container": None})
    assert out["ok"] is False and out["error"] == "not in a container"


def test_entrypoint_of_a_container_started_before_the_agent(tmp_path: Any) -> None:
    """No exec was seen for the container: its init is found from /proc (NSpid ends in 1),
    and processes forked from it without exec count as the entrypoint too."""
    for pid, nspid in ((10, "10\t1"), (11, "11\t7")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(f"Name:\tx\nNSpid:\t{nspid}\n")
    t = tree()
    t.live["12:1"] = Process("12:1", 12, 1, 10, "10:1", "/usr/bin/python3",
                             ("python3", "app.py"), "/srv", 0, 0, 0, 77, "python3")  # fork
    st = State(t, str(tmp_path))
    assert st.is_entrypoint(t.get("10:1"), CTR)
    assert st.entrypoints[77] == "10:1"
    assert st.is_entrypoint(t.get("12:1"), CTR)       # forked worker, no exec
    assert not st.is_entrypoint(t.get("11:1"), CTR)   # sh: exec'd something else
    assert not st.is_entrypoint(t.get("9:1"), CTR)    # runc, outside the container


def test_technique_rules_and_their_exceptions(det: Detector) -> None:
    """The issue-21 technique rules: what alerts and the look-alikes that must not."""
    host = {"container": None}
    # masquerading: a kernel thread's name or a bracketed argv[0]; the `[` command is not
    assert rules_of(det.process(ev("connect", comm="kworker/0:7", binary="/tmp/x",
                                   network={"daddr": "10.0.0.1", "dport": 80}))) == {
        "Process masquerading as a kernel thread"}
    masq = ev("exec", pid=21, comm="busybox", binary="/bin/busybox")  # throttle: per process
    masq["process"]["args"] = ["[kworker/1:0]", "true"]
    assert "Process masquerading as a kernel thread" in rules_of(det.process(masq))
    for pid, name in ((22, "["), (23, "[[")):
        test_cmd = ev("exec", pid=pid, comm=name, binary="/usr/bin/[", **host)
        test_cmd["process"]["args"] = [name, "-f", "/etc/hostname", "]"]
        assert det.process(test_cmd) == []
    # a daemon's name outside the system directories; the real one is quiet
    assert rules_of(det.process(ev("exec", comm="sshd", binary="/work/sshd"))) >= {
        "System program name run from an unusual path"}
    assert det.process(ev("exec", comm="sshd", binary="/usr/sbin/sshd", **host)) == []
    # exec by descriptor; runc's own re-exec (parent: the runtime) is quiet
    fd = ev("exec", comm="3", binary="/usr/bin/true", **host)
    fd["process"]["filename"] = "/dev/fd/3"
    assert rules_of(det.process(fd)) == {"Execution through a file descriptor"}
    runc = ev("exec", pid=12, comm="runc:[2:INIT]", binary="/", parent="9:1", **host)
    runc["process"]["filename"] = "/dev/fd/6"
    assert det.process(runc) == []
    # tmpfs exec: /dev in a container alerts; /tmp is the other rule's; a host package
    # manager's helper in /run is quiet
    assert rules_of(det.process(syscall("execve", tmpfs=True, path="/dev/.x"))) == {
        "Execution from a memory-backed file system"}
    assert "Execution from a memory-backed file system" not in rules_of(
        det.process(syscall("execve", tmpfs=True, path="/tmp/x")))
    helper = syscall("execve", tmpfs=True, path="/run/dpkg-helper")
    helper.update(container=None)
    helper["process"]["comm"] = "dpkg"
    assert det.process(helper) == []
    # bind mounts: /etc alerts, namespace pinning (ip netns add) does not
    assert "Bind mount of a sensitive path" in rules_of(
        det.process(syscall("mount", path="/mnt", source="/etc")))
    pin = syscall("mount", path="/run/netns/x", source="/proc/self/ns/net")
    pin.update(container=None)
    assert det.process(pin) == []
    # timestamps: a binary alerts, a package manager's does not
    assert rules_of(det.process(syscall("utimensat", path="/usr/bin/ls"))) == {
        "File timestamps changed"}
    dpkg = syscall("utimensat", path="/usr/bin/ls")
    dpkg["process"]["comm"] = "dpkg"
    assert det.process(dpkg) == []
    # history replaced by a symlink; environ of pid 1 read by a container tool
    assert rules_of(det.process(syscall("symlink", target="/dev/null",
                                        newpath="/root/.bash_history"))) == {
        "Shell history replaced by a link"}
    assert rules_of(det.process(syscall("process_vm_readv", target_pid=1))) == {
        "Process memory accessed with process_vm_readv or process_vm_writev"}
    strace = syscall("process_vm_readv", target_pid=1)
    strace.update(container=None)
    strace["process"].update(comm="strace", pid=24, exec_id="24:1")
    assert det.process(strace) == []
