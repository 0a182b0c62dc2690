"""The default rules stay quiet on an ordinary workload in a REAL runc container (root).

The container's entrypoint runs shell scripts (loops, subshells, nested `sh -c`,
redirections, one from /dev/shm; pipelines into `sh -c`, a script and `python3 -c`),
reads /etc/passwd, its own /proc/1/environ and /proc/net/dev, appends to its shell
history, touches files (with and without -r), makes symbolic links, writes under /tmp and
its workdir, and serves its workdir with Python's http.server, answering requests from
busybox wget and from Python (the host's /usr is bind-mounted read-only for the
interpreter). Its network namespace has
only loopback. No alert may name this container; runc's own set-up (mounts, unshare in
the container's cgroup before the entrypoint runs) must not alert either.

On the host, the same agent sees what the new technique rules could mistake for an attack:
`ip netns add` (bind mounts of namespace files), strace (process_vm_readv), a package
manager running a helper it put in /tmp and /run, systemd-detect-virt (/proc/1/environ),
touch -d and cp -p outside watched paths, a symbolic link to /etc/hostname, the test
command `/usr/bin/[` (task name "["). No alert may
come from that script or its children.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess, Event
from tests.helpers.containers import build_rootfs, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3"),
]

JOB = r"""#!/bin/sh
set -e
for i in 1 2 3; do echo "line $i" >> /work/out.txt; done
n=$(grep -c line /work/out.txt)
echo "$n lines" > /tmp/count
sh -c 'echo nested; sh -c "echo deeper"' > /tmp/nested
( cd /tmp && ls > /tmp/listing )
head -1 /etc/passwd > /tmp/first-user
mkdir -p /tmp/data /work/cache
cp /etc/passwd /tmp/data/passwd.copy
rm -f /tmp/data/passwd.copy
if [ -s /tmp/count ]; then echo ok > /work/cache/status; fi
"""

ENTRY = r"""#!/bin/sh
cd /work
sh /work/job.sh
/bin/sh /work/job.sh
cat /etc/passwd > /dev/null
while read -r line; do :; done < /etc/passwd
echo data > /tmp/file
echo data > /work/file
cat /proc/net/dev > /dev/null                     # interface counters, not the socket tables
read -r env < /proc/1/environ || true             # the entrypoint reads its own environment
cp /work/job.sh /dev/shm/job.sh; sh /dev/shm/job.sh   # a script from tmpfs, run by the shell
echo 'ls -la' >> /root/.ash_history               # a shell appending to its history
touch /root/.stamp /work/file                     # "now": no explicit times
touch -r /etc/passwd /work/file; cp -p /etc/passwd /tmp/passwd.p
ln -s /work/file /tmp/file-link; ln -s /etc/passwd /tmp/passwd-link
ps > /tmp/ps.txt
echo x | sh -c 'cat' > /dev/null                  # a pipeline into sh -c: a program given
echo data | sh /work/job.sh                       # a script with data on its stdin
echo data | python3 -c "import sys; sys.stdin.read()"
python3 -m http.server 8080 --bind 127.0.0.1 --directory /work > /tmp/http.log 2>&1 &
i=0
until wget -q -O /tmp/page http://127.0.0.1:8080/file; do
  i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1
done
for i in 1 2 3 4 5; do wget -q -O /tmp/page http://127.0.0.1:8080/out.txt; done
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/').status)"
kill %1
python3 -c "print('benign-done')"
exec sleep 600
"""


def prepare(work: Path, netns: str) -> tuple[Path, dict[str, object]]:
    """The workload's busybox rootfs under *work* (job and entry scripts, /lib links into
    the host's /usr) and a network namespace *netns* with loopback up; returns the rootfs
    and the OCI mount of the host's /usr (read-only) for run_runc. Used by
    test_enforce_benign.py too."""
    rootfs = build_rootfs(work / "rootfs")
    for d in ("work", "usr"):
        (rootfs / d).mkdir(exist_ok=True)
    for link in ("lib", "lib64"):
        (rootfs / link).symlink_to(f"usr/{link}")
    (rootfs / "work" / "job.sh").write_text(JOB)
    (rootfs / "entry.sh").write_text(ENTRY)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    usr: dict[str, object] = {"destination": "/usr", "type": "bind", "source": "/usr",
                              "options": ["rbind", "ro"]}
    return rootfs, usr


@pytest.fixture(scope="module")
def benign() -> Iterator[tuple[AgentProcess, str]]:
    work = Path(tempfile.mkdtemp(prefix="moray-benign-"))
    netns = f"mrben{os.getpid()}"
    try:
        rootfs, usr = prepare(work, netns)
        (work / "agent").mkdir()
        with AgentProcess(workdir=work / "agent") as agent:
            cid = f"mr-benign-{os.getpid()}"
            with run_runc(cid, ["/bin/sh", "/entry.sh"], rootfs=rootfs,
                          network=f"/run/netns/{netns}", mounts=[usr],
                          env=("PATH=/bin:/usr/bin", "HOME=/root"), start=True):
                agent.events.wait_for(
                    lambda e: e.get("type") == "exec"
                    and any("benign-done" in a for a in e["process"]["args"]),
                    timeout=120, what="the benign workload to finish")
                agent.events.wait_for(lambda e: e.get("type") == "exit"
                                      and "benign-done" in " ".join(e["process"]["args"]),
                                      timeout=30, what="the marker to exit")
                yield agent, cid
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _mine(agent: AgentProcess, cid: str, kind: str) -> list[Event]:
    agent.events.poll()
    out = []
    for e in agent.events.events:
        ev = e.get("event", e) if e.get("type") == "alert" else e
        c = ev.get("container") or {}
        if c.get("id") == cid and e.get("type") == kind:
            out.append(e)
    return out


def test_workload_ran(benign: tuple[AgentProcess, str]) -> None:
    agent, cid = benign
    execs = [" ".join(e["process"]["args"]) for e in _mine(agent, cid, "exec")]
    assert any("http.server" in a for a in execs), execs
    assert any("wget" in a for a in execs), execs
    opens = {e["file"]["path"] for e in _mine(agent, cid, "open")}
    assert "/etc/passwd" in opens
    accepts = _mine(agent, cid, "accept")
    assert len(accepts) >= 6, "the web server answered the requests"


def test_no_alert_for_the_benign_container(benign: tuple[AgentProcess, str]) -> None:
    agent, cid = benign
    alerts = _mine(agent, cid, "alert")
    assert not alerts, "\n".join(f"{a['rule']}: {a['output']}" for a in alerts)


HOST = r"""#!/bin/sh
W=$1
ip netns add mrhb$$ && ip netns del mrhb$$
if command -v strace > /dev/null; then strace -f -o /dev/null /bin/true; fi
systemd-detect-virt > /dev/null 2>&1 || true
mkdir -p "$W/bin"
# a package manager that unpacks a helper into /tmp and /run (tmpfs) and runs it
cat > "$W/bin/dpkg" <<EOS
#!/bin/sh
for d in /tmp /run; do
  h=\$d/moray-dpkg-helper-\$\$; cp /bin/true \$h; \$h; rm -f \$h
done
EOS
chmod +x "$W/bin/dpkg"; "$W/bin/dpkg"
touch -d '2020-01-01 00:00:00' "$W/file"; cp -p /etc/hostname "$W/hostname.copy"
ln -s /etc/hostname "$W/hostname-link"
if [ -x /usr/bin/[ ]; then /usr/bin/[ -f /etc/hostname ] || true; fi   # comm "[", not a kthread
/bin/true moray-host-benign-done
"""


def test_no_alert_for_benign_host_activity(benign: tuple[AgentProcess, str]) -> None:
    agent, _ = benign
    work = Path(tempfile.mkdtemp(prefix="moray-benign-host-"))
    try:
        script = work / "host-benign.sh"
        script.write_text(HOST)
        res = subprocess.run(["/bin/sh", str(script), str(work)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        agent.events.wait_for(lambda e: e.get("type") == "exit"
                              and "moray-host-benign-done" in e["process"]["args"],
                              timeout=30, what="the host workload's marker to exit")
        helper = agent.events.wait_for(
            lambda e: e.get("type") == "exec"
            and e["process"]["binary"].startswith("/run/moray-dpkg-helper-"),
            timeout=10, what="the package manager's helper to run from /run")
        assert helper["process"]["binary"]
        # the look-alikes were seen (the rules had something to stay quiet about)
        agent.events.wait_for(lambda e: (e.get("syscall") or {}).get("name") == "mount"
                              and e["process"]["comm"] == "ip", timeout=10,
                              what="ip netns add's bind mount")
        if shutil.which("strace"):
            agent.events.wait_for(
                lambda e: (e.get("syscall") or {}).get("name") == "process_vm_readv"
                and e["process"]["comm"] == "strace", timeout=10,
                what="strace's process_vm_readv")
        agent.events.poll()

        def mine(a: Event) -> bool:
            chain = [a["event"]["process"], *a["ancestry"]]
            return any(str(script) in (p.get("args") or []) for p in chain)
        # strace attaches with PTRACE_SEIZE: "Ptrace attach or traceme" reports that by
        # design (on the host too); what strace does next (process_vm_readv) must not alert
        alerts = [a for a in agent.events.events if a.get("type") == "alert" and mine(a)
                  and not (a["rule"] == "Ptrace attach or traceme"
                           and a["event"]["process"]["comm"] == "strace")]
        assert not alerts, "\n".join(f"{a['rule']}: {a['output']}" for a in alerts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
