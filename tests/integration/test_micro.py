"""The MicroEnforcer (`moray micro`) on REAL workloads, as an unprivileged user.

Every workload runs as nobody (65534) with no capabilities at all (setpriv: empty
bounding, inheritable and ambient sets), the way a container's entrypoint runs without
added capabilities; the supervisor is the real CLI. No BPF is loaded (no lock needed).
Files the rules name are the test's own (an agent of another test may enforce on the
host's /etc/shadow). A runc container test runs the same supervisor as the container's
PID 1 in a busybox rootfs with the host's /usr and the Python environment bound read-only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv to nobody)"),
]

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
          "--inh-caps=-all", "--bounding-set=-all"]


@dataclass
class Run:
    code: int
    out: str
    err: str
    events: list[dict]

    def enforce(self, kind: str | None = None) -> list[dict]:
        return [e for e in self.events if e.get("type") == "enforce"
                and (kind is None or e["enforcement"]["kind"] == kind)]


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moray-micro-", dir="/tmp"))
    d.chmod(0o755)
    rw = d / "rw"
    rw.mkdir()
    rw.chmod(0o777)
    secret = d / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def policy(work: Path, body: str, name: str = "p") -> Path:
    f = work / f"{name}.yaml"
    spec = textwrap.indent(textwrap.dedent(body).strip() + "\n", "  ")
    f.write_text(f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
                 f"spec:\n  scope: {{host: true}}\n{spec}")
    f.chmod(0o644)
    return f


def micro(work: Path, pol: Path, argv: list[str], *, stdin: str | None = None,
          timeout: float = 60, extra: tuple[str, ...] = ()) -> Run:
    ev = work / "rw" / "events.jsonl"
    ev.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/bin"}
    p = subprocess.run([*NOBODY, PYTHON, "-m", "moray.cli", "micro", "--policy", str(pol),
                        "--events", str(ev), *extra, "--", *argv],
                       input=stdin, capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=work / "rw")
    events = [json.loads(line) for line in ev.read_text().splitlines()] if ev.exists() else []
    return Run(p.returncode, p.stdout, p.stderr, events)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def py(code: str) -> list[str]:
    return ["/usr/bin/python3", "-c", textwrap.dedent(code)]


def test_exec_denied_with_eperm_and_no_side_effect(work: Path) -> None:
    pol = policy(work, "exec: {deny: [/usr/bin/touch]}")
    marker = work / "rw" / "marker"
    r = micro(work, pol, sh(f"touch {marker}; echo rc=$?; /usr/bin/echo allowed"))
    assert "rc=126" in r.out and "Operation not permitted" in r.err, r
    assert "allowed" in r.out and r.code == 0
    assert not marker.exists()
    (e,) = r.enforce("exec")
    assert e["enforcer"] == "micro" and e["enforcement"]["action"] == "blocked"
    assert e["enforcement"]["rule"] == "exec.deny: /usr/bin/touch"
    assert e["enforcement"]["binary"] == "/usr/bin/touch"
    assert e["process"]["uid"] == 65534 and e["process"]["exec_id"]
    assert e["node"] and e["container"] is None


def test_allow_list(work: Path) -> None:
    pol = policy(work, "exec: {allow: [/bin/sh, /usr/bin/dash, /usr/bin/echo]}")
    r = micro(work, pol, sh("echo builtin; /usr/bin/echo ok; /usr/bin/cat /dev/null; "
                            "echo rc=$?"))
    assert "ok" in r.out and "rc=126" in r.out, r
    assert [e["enforcement"]["rule"] for e in r.enforce()] == ["exec.allow: not listed"]


def test_file_deny_every_way_to_name_it(work: Path) -> None:
    secret = work / "secret"
    link = work / "rw" / "hard"
    os.link(secret, link)   # a hard link made before start: covered by identity
    (work / "rw" / "sym").symlink_to(secret)
    pol = policy(work, f"files: {{deny: [{{path: {secret}, access: read}}]}}")
    r = micro(work, pol, sh(
        f"cat {secret}; echo rc1=$?; cd {work} && cat ./rw/../secret; echo rc2=$?; "
        f"cat rw/sym; echo rc3=$?; cat {link}; echo rc4=$?; "
        f"exec 3<{work}/rw; cat /dev/fd/3/../secret 2>&1; echo rc5=$?; "
        f"echo appended >> {secret}; echo rc6=$?"))
    assert "s3cret" not in r.out, r
    for i in (1, 2, 3, 4, 5):
        assert f"rc{i}=1" in r.out, (i, r)
    # a write is not what the rule denies: the append went through
    assert "rc6=0" in r.out and secret.read_text() == "s3cret\nappended\n"
    hits = r.enforce("file")
    assert len(hits) == 5, hits
    assert {e["enforcement"]["path"] for e in hits} >= {str(secret), str(link)}
    assert all(e["enforcement"]["action"] == "blocked" for e in hits)


def test_file_write_deny_leaves_no_trace(work: Path) -> None:
    target = work / "rw" / "config"
    target.write_text("orig\n")
    target.chmod(0o666)
    pol = policy(work, f"files: {{deny: [{{prefix: {work}/rw/, access: write}}]}}")
    r = micro(work, pol, sh(f"cat {target}; echo x > {target}; echo rc=$?; "
                            f"touch {work}/rw/new; echo rc2=$?"))
    assert "orig" in r.out and "rc=2" in r.out and "rc2=1" in r.out, r
    assert target.read_text() == "orig\n"   # O_TRUNC never happened
    assert not (work / "rw" / "new").exists()


def test_connect_deny(work: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(8)
    oport = other.getsockname()[1]
    pol = policy(work, f'network: {{egress: {{deny: ["127.0.0.1/32:{port}"]}}}}')
    try:
        r = micro(work, pol, py(f"""
            import socket, errno
            for p in ({port}, {oport}):
                s = socket.socket()
                print(p, s.connect_ex(("127.0.0.1", p)))
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.sendto(b"x", ("127.0.0.1", {port}))
            except OSError as e:
                print("sendto", e.errno)
            s6 = socket.socket(socket.AF_INET6)
            print("mapped", s6.connect_ex(("::ffff:127.0.0.1", {port})))
        """))
        assert f"{port} {1}" in r.out and f"{oport} 0" in r.out, r
        assert "sendto 1" in r.out and "mapped 1" in r.out, r
        with pytest.raises(TimeoutError):
            srv.accept()   # nothing reached the denied listener
        nets = r.enforce("network")
        assert [e["enforcement"]["syscall"] for e in nets] == ["connect", "sendto", "connect"]
        assert nets[0]["enforcement"]["dport"] == port
        assert nets[0]["enforcement"]["protocol"] == "tcp"
        assert nets[1]["enforcement"]["protocol"] == "udp"
    finally:
        srv.close()
        other.close()


def test_syscall_deny(work: Path) -> None:
    pol = policy(work, "syscalls: {deny: [mkdir, mkdirat, unshare]}")
    r = micro(work, pol, sh(f"mkdir {work}/rw/d; echo rc=$?; unshare -U true; echo u=$?"))
    assert "rc=1" in r.out and "u=1" in r.out, r
    assert not (work / "rw" / "d").exists()


def test_dropped_binary_and_script_refused(work: Path) -> None:
    pol = policy(work, "exec: {drift: block}")
    rw = work / "rw"
    r = micro(work, pol, sh(
        f"cp /usr/bin/true {rw}/t; {rw}/t; echo bin=$?; "
        f"printf '#!/bin/sh\\necho script-ran\\n' > {rw}/s.sh; chmod +x {rw}/s.sh; "
        f"{rw}/s.sh; echo script=$?; /usr/bin/true; echo image=$?; "
        f"/usr/bin/python3 -c 'import os; os.execv(\"{rw}/t\", [\"t\"])' 2>&1; echo py=$?"))
    assert "bin=126" in r.out and "script=126" in r.out and "image=0" in r.out, r
    assert "script-ran" not in r.out and "py=1" in r.out
    drift = r.enforce("drift")
    assert len(drift) == 3 and all(e["enforcement"]["rule"] == "exec.drift: block"
                                   for e in drift)


def test_forked_and_threaded_workload_covered(work: Path) -> None:
    secret = work / "secret"
    pol = policy(work, f"files: {{deny: [{secret}]}}\nexec: {{deny: [/usr/bin/id]}}")
    r = micro(work, pol, py(f"""
        import os, threading, subprocess
        res = []
        def t():
            try:
                open("{secret}").read(); res.append("thread-read")
            except PermissionError:
                res.append("thread-eperm")
        th = threading.Thread(target=t); th.start(); th.join()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:   # a grandchild, its parent gone: reparented to the supervisor
                os.setsid()
                try:
                    open("{secret}")
                    os.write(w, b"gc-read")
                except PermissionError:
                    os.write(w, b"gc-eperm")
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 16).decode())   # the grandchild's answer, before the workload ends
        print(res[0], subprocess.run(["/usr/bin/id"]).returncode if False else "",
              flush=True)
        try:
            subprocess.run(["/usr/bin/id"])
        except PermissionError:
            print("spawn-eperm")
    """))
    assert "thread-eperm" in r.out and "spawn-eperm" in r.out and "gc-eperm" in r.out, r
    assert len(r.enforce("file")) == 2 and len(r.enforce("exec")) == 1, r.events


def test_exit_code_stdin_and_signals(work: Path) -> None:
    pol = policy(work, "exec: {deny: [/usr/bin/nc]}")
    r = micro(work, pol, sh("cat; exit 42"), stdin="from stdin\n")
    assert r.code == 42 and r.out == "from stdin\n", r
    r = micro(work, pol, sh("kill -9 $$"))
    assert r.code == 137, r
    # SIGTERM to the supervisor reaches the workload (its trap decides the exit code)
    ev = work / "rw" / "events.jsonl"
    ready = work / "rw" / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([*NOBODY, PYTHON, "-m", "moray.cli", "micro", "--policy", str(pol),
                          "--events", str(ev), "--", "/bin/sh", "-c",
                          f"trap 'echo got-term; exit 9' TERM; touch {ready}; "
                          "while :; do sleep 0.05; done"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 9 and "got-term" in out


def test_escape_attempts_fail_or_are_reported(work: Path) -> None:
    pol = policy(work, "exec: {deny: [/usr/bin/nc]}")
    r = micro(work, pol, py("""
        import ctypes, os, signal, struct
        libc = ctypes.CDLL(None, use_errno=True)
        sup = os.getppid()
        def errno_of(f):
            try:
                f(); return 0
            except OSError as e:
                return e.errno
        print("kill", errno_of(lambda: os.kill(sup, signal.SIGKILL)))
        print("killall", errno_of(lambda: os.kill(-1, signal.SIGKILL)))
        print("pidfd", errno_of(lambda: os.pidfd_open(sup)))
        r = libc.ptrace(16, sup, 0, 0)
        print("ptrace", r, ctypes.get_errno())
        print("mem", errno_of(lambda: open(f"/proc/{sup}/mem", "rb")))
        # its other entries: its fds (the notification fd among them), its maps
        for what in ("fd/0", "fd/3", "maps"):
            print(what, errno_of(lambda: os.close(os.open(f"/proc/{sup}/{what}", 0))))
        cwd_fd = os.open(f"/proc/{os.getpid()}", os.O_DIRECTORY)   # its own: fine
        os.close(cwd_fd)
        links = []
        for f in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{f}"))
            except OSError:
                pass   # the directory's own fd, closed by now
        print("notify-fd", any("seccomp" in l for l in links))
        # a second listener of our own would take the notifications: the kernel refuses it
        prog = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", 6, 0, 0, 0x7fc00000))
        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("f", ctypes.c_void_p)]
        fp = Fprog(1, ctypes.addressof(prog))
        libc.syscall.restype = ctypes.c_long
        fd = libc.syscall(317, 1, 8, ctypes.byref(fp))
        print("listener", fd, ctypes.get_errno())
        print("alive", os.getppid() == sup)
    """))
    out = r.out
    assert "kill 1" in out and "killall 1" in out and "pidfd 1" in out, r
    assert "ptrace -1 1" in out, r                 # EPERM: the supervisor is not dumpable
    assert "mem 13" in out or "mem 1" in out, r    # EACCES / EPERM
    assert "notify-fd False" in out and "alive True" in out, r
    for what in ("fd/0", "fd/3", "maps"):
        assert f"{what} 1" in out or f"{what} 13" in out, (what, r)
    assert "listener -1 16" in out, r             # EBUSY: one listener per filter tree
    sup = r.enforce("supervisor")
    assert {e["enforcement"]["syscall"] for e in sup} >= {"kill", "pidfd_open", "ptrace"}


def test_monitor_mode_reports_and_lets_run(work: Path) -> None:
    pol = policy(work, "mode: monitor\nexec: {deny: [/usr/bin/true]}\n"
                       "syscalls: {deny: [mkdir, mkdirat]}")
    r = micro(work, pol, sh(f"/usr/bin/true; echo rc=$?; mkdir {work}/rw/m; echo m=$?"))
    assert "rc=0" in r.out and "m=0" in r.out, r
    acts = {(e["enforcement"]["kind"], e["enforcement"]["action"]) for e in r.enforce()}
    assert ("exec", "would-block") in acts and ("syscall", "would-block") in acts


def test_unsupported_rule_kinds_are_named(work: Path) -> None:
    pol = work / "img.yaml"
    pol.write_text("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: img}\n"
                   "spec:\n  scope: {containers: {}}\n  images: {block: [unregistered]}\n"
                   "  exec: {deny: [/usr/bin/nc]}\n")
    pol.chmod(0o644)
    r = micro(work, pol, ["/usr/bin/true"])
    assert r.code == 0 and "not enforced by moray micro: img: spec.images" in r.err, r


def test_namespace_and_setid_rules(work: Path) -> None:
    pol = policy(work, "namespaces: {deny: [user, net]}\nsetid: {deny: [setuid, setgid]}")
    f = work / "rw" / "f"
    r = micro(work, pol, sh(
        f"unshare -U true; echo u=$?; touch {f}; chmod 4755 {f}; echo suid=$?; "
        f"chmod 755 {f}; echo plain=$?; /usr/bin/python3 -c '"
        "import os, threading; t = threading.Thread(target=print, args=(\"thread-ok\",)); "
        "t.start(); t.join(); os.close(os.open(\"" + f"{work}/rw/g" + "\", "
        "os.O_CREAT | os.O_WRONLY, 0o2755))' 2>&1"))
    assert "u=1" in r.out and "suid=1" in r.out and "plain=0" in r.out, r
    assert "thread-ok" in r.out, r     # threads (clone without namespace flags) run
    assert "Operation not permitted" in r.out, r      # the O_CREAT with setgid
    assert f.stat().st_mode & 0o7777 == 0o755 and not (work / "rw" / "g").exists()
    kinds = [e["enforcement"]["kind"] for e in r.enforce()]
    assert kinds.count("namespaces") == 1 and kinds.count("setid") == 2, r.events


# --------------------------------------------------------------------------- runc


def test_in_a_runc_container_as_pid_1(work: Path) -> None:
    from tests.helpers.containers import build_rootfs, run_runc

    rootfs = build_rootfs(work / "rootfs")
    for name in ("lib", "lib64"):
        (rootfs / name).symlink_to(f"usr/{name}")
    (rootfs / "usr").mkdir()
    (rootfs / "tmp").chmod(0o1777)
    py_home = Path(os.path.realpath(PYTHON)).parents[1]    # the interpreter's prefix
    venv = Path(sys.prefix)
    binds = [Path("/usr"), py_home, venv, REPO]
    mounts = [{"destination": str(b), "type": "bind", "source": str(b),
               "options": ["rbind", "ro"]} for b in dict.fromkeys(binds)]
    (rootfs / "etc" / "policy.yaml").write_text(textwrap.dedent("""\
        apiVersion: moray/v1
        kind: RuntimePolicy
        metadata: {name: ctr}
        spec:
          scope: {containers: {}}
          exec: {deny: [/bin/wget], drift: block}
          files: {deny: [{path: /etc/shadow, access: read}]}
          syscalls: {deny: [mkdir, mkdirat]}
        """))
    script = ("id -u; cat /etc/shadow; echo shadow=$?; cp /bin/busybox /tmp/bb; "
              "/tmp/bb true; echo drift=$?; mkdir /tmp/d; echo mkdir=$?; "
              "kill -9 1; echo kill=$?; echo pid=$$; exit 5")
    argv = [f"{venv}/bin/python", "-m", "moray.cli", "micro", "--policy", "/etc/policy.yaml",
            "--events", "stdout", "--", "/bin/sh", "-c", script]
    with run_runc("moray-micro-t", argv, rootfs=rootfs, mounts=mounts,
                  env=("PATH=/bin", f"PYTHONPATH={REPO}"), user=(65534, 65534),
                  drop_caps=True) as ctr:
        res = ctr.wait(timeout=60)
    out = res.stdout
    assert res.exit_code == 5, res
    assert out.splitlines()[0] == "65534", res
    assert "moray-shadow-marker" not in out and "shadow=1" in out, res
    assert "drift=126" in out and "mkdir=1" in out and "kill=1" in out, res
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = {e["enforcement"]["kind"] for e in events if e.get("type") == "enforce"}
    assert {"file", "drift", "supervisor"} <= kinds, events


@pytest.mark.docker
def test_in_a_docker_container_as_its_entrypoint(work: Path) -> None:
    """`moray micro` as the entrypoint of a docker container (a private dockerd, the
    locally built busybox image): unprivileged (user 65534, no capability added),
    docker's default seccomp profile; one deny per rule kind, allowed work runs, the exit
    code is the workload's."""
    from tests.helpers.containers import DOCKER_IMAGE, Dockerd

    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()                       # inside the container's own loopback: refused
    pol = work / "policy.yaml"
    pol.write_text(textwrap.dedent(f"""\
        apiVersion: moray/v1
        kind: RuntimePolicy
        metadata: {{name: ctr}}
        spec:
          scope: {{containers: {{}}}}
          exec: {{deny: [/usr/bin/id], drift: block}}
          files: {{deny: [{{path: /data/secret, access: read}}]}}
          network: {{egress: {{deny: ["127.0.0.1/32:{port}"]}}}}
          syscalls: {{deny: [mkdir, mkdirat]}}
        """))
    pol.chmod(0o644)
    py_home = Path(os.path.realpath(PYTHON)).parents[1]
    venv = Path(sys.prefix)
    binds = [(Path("/usr"), "/usr"), (Path("/usr/lib"), "/lib"), (Path("/usr/lib64"), "/lib64"),
             *((b, str(b)) for b in (py_home, venv, REPO)),
             (pol, "/etc/moray/policy.yaml"), (work / "secret", "/data/secret")]
    vols = [a for src, dst in dict((str(d), s) for s, d in binds).items()
            for a in ("-v", f"{dst}:{src}:ro")]
    connect = (f"import socket; print('egress', *(socket.socket().connect_ex(('127.0.0.1', p))"
               f" for p in ({port}, {port + 1 if port < 65535 else port - 1})))")
    script = ("echo uid=$(busybox id -u); /usr/bin/id; echo exec=$?; "
              "/usr/bin/env echo allowed; cat /data/secret; echo file=$?; "
              "cp /bin/busybox /tmp/bb; /tmp/bb true; echo drift=$?; "
              "mkdir /tmp/d; echo mkdir=$?; "
              f"{venv}/bin/python -c \"{connect}\"; exit 7")
    with Dockerd(work / "dockerd") as d:
        security = d.docker("info", "--format", "{{json .SecurityOptions}}").stdout
        assert "name=seccomp,profile=default" in security, security   # docker's default
        res = d.docker("run", "--rm", "--network", "none", "--user", "65534:65534",
                       "--tmpfs", "/tmp:mode=1777", *vols,
                       "-e", f"PYTHONPATH={REPO}", "-e", "PATH=/bin",
                       DOCKER_IMAGE, f"{venv}/bin/python", "-m", "moray.cli", "micro",
                       "--policy", "/etc/moray/policy.yaml", "--events", "stdout", "--",
                       "/bin/sh", "-c", script, check=False, timeout=120)
    out = res.stdout
    assert res.returncode == 7, res
    for want in ("uid=65534", "exec=126", "allowed", "file=1", "drift=126", "mkdir=1",
                 f"egress {errno.EPERM} {errno.ECONNREFUSED}"):
        assert want in out.splitlines() or f"\n{want}\n" in f"\n{out}", (want, res)
    assert "s3cret" not in out, res
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = sorted(e["enforcement"]["kind"] for e in events if e.get("type") == "enforce")
    assert {"exec", "file", "drift", "network"} <= set(kinds), events


RACE = """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
ok, bad, rw = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
buf = ctypes.create_string_buffer(max(len(ok), len(bad)) + 1)
ctypes.memmove(buf, ok + b"\\0", len(ok) + 1)
stop = False
def flip():   # another thread rewrites the path while the open waits for the supervisor
    while not stop:
        ctypes.memmove(buf, bad + b"\\0", len(bad) + 1)
        ctypes.memmove(buf, ok + b"\\0", len(ok) + 1)
def swap():   # and a symbolic link is pointed elsewhere and back
    for name, to in (("l-ok", ok), ("l-bad", bad)):
        os.symlink(to, f"{rw}/{name}")
    while not stop:
        os.link(f"{rw}/l-bad", f"{rw}/l-tmp"); os.replace(f"{rw}/l-tmp", f"{rw}/link")
        os.link(f"{rw}/l-ok", f"{rw}/l-tmp"); os.replace(f"{rw}/l-tmp", f"{rw}/link")
os.symlink(ok, f"{rw}/link")
threads = [threading.Thread(target=flip), threading.Thread(target=swap)]
for t in threads: t.start()
leaked = opened = 0
for i in range(int(sys.argv[4])):
    fd = libc.open(buf if i % 2 else f"{rw}/link".encode(), 0)
    if fd >= 0:
        opened += 1
        leaked += b"s3cret" in os.read(fd, 100)
        os.close(fd)
stop = True
for t in threads: t.join()
print("opened", opened, "leaked", leaked)
"""


def test_open_race_cannot_reach_a_denied_file(work: Path) -> None:
    """A hostile workload races the check (another thread rewrites the path buffer; a
    symbolic link is swapped): the supervisor opens the file itself and hands over the fd
    it checked, so nothing of the denied file is ever read. With --continue-opens (the
    kernel re-reads the path) the same race gets through: printed, not asserted."""
    ok = work / "ok"
    ok.write_text("fine\n")
    ok.chmod(0o644)
    pol = policy(work, f"files: {{deny: [{work}/secret]}}")
    argv = ["/usr/bin/python3", "-c", RACE, str(ok), str(work / "secret"), str(work / "rw"),
            "2000"]
    r = micro(work, pol, argv)
    assert "leaked 0" in r.out and "opened 0" not in r.out, r
    for f in ("link", "l-ok", "l-bad"):
        (work / "rw" / f).unlink(missing_ok=True)
    r2 = micro(work, pol, argv, extra=("--continue-opens",))
    print("with --continue-opens:", r2.out.strip())


def test_supervisor_entries_not_reachable_through_opens(work: Path) -> None:
    """With file rules the supervisor opens files for the workload; it must never open its
    own /proc entries for it (its descriptors: the event file, its pipes; its maps),
    whichever names lead there, while the workload's own /proc/self/fd/N still work."""
    pol = policy(work, f"files: {{deny: [{work}/secret]}}")
    r = micro(work, pol, py(f"""
        import os
        sup = os.getppid()
        os.symlink(f"/proc/{{sup}}/fd", "{work}/rw/supfd")
        os.symlink(f"/proc/{{sup}}", "{work}/rw/sup")
        def errno_of(p, flags=os.O_RDONLY):
            try:
                os.close(os.open(p, flags)); return 0
            except OSError as e:
                return e.errno
        fds = [n for n in range(12)]
        print("fds", sorted({{errno_of(f"{work}/rw/supfd/{{n}}", os.O_WRONLY) for n in fds}}))
        print("direct", errno_of(f"/proc/{{sup}}/fd/1", os.O_WRONLY))
        print("maps", errno_of(f"{work}/rw/sup/maps"), errno_of(f"/proc/{{sup}}/maps"))
        d = os.open("{work}", os.O_RDONLY)
        print("own", errno_of(f"/proc/self/fd/{{d}}/ok"), errno_of(f"/dev/fd/{{d}}/secret"))
    """))
    assert "fds [1, 2]" in r.out or "fds [1]" in r.out, r   # 2: no such fd
    assert "direct 1" in r.out and "maps 1 1" in r.out, r
    assert "own 2 1" in r.out, r    # ok does not exist here; the secret is denied
    assert any(e["enforcement"]["kind"] == "supervisor" for e in r.enforce()), r.events


def test_drift_inventory_by_path_and_digest(work: Path) -> None:
    """Changed after start (ctime) is drift, unless the start-time inventory holds the same
    content under the same path: a chmod/touch of an image file is not drift, new bytes
    or a new path are."""
    bindir = work / "rw" / "bin"
    bindir.mkdir()
    bindir.chmod(0o777)
    for name in ("touched", "rewritten", "same-bytes"):
        f = bindir / name
        f.write_text("#!/bin/sh\necho ran-" + name + "\n")
        f.chmod(0o777)
    # written before the enforcer starts: an interpreter's start-up (>0.1 s) is longer than
    # the clock tick the inventory allows for (moray.micro.inventory.TICK_NS)
    pol = policy(work, "exec: {drift: block}")
    script = (f"cd {bindir}; touch touched; ./touched; echo t=$?; "
              "echo 'echo evil' >> rewritten; ./rewritten; echo r=$?; "
              "cp same-bytes /tmp/x-$$ && cat /tmp/x-$$ > same-bytes && rm /tmp/x-$$; "
              "./same-bytes; echo s=$?; cp touched copy; ./copy; echo c=$?")
    r = micro(work, pol, sh(script), extra=("--drift-inventory", str(bindir)))
    assert "ran-touched" in r.out and "t=0" in r.out, r
    assert "r=126" in r.out and "evil" not in r.out, r
    assert "ran-same-bytes" in r.out and "s=0" in r.out, r
    assert "c=126" in r.out, r
    # without the inventory, any change after start is drift
    for name in ("touched", "same-bytes", "copy"):
        (bindir / name).unlink(missing_ok=True)
    (bindir / "touched").write_text("#!/bin/sh\necho ran\n")
    (bindir / "touched").chmod(0o777)
    r = micro(work, pol, sh(f"touch {bindir}/touched; {bindir}/touched; echo t=$?"))
    assert "t=126" in r.out, r


def test_orphans_are_reaped(work: Path) -> None:
    """A grandchild whose parent exited is reparented to the supervisor (a child
    subreaper, PID 1 in a container) and reaped when it exits: no zombie is left."""
    pol = policy(work, "exec: {deny: [/usr/bin/nc]}")
    r = micro(work, pol, py("""
        import os, time
        r, w = os.pipe()        # the grandchild's pid, up
        go_r, go_w = os.pipe()  # "exit now", down
        if os.fork() == 0:
            gc = os.fork()
            if gc == 0:
                os.read(go_r, 1)    # wait until told, then exit as an orphan
                os._exit(0)
            os.write(w, str(gc).encode().ljust(16))
            os._exit(0)
        os.wait()
        gc = int(os.read(r, 16))
        w = go_w
        ppid = int(open(f"/proc/{gc}/stat").read().rsplit(")", 1)[1].split()[1])
        print("reparented-to-supervisor", ppid == os.getppid())
        os.write(w, b"x")
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{gc}") and time.monotonic() < deadline:
            time.sleep(0.01)
        print("reaped", not os.path.exists(f"/proc/{gc}"))
    """))
    assert "reparented-to-supervisor True" in r.out and "reaped True" in r.out, r


def test_events_reach_a_real_server(work: Path, tmp_path: Path) -> None:
    """Enrolled over the agent's enrolment and mTLS protocol: the enforcer is in the
    server's agent list (label enforcer=micro) and its events are stored there."""
    from tests.helpers.controlplane import ServerProcess, wait_for

    srv = ServerProcess(tmp_path / "server").start()
    try:
        api = srv.api()
        token = api.token()
        ca = work / "ca.pem"
        ca.write_bytes(srv.ca_pem)
        ca.chmod(0o644)
        pol = policy(work, "exec: {deny: [/usr/bin/touch]}")
        r = micro(work, pol, sh(f"touch {work}/rw/x; echo rc=$?"),
                  extra=("--server", srv.grpc_target, "--enroll-server", srv.enroll_target,
                         "--enroll-token", token, "--ca", str(ca),
                         "--data-dir", str(work / "rw" / "cp"), "--node", "micro-test"))
        assert "rc=126" in r.out and len(r.enforce("exec")) == 1, r
        agents = api("GET", "/api/v1/agents")
        mine = [a for a in agents if a.get("labels", {}).get("enforcer") == "micro"]
        assert len(mine) == 1 and mine[0]["hostname"] == "micro-test", agents
        assert mine[0]["kind"] == "micro", mine

        def stored() -> list[dict]:
            rows = api("GET", "/api/v1/events", params={"after": 0, "limit": 1000})
            return [row for row in rows if row.get("agent_id") == mine[0]["id"]]
        rows = wait_for(stored, timeout=30, what="the micro enforcer's event on the server")
        assert rows[0]["event"]["enforcer"] == "micro", rows
        assert rows[0]["event"]["enforcement"]["rule"] == "exec.deny: /usr/bin/touch"
    finally:
        srv.stop()


def test_pushed_policies_enforced_before_start_and_live(work: Path, tmp_path: Path) -> None:
    """With --server alone, the server's policy is fetched before the workload starts and
    enforced from its first call; a later push that changes only exec paths is applied
    live; one that would change the kernel filter (a syscall rule) is acknowledged
    FAILED with "needs restart" and the rules stay those applied."""
    from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for

    srv = ServerProcess(tmp_path / "server").start()
    proc = None
    try:
        api = srv.api()
        api.apply(policy_yaml("pushed", deny="/usr/bin/touch"))
        token = api.token()
        ca = work / "ca.pem"
        ca.write_bytes(srv.ca_pem)
        ca.chmod(0o644)
        go, ev = work / "rw" / "go", work / "rw" / "events.jsonl"
        script = (f"touch {work}/rw/a; echo rc1=$?; "
                  f"while [ ! -e {go} ]; do sleep 0.05; done; "
                  f"touch {work}/rw/b; echo rc2=$?; id >/dev/null; echo rc3=$?")
        env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/bin",
               "MORAY_ENROLL_TOKEN": token}
        cmd = [*NOBODY, PYTHON, "-m", "moray.cli", "micro", "--events", str(ev),
               "--server", srv.grpc_target, "--enroll-server", srv.enroll_target,
               "--ca", str(ca), "--data-dir", str(work / "rw" / "cp"), "--node", "pushed"]

        def explained() -> bool:
            # the server's in-memory policy set follows its store a moment later: what
            # --explain fetched (and cached: the run below starts from it) names v1 once
            # the server serves it
            r = subprocess.run([*cmd, "--explain", "--", "true"], capture_output=True,
                               text=True, timeout=60, env=env, cwd=work / "rw")
            assert r.returncode == 0, r.stderr
            return [p["name"] for p in json.loads(r.stdout)["policies"]] == ["pushed"]
        wait_for(explained, timeout=30, interval=0.2, what="v1 served by the server")
        proc = subprocess.Popen(
            [*cmd, "--", *sh(script)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=work / "rw")

        def acked(version: int, status: str) -> dict:
            agents = [a for a in api("GET", "/api/v1/agents") if a["hostname"] == "pushed"]
            held = agents[0]["policies"].get("pushed", {}) if agents else {}
            return held if (held.get("version"), held.get("status")) == (version, status) \
                else {}

        wait_for(lambda: acked(1, "APPLIED"), timeout=30, what="v1 acknowledged")
        assert proc.stdout is not None
        first = proc.stdout.readline()     # the first touch ran (under v1) before v2
        assert first == "rc1=126\n", first
        api.apply(policy_yaml("pushed", deny="/usr/bin/id"))
        wait_for(lambda: acked(2, "APPLIED"), timeout=30, what="v2 applied live")
        api.apply(policy_yaml("pushed", deny="/usr/bin/id") + "  syscalls: {deny: [ptrace]}\n")
        failed = wait_for(lambda: acked(3, "FAILED"), timeout=30, what="v3 refused")
        assert failed["error"].startswith("needs restart"), failed
        go.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "rc2=0" in out and "rc3=126" in out, (out, err, ev.read_text())
        rules = [e["enforcement"]["rule"] for e in
                 map(json.loads, ev.read_text().splitlines()) if e.get("type") == "enforce"]
        assert rules == ["exec.deny: /usr/bin/touch", "exec.deny: /usr/bin/id"], rules
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.stop()


def test_behind_a_gateway_policies_fetched_before_start(work: Path, tmp_path: Path) -> None:
    """Connected to a gateway (enrolled at the server): the gateway relays the
    end-of-initial-sync marker after its first push to the enforcer, so the server's policy
    is enforced from the workload's first call, as when connected to the server."""
    from tests.helpers.controlplane import GatewayProcess, ServerProcess, policy_yaml, wait_for

    srv = ServerProcess(tmp_path / "server").start()
    gw = None
    try:
        api = srv.api()
        api.apply(policy_yaml("via-gw", deny="/usr/bin/touch"))
        gw = GatewayProcess(tmp_path / "gw", srv, "gw1").start()
        ca = work / "ca.pem"
        ca.write_bytes(srv.ca_pem)
        ca.chmod(0o644)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/bin",
               "MORAY_ENROLL_TOKEN": api.token()}
        cmd = [*NOBODY, PYTHON, "-m", "moray.cli", "micro", "--server", gw.target,
               "--enroll-server", srv.enroll_target, "--ca", str(ca), "--sync-timeout", "20",
               "--data-dir", str(work / "rw" / "cp"), "--node", "via-gw"]

        def served() -> bool:
            # the server's in-memory set follows its store a moment later (see
            # test_pushed_policies_enforced_before_start_and_live); --explain asks the
            # gateway, so this also waits for the gateway's copy of the tenant's set;
            # each call waits for the marker (without it: exit 2, "not fetched")
            r = subprocess.run([*cmd, "--explain", "--", "true"], capture_output=True,
                               text=True, timeout=60, env=env, cwd=work / "rw")
            assert r.returncode == 0, r.stderr
            return [p["name"] for p in json.loads(r.stdout)["policies"]] == ["via-gw"]
        wait_for(served, timeout=30, interval=0.2, what="the policy served through the gateway")
        r = subprocess.run([*cmd, "--", *sh(f"touch {work}/rw/x; echo rc=$?")],
                           capture_output=True, text=True, timeout=60, env=env,
                           cwd=work / "rw")
        assert r.returncode == 0 and "rc=126" in r.stdout, r
        assert not (work / "rw" / "x").exists()
    finally:
        if gw is not None:
            gw.stop()
        srv.stop()


def test_server_without_policies_in_time_does_not_start(work: Path) -> None:
    """No server answering: the policies cannot be fetched, the workload never runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/bin",
           "MORAY_ENROLL_TOKEN": "moray-enroll-x"}
    ca = work / "ca.pem"
    ca.write_text("not a certificate")
    ca.chmod(0o644)
    p = subprocess.run(
        [*NOBODY, PYTHON, "-m", "moray.cli", "micro", "--server", "127.0.0.1:9",
         "--enroll-server", "127.0.0.1:9", "--ca", str(ca), "--sync-timeout", "1",
         "--data-dir", str(work / "rw" / "cp"), "--", *sh(f"touch {work}/rw/ran")],
        capture_output=True, text=True, timeout=60, env=env, cwd=work / "rw")
    assert p.returncode != 0 and not (work / "rw" / "ran").exists(), p
    assert "not fetched" in p.stderr, p.stderr


RUNTIME_PROFILE = """
import os, sys
from moray.api.policy.syscalls import X86_64
from moray.micro import filter as bpf, rules
# what the default seccomp profiles of Docker / containerd / CRI-O refuse without
# CAP_SYS_PTRACE, plus openat2 (refused by older profiles)
names = sorted(["pidfd_getfd", "kcmp", "process_vm_readv", "process_vm_writev", "openat2"],
               key=X86_64.get)
plan = rules.Plan(tuple(rules.SyscallRule(X86_64[n], n, default=rules.Action.ERRNO_EPERM)
                        for n in names), ())
bpf.install(bpf.assemble(plan), listener=False)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def test_under_a_container_runtimes_seccomp_profile(work: Path) -> None:
    """Inside a container whose runtime already applies a seccomp profile that refuses
    pidfd_getfd and openat2 (unprivileged containers: no CAP_SYS_PTRACE): the listener is
    handed over through the shared fd table and paths are walked here; nothing depends
    on either call."""
    secret = work / "secret"
    pol = policy(work, f"files: {{deny: [{secret}]}}\nexec: {{deny: [/usr/bin/touch]}}\n"
                       'network: {egress: {deny: ["127.0.0.1/32:9"]}}')
    ev = work / "rw" / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/bin"}
    # the profile is applied first (as the runtime would), then the user is switched
    p = subprocess.run([PYTHON, "-c", RUNTIME_PROFILE, *NOBODY, PYTHON, "-m", "moray.cli",
                        "micro", "--policy", str(pol), "--events", str(ev), "--",
                        "/usr/bin/python3", "-c", textwrap.dedent(f"""
                            import socket, subprocess, os
                            for p in ("{secret}", "/etc/hostname", "/proc/self/status"):
                                try:
                                    open(p).read(); print("read", p)
                                except PermissionError:
                                    print("eperm", p)
                            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            print("udp", s.connect_ex(("127.0.0.1", 9)))
                            try:
                                subprocess.run(["/usr/bin/touch", "{work}/rw/t"])
                            except PermissionError:
                                print("exec eperm")
                        """)],
                       capture_output=True, text=True, timeout=60, env=env, cwd=work / "rw")
    out = p.stdout
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert f"eperm {secret}" in out and "read /etc/hostname" in out, out
    assert "read /proc/self/status" in out and "udp 1" in out and "exec eperm" in out, out
    assert not (work / "rw" / "t").exists()


def test_drift_of_a_deleted_file_and_a_memfd(work: Path) -> None:
    """Code written after start and run without a name: a file unlinked after it was
    opened (execveat AT_EMPTY_PATH, /proc/self/fd/N) and a memfd."""
    pol = policy(work, "exec: {drift: block}")
    r = micro(work, pol, py(f"""
        import os, shutil
        shutil.copy("/usr/bin/true", "{work}/rw/gone")
        fd = os.open("{work}/rw/gone", os.O_RDONLY)
        os.unlink("{work}/rw/gone")
        for how in ("fd", "proc"):
            pid = os.fork()
            if pid == 0:
                try:
                    if how == "fd":
                        os.execve(fd, ["x"], {{}})          # execveat(fd, "", AT_EMPTY_PATH)
                    os.execv(f"/proc/self/fd/{{fd}}", ["x"])
                except PermissionError:
                    os._exit(77)
                os._exit(0)
            print(how, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        m = os.memfd_create("x")
        os.write(m, open("/usr/bin/true", "rb").read())
        pid = os.fork()
        if pid == 0:
            try:
                os.execve(m, ["x"], {{}})
            except PermissionError:
                os._exit(77)
            os._exit(0)
        print("memfd", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """))
    assert "fd 77" in r.out and "proc 77" in r.out and "memfd 77" in r.out, r
    assert len(r.enforce("drift")) == 3, r.events
