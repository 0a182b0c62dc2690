"""The chart's server and gateway containers, run as processes on this host with the
rendered args and env (only host paths and the Service's address moved: no cluster, no
DNS): the server starts on them and its readiness probe (the chart's, run as
tests/helpers/podspec.py's command in the server's network namespace) passes; the REST
client in the pod reaches it with the env the chart sets (`kubectl exec ... moray agents
token`); the server certificate covers the Service name agents and gateways verify; an
agent enrols with the chart's --enroll-server and CA file; a gateway started with the
chart's args links to the server and passes its probe; the kube-enforcer started with the
chart's args, ConfigMap and token Secret gets its certificate from that server, passes
its probes and answers AdmissionReviews over a TLS connection verified as the API server
would (the webhook configuration's caBundle, the Service's name), before and after a
renewal. No BPF, no lock needed."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
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
from tests.helpers.kube import review, workload
from tests.helpers.podspec import DockerRun, translate

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="nsenter needs root")]

SERVICE = "moray-server.moray-system.svc"
GATEWAY = "moray-gateway.moray-system.svc"
KUBE_ENFORCER = "moray-kube-enforcer.moray-system.svc"
ALIAS_MODULE = {"moray-server": "moray.controlplane.server.main",
                "moray-gateway": "moray.controlplane.gateway.main",
                "moray-kube-enforcer": "moray.controlplane.kubeenforcer.main"}


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


PLACEHOLDER_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _api_server_call(port: int, ca_bundle: str, body: dict[str, Any]
                     ) -> tuple[int, dict[str, Any], x509.Certificate]:
    """POST /validate as the API server does: TLS verified with the webhook
    configuration's caBundle against the Service's name (connected at 127.0.0.1)."""
    ctx = ssl.create_default_context(cadata=base64.b64decode(ca_bundle).decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=KUBE_ENFORCER) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        data = json.dumps(body).encode()
        tls.sendall(b"POST /validate HTTP/1.1\r\nHost: " + KUBE_ENFORCER.encode() +
                    b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        resp = http.client.HTTPResponse(tls)        # type: ignore[arg-type]
        resp.begin()
        answer = json.loads(resp.read())
        return resp.status, answer, x509.load_der_x509_certificate(der)


def _kube_enforcer(docs: list[dict[str, Any]], token: str, tmp_path: Path) -> Component:
    """The chart's kube-enforcer container as a process: its ConfigMap's files, the token
    Secret by env, the certificate emptyDir and the server's Service moved here."""
    ke_pod = _pod(docs, "Deployment")
    ke_run = translate(ke_pod, "kube-enforcer", workdir=tmp_path / "files",
                       secrets={"moray-kube-enforcer-token": {"token": token}},
                       config_maps={"moray-kube-enforcer": one(
                           docs, "ConfigMap", "moray-kube-enforcer")["data"]})
    ke_run.prepare()
    (config_dir,) = {p.parent for p in ke_run.files}
    assert not any(token in a for a in ke_run.args)       # from the Secret, by env
    assert ke_run.environ["MORAY_TOKEN"] == token
    tls_dir = tmp_path / "ke-tls"
    tls_dir.mkdir()
    return Component(ke_run, ke_pod["containers"][0]["command"], {
        "moray-server.moray-system.svc": "127.0.0.1",      # no cluster DNS here
        "/etc/moray-kube-enforcer": config_dir,
        "/var/run/moray-kube-enforcer/tls": tls_dir}, tmp_path / "kube-enforcer.log")


def test_kube_enforcer_from_the_chart(tmp_path: Path) -> None:
    grpc, enrol, http_port, webhook = free_ports(4)
    ke = {"enabled": True, "port": webhook, "caPem": PLACEHOLDER_CA,
          "token": {"existingSecret": "moray-kube-enforcer-token"}}
    values: dict[str, Any] = {"server": {"ports": {"grpc": grpc, "enroll": enrol,
                                                   "http": http_port}},
                              "kubeEnforcer": ke}
    # the server as installed with the kube-enforcer on: --webhook-name for its Service
    docs = render(values)
    data = tmp_path / "server"
    pod = _pod(docs, "StatefulSet")
    pod["volumes"].append({"name": "data", "hostPath": {"path": str(data)}})
    run = translate(pod, "server", workdir=tmp_path / "files")
    assert f"--webhook-name={KUBE_ENFORCER}" in run.args
    server = Component(run, pod["containers"][0]["command"], {"/var/lib/moray": data},
                       tmp_path / "server.log")
    enforcer: Component | None = None
    try:
        server.start()
        wait_for(lambda: server.probe("readiness"), timeout=60, interval=0.2,
                 what="the server's readiness probe")
        # the admission token and the CA, as docs/install-kubernetes.md says to get them
        out = subprocess.run([sys.executable, "-m", "moray.cli", "tokens", "create",
                              "kube-enforcer", "admission", "--json"], env=server.env,
                             cwd=ROOT, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        token = json.loads(out.stdout)["token"]
        ca_pem = (data / "pki" / "ca.pem").read_text()

        docs = render({**values, "kubeEnforcer": {**ke, "caPem": ca_pem}})
        again = _pod(docs, "StatefulSet")
        again["volumes"].append({"name": "data", "hostPath": {"path": str(data)}})
        assert translate(again, "server", workdir=tmp_path / "files").args == run.args
        vwc = one(docs, "ValidatingWebhookConfiguration")
        ca_bundle = vwc["webhooks"][0]["clientConfig"]["caBundle"]
        enforcer = _kube_enforcer(docs, token, tmp_path)
        enforcer.start()
        wait_for(lambda: enforcer is not None and enforcer.probe("startup"), timeout=60,
                 interval=0.2, what="the kube-enforcer's startup probe")
        assert enforcer.probe("readiness") and enforcer.probe("liveness")

        # verified as the API server verifies it; the chart's settings decide
        excluded = review(workload("Deployment", "dns", "kube-system", ["k8s.io/dns:1"]))
        status, answer, first = _api_server_call(webhook, ca_bundle, excluded)
        assert status == 200 and answer["response"]["allowed"] is True
        unknown = review(workload("Deployment", "web", "shop",
                                  ["registry.invalid/shop/web:1.0"]))
        status, answer, _ = _api_server_call(webhook, ca_bundle, unknown)
        assert status == 200 and answer["response"]["allowed"] is False
        assert "(failurePolicy: closed)" in answer["response"]["status"]["message"]

        # renewed (the timer's path, forced): the next handshake gets the new one, verified
        # by the same caBundle; same process
        assert enforcer.proc is not None
        enforcer.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _api_server_call(webhook, ca_bundle, excluded)[2].serial_number
                 != first.serial_number, timeout=30, interval=0.1,
                 what="the renewed certificate")
        assert enforcer.proc.poll() is None and enforcer.probe("readiness")
    finally:
        if enforcer is not None:
            enforcer.stop()
        server.stop()
