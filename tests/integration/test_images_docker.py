"""The server and gateway images `make images` built (packaging/images/build), on a private
dockerd: the chart's server StatefulSet pod spec (non-root user, read-only root file
system, no capabilities, its data volume a host directory standing in for the PVC) runs
the server image, which makes its CA on the volume and answers the chart's HTTPS probes;
both images carry the user and entry point the chart expects and no compiler. No BPF
(no lock). Skips when the images are not built (tests/helpers/images.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.chart import one, render
from tests.helpers.containers import DOCKER_CLI, Dockerd
from tests.helpers.images import archive, reference
from tests.helpers.podspec import translate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

SERVER_UID = 10001  # the chart's server.runAsUser, the image's user
GATEWAY = {"gateway": {"enabled": True, "pki": {"existingSecret": "moray-gateway-pki"}}}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dockerd, dict[str, str]]]:
    tars = {name: archive(name) for name in ("server", "gateway")}
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        refs = {}
        for name, tar in tars.items():
            d.docker("load", "-i", str(tar), timeout=300)
            refs[name] = reference(tar)
        yield d, refs


def _config(d: Dockerd, ref: str) -> dict[str, object]:
    config: dict[str, object] = json.loads(d.docker("image", "inspect", ref).stdout)[0]["Config"]
    return config


def test_images_named_as_the_chart_with_their_users(images: tuple[Dockerd, dict[str, str]]
                                                    ) -> None:
    d, refs = images
    server = one(render(GATEWAY), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    gateway = one(render(GATEWAY), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert refs == {"server": server["image"], "gateway": gateway["image"]}
    for name, ref in refs.items():
        config = _config(d, ref)
        assert config["User"] == f"{SERVER_UID}:{SERVER_UID}"
        assert config["Entrypoint"] == [f"/usr/bin/moray-{name}"]
        # the image's own user and entry point, no root, nothing to compile with
        res = d.docker("run", "--rm", "--network", "none", "--entrypoint", "sh", ref, "-c",
                       "id -u; for c in gcc cc clang ld protoc pip apt-get; do "
                       "command -v $c; done; find /usr/share/doc /usr/share/man -mindepth 1 "
                       "| wc -l; find / -xdev -type f -perm /6000 | wc -l", check=False)
        assert res.stdout.split() == [str(SERVER_UID), "0", "0"], res
        res = d.docker("run", "--rm", "--network", "none", ref, "--help", check=False)
        assert res.returncode == 0 and "usage" in res.stdout.lower(), res


def test_server_pod_spec_runs_the_server_image(images: tuple[Dockerd, dict[str, str]],
                                               tmp_path: Path) -> None:
    d, refs = images
    pod = one(render(), "StatefulSet")["spec"]["template"]["spec"]
    data = tmp_path / "data"          # the PVC: owned by the pod's group (fsGroup)
    data.mkdir()
    os.chown(data, SERVER_UID, SERVER_UID)
    pod["volumes"].append({"name": "data", "hostPath": {"path": str(data), "type": "Directory"}})
    run = translate(pod, "server", workdir=tmp_path / "files", pod_name="moray-server-0")
    assert run.image == refs["server"]
    run.prepare()
    docker = [DOCKER_CLI, "-H", f"unix://{d.sock}"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "DOCKER_CONFIG": str(d.work / "cli"), **run.environ}
    res = subprocess.run(run.argv(docker=docker), env=env, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, f"{run.shell(docker=docker)}\n{res.stderr}"
    pid = int(json.loads(d.docker("inspect", run.name).stdout)[0]["State"]["Pid"])
    assert Path(f"/proc/{pid}/status").read_text().count(f"\t{SERVER_UID}\t") >= 2  # Uid, Gid

    def probe(kind: str) -> bool:
        cmd = run.probes[kind].command(pid, container=run.name, docker=docker)
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0

    deadline = time.monotonic() + 180
    while not probe("readiness"):
        state = json.loads(d.docker("inspect", run.name).stdout)[0]["State"]
        assert state["Running"] and time.monotonic() < deadline, \
            d.docker("logs", "--tail", "30", run.name).stderr
        time.sleep(0.5)
    assert probe("liveness") and probe("startup")
    ca = data / "pki" / "ca.pem"
    assert ca.is_file() and ca.stat().st_uid == SERVER_UID
    d.docker("stop", run.name, timeout=run.stop_timeout + 30)
    state = json.loads(d.docker("inspect", run.name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, (state, d.docker("logs", "--tail", "30", run.name).stderr)
