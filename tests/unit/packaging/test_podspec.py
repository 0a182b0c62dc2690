"""tests/helpers/podspec.py on the rendered chart: the agent DaemonSet's pod spec (and the
gateway's, the unload mode's) as docker run arguments, probes as commands."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart import one, render
from tests.helpers.podspec import (
    IMAGE_DEFAULT,
    Missing,
    Probe,
    Unsupported,
    expand,
    privileged_options,
    quantity,
    translate,
    translate_pod,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SECRETS = {"moray-agent-enrollment": {"token": "moray-enroll-secret", "ca.pem": CA}}


def _pod(values: dict[str, Any] | None = None, kind: str = "DaemonSet") -> dict[str, Any]:
    pod: dict[str, Any] = one(render(values), kind)["spec"]["template"]["spec"]
    return pod


def _mounts(options: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for opt in options:
        if opt.startswith("--mount="):
            fields = dict(f.partition("=")[::2] for f in opt.removeprefix("--mount=").split(","))
            out[fields["destination"]] = fields
    return out


def test_agent_daemonset_as_docker_run(tmp_path: Path) -> None:
    run = translate(_pod(), "agent", workdir=tmp_path, secrets=SECRETS, node_name="node-7")
    assert run.image == IMAGE_DEFAULT + ":0.1.0"
    opts = run.options
    assert "--privileged" in opts and "--pid=host" in opts
    assert "--network=host" not in opts          # the pod network, not the node's
    assert "--entrypoint=moray-agent" in opts
    assert run.args[0] == "run"
    assert "--node=node-7" in run.args           # $(NODE_NAME) expanded as the kubelet does
    assert "--stop-timeout=60" in opts and run.stop_timeout == 60
    assert "--memory=536870912" in opts and "--cpu-shares=102" in opts
    # the token reaches the container through the environment only
    assert "--env=MORAY_ENROLL_TOKEN" in opts
    assert run.environ["MORAY_ENROLL_TOKEN"] == "moray-enroll-secret"
    assert "moray-enroll-secret" not in " ".join(run.argv())
    mounts = _mounts(opts)
    assert mounts["/host"] == {"type": "bind", "source": "/", "destination": "/host",
                               "readonly": "", "bind-propagation": "rslave"}
    assert mounts["/sys/fs/bpf"]["bind-propagation"] == "rshared"
    assert mounts["/sys/fs/bpf"]["source"] == "/sys/fs/bpf"
    assert mounts["/sys/kernel"]["source"] == "/sys/kernel"
    assert "readonly" in mounts["/sys/fs/cgroup"]
    assert mounts["/var/lib/moray-agent"]["source"] == "/var/lib/moray-agent"
    assert mounts["/etc/moray/policies"]["type"] == "tmpfs"
    ca_dir = Path(mounts["/etc/moray/enrollment"]["source"])
    assert "readonly" in mounts["/etc/moray/enrollment"]
    assert run.files == {ca_dir / "ca.pem": (CA.encode(), 0o400)}
    assert {Path("/sys/fs/bpf"), Path("/run/moray"), Path("/var/lib/moray-agent")} <= \
        set(run.host_dirs)
    assert run.probes["readiness"] == Probe("http", 9464, "/readyz", "HTTP", period=5,
                                            timeout=3, failure_threshold=3)
    assert run.probes["liveness"].path == "/healthz"
    assert run.probes["startup"].budget == 300
    argv = run.argv(docker=["docker", "-H", "unix:///x.sock"])
    assert argv[:4] == ["docker", "-H", "unix:///x.sock", "run"]
    assert argv[argv.index(run.image) + 1:] == run.args


def test_prepare_writes_secret_files(tmp_path: Path) -> None:
    moved = tmp_path / "host"
    run = translate(_pod(), "agent", workdir=tmp_path / "work", secrets=SECRETS,
                    host_path=lambda p: str(moved / p.lstrip("/")))
    run.prepare()
    (ca,) = run.files
    assert ca.read_text() == CA
    assert stat.S_IMODE(ca.stat().st_mode) == 0o400
    assert (moved / "sys/fs/bpf").is_dir() and (moved / "var/lib/moray-agent").is_dir()
    assert _mounts(run.options)["/host"]["source"] == str(moved)


def test_image_and_command_placeholders(tmp_path: Path) -> None:
    run = translate(_pod(), "agent", workdir=tmp_path, secrets=SECRETS,
                    image="moray-test/agent:dev", command=["/opt/venvs/moray/bin/moray-agent"])
    assert run.image == "moray-test/agent:dev"
    assert "--entrypoint=/opt/venvs/moray/bin/moray-agent" in run.options
    assert run.args[0] == "run"


def test_missing_secret_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Missing, match="moray-agent-enrollment"):
        translate(_pod(), "agent", workdir=tmp_path)
    with pytest.raises(Missing, match=r"ca\.pem"):
        translate(_pod(), "agent", workdir=tmp_path,
                  secrets={"moray-agent-enrollment": {"token": "t"}})


def test_unknown_fields_are_refused_not_dropped(tmp_path: Path) -> None:
    pod = _pod()
    pod["shareProcessNamespace"] = True
    with pytest.raises(Unsupported, match="shareProcessNamespace"):
        translate(pod, "agent", workdir=tmp_path, secrets=SECRETS)
    pod = _pod()
    pod["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["x"]}}}
    with pytest.raises(Unsupported, match="lifecycle"):
        translate(pod, "agent", workdir=tmp_path, secrets=SECRETS)
    pod = _pod()
    pod["volumes"].append({"name": "nfs", "nfs": {"server": "x", "path": "/"}})
    pod["containers"][0]["volumeMounts"].append({"name": "nfs", "mountPath": "/nfs"})
    with pytest.raises(Unsupported, match="nfs"):
        translate(pod, "agent", workdir=tmp_path, secrets=SECRETS)


def test_unload_mode_runs_an_init_container(tmp_path: Path) -> None:
    inits, mains = translate_pod(_pod({"agent": {"unloadOnly": True}}), workdir=tmp_path)
    (unload,) = inits
    assert unload.args == ["unload", "--pin-root=/sys/fs/bpf/moray"]
    assert _mounts(unload.options)["/sys/fs/bpf"]["bind-propagation"] == "rshared"
    (idle,) = mains
    assert "--entrypoint=sleep" in idle.options and idle.args == ["infinity"]
    assert "--privileged" not in idle.options and idle.probes == {}


def test_non_root_gateway(tmp_path: Path) -> None:
    values = {"gateway": {"enabled": True, "pki": {"existingSecret": "gw-pki"}}}
    pki = {"gw-pki": {"gateway.key": "k", "gateway.pem": "c", "ca.pem": CA}}
    run = translate(_pod(values, "Deployment"), "gateway", workdir=tmp_path, secrets=pki)
    opts = run.options
    assert "--user=10001:10001" in opts and "--group-add=10001" in opts
    assert "--read-only" in opts and "--cap-drop=ALL" in opts
    assert "--security-opt=no-new-privileges" in opts
    assert _mounts(opts)["/var/lib/moray-gateway"]["tmpfs-size"] == str(1200 * 2**20)
    assert {p.name: m for p, (_, m) in run.files.items()} == {
        "gateway.key": 0o440, "gateway.pem": 0o440, "ca.pem": 0o440}
    assert run.probes["readiness"] == Probe("http", 9465, "/readyz", period=5)


def test_expand_and_quantity() -> None:
    env = {"A": "x"}
    assert expand("$(A)-$(B)-$$(A)", env) == "x-$(B)-$(A)"
    assert quantity("512Mi") == 512 * 2**20 and quantity("100m") == pytest.approx(0.1)
    with pytest.raises(Unsupported):
        quantity("lots")


def test_probe_commands_poll_from_the_pod_network() -> None:
    http = Probe("http", 9464, "/readyz")
    cmd = http.command(4242)
    assert cmd[:5] == ["nsenter", "-t", "4242", "-n", sys.executable]
    ex = Probe("exec", exec_command=("moray-agent", "probe"))
    assert ex.command(1, container="c", docker=["docker", "-H", "s"]) == \
        ["docker", "-H", "s", "exec", "c", "moray-agent", "probe"]
    # the check itself, run without nsenter against nothing listening: fails, says why
    res = subprocess.run([*cmd[4:7], "tcp", "127.0.0.1", "1", "/", "HTTP", "1"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "127.0.0.1:1" in res.stderr


def test_privileged_where_the_bounding_set_is_short(tmp_path: Path) -> None:
    full, short = tmp_path / "full", tmp_path / "short"
    full.write_text("Name:\tx\nCapBnd:\t000001ffffffffff\n")
    short.write_text("Name:\tx\nCapBnd:\t000001fffeffffff\n")    # no CAP_SYS_RESOURCE
    assert privileged_options(str(full)) == ["--privileged"]
    opts = privileged_options(str(short))
    assert opts[:2] == ["--cap-add=ALL", "--cap-drop=SYS_RESOURCE"]
    assert "--security-opt=seccomp=unconfined" in opts
    run = translate(_pod(), "agent", workdir=tmp_path, secrets=SECRETS, privileged=opts)
    assert "--privileged" not in run.options and "--cap-drop=SYS_RESOURCE" in run.options
