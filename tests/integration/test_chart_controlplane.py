"""The chart's server and gateway containers, run as processes on this host with the
rendered args and env (only host paths and the Service's address moved: no cluster, no
DNS): the server starts on them and its readiness probe (the chart's, run as
tests/helpers/podspec.py's command in the server's network namespace) passes; the REST
client in the pod reaches it with the env the chart sets (`kubectl exec ... moray agents
token`); the server certificate covers the Service name agents and gateways verify; an
agent enrols with the chart's --enroll-server and CA file; a gateway started with the
chart's args links to the server and passes its probe. No BPF, no lock needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from moray.agent.controlplane.identity import enroll
from tests.helpers.chart import one, render
from tests.helpers.controlplane import ROOT, free_ports, wait_for
from tests.helpers.podspec import DockerRun, translate

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="nsenter needs root")]

SERVICE = "moray-server.moray-system.svc"
GATEWAY = "moray-gateway.moray-system.svc"
ALIAS_MODULE = {"moray-server": "moray.controlplane.server.main",
                "moray-gateway": "moray.controlplane.gateway.main"}


def _moved(text: str, moves: dict[str, Path]) -> str:
    for old, new in moves.items():
        text = text.replace(old, str(new))
    return text


class Component:
    """One container of the rendered chart run as a process: ``python -m <module of its
    command> <args>``, the container's env, its paths moved under a temp dir."""

    def __init__(self, run: DockerRun, command: list[str], moves: dict[str, Path],
                 log: Path) -> None:
        self.run, self.log = run, log
        self.argv = [sys.executable, "-m", ALIAS_MODULE[command[0]],
                     *(_moved(a, moves) for a in run.args)]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT),
                    **{k: _moved(v, moves) for k, v in run.environ.items()}}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Component:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def probe(self, kind: str) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        cmd = self.run.probes[kind].command(self.proc.pid)
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pod(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    pod: dict[str, Any] = one(docs, kind)["spec"]["template"]["spec"]
    return pod


@pytest.fixture
def chart(tmp_path: Path) -> Iterator[dict[str, Any]]:
    grpc, enrol, http, gw = free_ports(4)
    docs = render({"server": {"ports": {"grpc": grpc, "enroll": enrol, "http": http}},
                   "gateway": {"enabled": True, "port": gw,
                               "pki": {"existingSecret": "moray-gateway-pki"}}})
    yield {"docs": docs, "grpc": grpc, "enroll": enrol, "http": http, "gateway": gw}


def test_server_and_gateway_from_the_chart(chart: dict[str, Any], tmp_path: Path) -> None:
    docs = chart["docs"]
    data = tmp_path / "server"
    pod = _pod(docs, "StatefulSet")
    pod["volumes"].append({"name": "data", "hostPath": {"path": str(data)}})   # the PVC
    run = translate(pod, "server", workdir=tmp_path / "files")
    command = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["command"]
    server = Component(run, command, {"/var/lib/moray": data}, tmp_path / "server.log")
    gateway: Component | None = None
    try:
        server.start()
        wait_for(lambda: server.probe("readiness"), timeout=60, interval=0.2,
                 what="the server's readiness probe")
        assert server.probe("liveness") and server.probe("startup")

        # `kubectl exec moray-server-0 -- moray agents token --json`: the pod's env suffices
        out = subprocess.run([sys.executable, "-m", "moray.cli", "agents", "token", "--json"],
                             env=server.env, cwd=ROOT, capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stderr
        issued = json.loads(out.stdout)
        ca_pem = (data / "pki" / "ca.pem").read_bytes()

        # the server certificate covers the Service's names
        cert = x509.load_pem_x509_certificate((data / "pki" / "server.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert {"moray-server", "moray-server.moray-system", SERVICE,
                SERVICE + ".cluster.local"} <= set(names)

        # an agent with the chart's --enroll-server (the Service, here at 127.0.0.1) and the
        # CA file of the enrolment Secret, verifying the certificate by the Service's name
        agent = _pod(docs, "DaemonSet")["containers"][0]
        enrol_target = next(a.split("=", 1)[1] for a in agent["args"]
                            if a.startswith("--enroll-server="))
        assert enrol_target == f"{SERVICE}:{chart['enroll']}"
        identity = enroll(enrol_target.replace(SERVICE, "127.0.0.1"), issued["token"], ca_pem,
                          tmp_path / "agent", hostname="node-1", server_name=SERVICE)
        assert identity.agent_id

        # a gateway from the chart's Deployment: its Secret made by `moray gateway cert`
        gw_pki = tmp_path / "gateway-pki"
        out = subprocess.run([sys.executable, "-m", "moray.cli", "gateway", "cert",
                              "--name", "gw1", "--host", GATEWAY, "--out", str(gw_pki)],
                             env=server.env, cwd=ROOT, capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stderr
        secret = {p.name: p.read_bytes() for p in gw_pki.iterdir()}
        gw_pod = _pod(docs, "Deployment")
        gw_run = translate(gw_pod, "gateway", workdir=tmp_path / "files",
                           secrets={"moray-gateway-pki": secret})
        gw_run.prepare()
        (pki_dir,) = {p.parent for p in gw_run.files}
        gw_command = gw_pod["containers"][0]["command"]
        assert f"--server={SERVICE}:{chart['grpc']}" in gw_run.args
        gateway = Component(gw_run, gw_command, {
            f"--server={SERVICE}": f"--server-name={SERVICE}\0--server=127.0.0.1",
            "/etc/moray-gateway/pki": pki_dir,
            "/var/lib/moray-gateway": tmp_path / "gateway-data"}, tmp_path / "gateway.log")
        # the Service's name cannot resolve here: same args, server at 127.0.0.1, the
        # certificate still verified against the Service's name
        gateway.argv = [part for a in gateway.argv for part in a.split("\0")]
        gateway.start()
        wait_for(lambda: gateway is not None and gateway.probe("readiness"), timeout=60,
                 interval=0.2, what="the gateway's readiness probe")
        wait_for(lambda: "linked to the server" in gateway.log.read_text(), timeout=60,
                 what=f"the gateway's link (log: {gateway.log})")
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
