"""The chart's pod specs, translated by tests/helpers/podspec.py, run for real on
a private dockerd. The agent DaemonSet's:
a private dockerd: docker accepts every argument, and the container gets what the
manifest asks for (host pid namespace, privileges, the host mounts with their
propagation, the token in its environment and nowhere on a command line, the CA file)
and stops on SIGTERM. A busybox image stands in for the agent image (the built one runs in
test_agent_daemonset_image.py, with BPF), with a shell as entry point before the manifest's
own args. The host paths are moved under a
shared mount of a temp dir: this host's mounts are private (no systemd), and docker, like
the kubelet, refuses rshared/rslave binds of a private mount. Where this host cannot grant
every capability (a sandboxed CI), ``privileged`` runs as every capability it can
(podspec.privileged_options). No BPF is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.chart import one, render
from tests.helpers.containers import (
    DOCKER_CLI,
    DOCKER_IMAGE,
    Dockerd,
    build_rootfs,
    docker_save_tarball,
)
from tests.helpers.podspec import privileged_options, translate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TOKEN = "moray-enroll-podspec-test"
# $0 = agent, "$@" = the manifest's args; stop cleanly on SIGTERM as the agent does
SCRIPT = ('echo "$@" > /tmp/args; trap "echo stopping; exit 0" TERM; '
          'echo started; while :; do sleep 1 & wait $!; done')


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        yield d


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "host"
    root.mkdir()
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    subprocess.run(["mount", "--make-rshared", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-R", "-l", str(root)], check=False)


def _wait(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _mountinfo(pid: int) -> dict[str, list[str]]:
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = fields
    return out


def test_agent_pod_spec_runs_on_docker(dockerd: Dockerd, host: Path, tmp_path: Path) -> None:
    pod = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    run = translate(pod, "agent", workdir=tmp_path / "files", image=DOCKER_IMAGE,
                    command=["sh", "-c", SCRIPT, "agent"], node_name="node-podspec",
                    secrets={"moray-agent-enrollment": {"token": TOKEN, "ca.pem": CA}},
                    host_path=lambda p: str(host / p.lstrip("/")),
                    privileged=privileged_options())
    for sub in ("sys/kernel", "sys/fs/cgroup"):      # hostPath type Directory: must exist
        (host / sub).mkdir(parents=True)
    run.prepare()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "DOCKER_CONFIG": str(dockerd.work / "cli"), **run.environ}
    docker = [DOCKER_CLI, "-H", f"unix://{dockerd.sock}"]
    res = subprocess.run(run.argv(docker=docker), env=env, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, f"{run.shell(docker=docker)}\n{res.stderr}"
    _wait("the container's first line",
          lambda: "started" in dockerd.docker("logs", run.name).stdout)
    info = json.loads(dockerd.docker("inspect", run.name).stdout)[0]
    pid = int(info["State"]["Pid"])

    # hostPID; privileged (or every capability this host can grant)
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    # every capability this host holds, up to AUDIT_READ (37): docker 20.10 knows no later
    # one (CAP_PERFMON, CAP_BPF: the kernel lets CAP_SYS_ADMIN stand for them)
    def caps(status: str, field: str) -> int:
        return next(int(line.split()[1], 16) for line in Path(status).read_text()
                    .splitlines() if line.startswith(field))

    known = (1 << 38) - 1
    held = caps("/proc/self/status", "CapBnd:") & known
    assert caps(f"/proc/{pid}/status", "CapEff:") & known == held
    assert held >> 21 & 1                                     # CAP_SYS_ADMIN
    # $(NODE_NAME) expanded; the token in the environment, on no command line
    args = dockerd.docker("exec", run.name, "cat", "/tmp/args").stdout.split()
    assert args[0] == "run" and "--node=node-podspec" in args
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"MORAY_ENROLL_TOKEN={TOKEN}".encode() in environ
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert TOKEN.encode() not in (proc / "cmdline").read_bytes()
            except OSError:
                continue
    # the host mounts, their propagation and modes
    mounts = _mountinfo(pid)
    assert "ro" in mounts["/host"][5].split(",")
    assert any(f.startswith("master:") for f in mounts["/host"][6:])       # rslave
    assert any(f.startswith("shared:") for f in mounts["/sys/fs/bpf"][6:])  # rshared
    assert "ro" in mounts["/sys/fs/cgroup"][5].split(",")
    assert dockerd.docker("exec", run.name, "cat", "/etc/moray/enrollment/ca.pem").stdout == CA
    assert dockerd.docker("exec", run.name, "stat", "-c", "%a",
                          "/etc/moray/enrollment/ca.pem").stdout.strip() == "400"
    # a mount made under the agent's bpffs reaches the host (Bidirectional)
    dockerd.docker("exec", run.name, "mkdir", "-p", "/sys/fs/bpf/moray")
    dockerd.docker("exec", run.name, "mount", "-t", "tmpfs", "probe", "/sys/fs/bpf/moray")
    _wait("the mount on the host", lambda: os.path.ismount(host / "sys/fs/bpf/moray"))

    # docker stop: SIGTERM, a clean exit within the grace period (not SIGKILL's 137)
    dockerd.docker("stop", run.name, timeout=run.stop_timeout + 30)
    state = json.loads(dockerd.docker("inspect", run.name).stdout)[0]["State"]
    assert state["ExitCode"] == 0
    assert "stopping" in dockerd.docker("logs", run.name).stdout


# the server image has Debian's coreutils; the init container's script needs these besides
PKI_APPLETS = ("cmp", "mv")


def test_server_pki_init_container(dockerd: Dockerd, tmp_path: Path) -> None:
    """The server's init container (server.pki.existingSecret) as the chart writes it, run
    as the server's non-root user: the shared CA and policy key into the data volume's
    pki/, the trusted gateways into pki/gateways/, a server certificate of another CA
    dropped so the server issues itself one from the shared CA."""
    rootfs = build_rootfs(tmp_path / "rootfs")
    for applet in PKI_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    image = "moray-test/busybox-pki:1"
    docker_save_tarball(rootfs, tmp_path / "pki.tar", tag=image)
    dockerd.docker("load", "-i", str(tmp_path / "pki.tar"))

    values = {"server": {"pki": {"existingSecret": "moray-pki"}}}
    pod = one(render(values), "StatefulSet")["spec"]["template"]["spec"]
    data = tmp_path / "data"                 # the PVC; owned by the pod's user (fsGroup)
    (data / "pki").mkdir(parents=True)
    (data / "pki" / "ca.pem").write_text("old CA")
    (data / "pki" / "server.pem").write_text("issued by the old CA")
    (data / "pki" / "server.key").write_text("old key")
    for path in (data, data / "pki", *(data / "pki").iterdir()):
        os.chown(path, 10001, 10001)
    pod["volumes"].append({"name": "data", "hostPath": {"path": str(data), "type": "Directory"}})
    secret = {"ca.key": "CA KEY", "ca.pem": "CA", "policy.key": "POLICY KEY",
              "gateways.gw1.pem": "GW1"}
    run = translate(pod, "pki", init=True, workdir=tmp_path / "files", image=image,
                    pod_name="moray-server-0", secrets={"moray-pki": secret})
    run.prepare()
    for path in run.files:                   # the secret volume, readable by the pod's group
        os.chown(path, 0, 10001)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "DOCKER_CONFIG": str(dockerd.work / "cli"), **run.environ}
    argv = run.argv(docker=[DOCKER_CLI, "-H", f"unix://{dockerd.sock}"], detach=False)
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    pki = data / "pki"
    assert {p.name: p.read_text() for p in pki.iterdir() if p.is_file()} == {
        "ca.key": "CA KEY", "ca.pem": "CA", "policy.key": "POLICY KEY"}
    assert (pki / "gateways" / "gw1.pem").read_text() == "GW1"
    for path in (pki / "ca.key", pki / "policy.key"):     # the server's own, no one else's
        st = path.stat()
        assert st.st_uid == 10001 and st.st_mode & 0o077 == 0
    # the next start (a rolled pod) replaces them again, over the owner-only copies
    (pki / "server.pem").write_text("issued by the shared CA")
    dockerd.docker("rm", run.name)
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert (pki / "ca.key").read_text() == "CA KEY"
    assert (pki / "server.pem").read_text() == "issued by the shared CA"   # same CA: kept
