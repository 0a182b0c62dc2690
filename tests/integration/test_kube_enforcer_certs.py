"""The webhook's serving certificate from the server's CA, renewed without a restart.

A real moray-server (REST over HTTPS) started with ``--webhook-name``; ``moray
kube-enforcer --cert-from-server`` with an admission token gets its certificate from
``POST /api/v1/admission/serving-cert`` at start, and a new one on SIGHUP (what the
expiry timer does at two thirds of the lifetime) while real HTTPS AdmissionReviews keep
coming, on new connections and on one kept alive: none fails, the new certificate is
served, same process. Also: the names are the server's, never the caller's; a webhook
name that is the server's own is refused; files rotated by another tool are reloaded.
No registry, no BPF: ~10 s.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers.controlplane import ROOT, ServerProcess, wait_for
from tests.helpers.kube import Webhook, issue_webhook_cert, review, workload

pytestmark = pytest.mark.integration

NAMES = ("localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("certs")
    srv = ServerProcess(tmp / "server", http_tls=True, extra_args=tuple(
        f"--webhook-name={n}" for n in NAMES)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    tok: str = server.api()("POST", "/api/v1/tokens", expect=201,
                            json={"name": "kube-enforcer", "role": "admission"})["token"]
    return tok


def _served(port: int, ca: Path) -> x509.Certificate:
    """The certificate a new TLS handshake gets."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _names(cert: x509.Certificate) -> set[str]:
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*alt.get_values_for_type(x509.DNSName),
            *(str(a) for a in alt.get_values_for_type(x509.IPAddress))}


def _excluded_review() -> dict[str, Any]:
    # kube-system is excluded: answered without a registry or a verdict
    return review(workload("Deployment", "dns", "kube-system", ["registry.k8s.io/dns:1"]))


class Hammer(threading.Thread):
    """AdmissionReviews in a loop, each on a new connection, until stopped; counts
    answers and keeps every failure."""

    def __init__(self, port: int, ca: Path) -> None:
        super().__init__(daemon=True)
        self.port, self.ca = port, ca
        self.ok = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        while not self.done.is_set():
            try:
                with httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=ctx,
                                  timeout=10) as http:
                    r = http.post("/validate", json=_excluded_review())
                if r.status_code == 200 and r.json()["response"]["allowed"] is True:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as err:
                self.failures.append(f"{type(err).__name__}: {err}")


def _metric(hook: Webhook, line_start: str) -> float:
    text = hook.http.get("/metrics").text
    found = [ln for ln in text.splitlines() if ln.startswith(line_start)]
    assert found, (line_start, text[-2000:])
    return float(found[0].rsplit(" ", 1)[1])


def test_certificate_from_the_server_renewed_without_a_restart(
        server: ServerProcess, token: str, tmp_path: Path) -> None:
    ca = server.data_dir / "pki" / "ca.pem"
    hook = Webhook(tmp_path, server, token, "fetch", {"cluster": "test"}, extra_args=(
        "--cert-from-server", "--ca", str(ca))).spawn().wait_ready()
    try:
        assert hook.proc is not None
        pid = hook.proc.pid
        first = _served(hook.port, ca)
        assert _names(first) == set(NAMES)
        assert first.issuer == x509.load_pem_x509_certificate(ca.read_bytes()).subject
        assert (hook.key.stat().st_mode & 0o777) == 0o600
        health = hook.http.get("/healthz").json()
        assert health["cert_serial"] == format(first.serial_number, "x")
        assert 85 * 86400 < health["cert_expires_in"] <= 90 * 86400
        expiry = _metric(hook, "moray_kube_tls_cert_expiry_timestamp_seconds")
        assert expiry == first.not_valid_after_utc.timestamp()

        # a connection kept alive across the rotation, and new ones all along
        kept = hook.http
        assert kept.post("/validate", json=_excluded_review()).status_code == 200
        hammer = Hammer(hook.port, ca)
        hammer.start()
        wait_for(lambda: hammer.ok >= 20, timeout=30, what="requests before the rotation")
        hook.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _served(hook.port, ca).serial_number != first.serial_number,
                 timeout=30, interval=0.05, what="the renewed certificate served")
        after = hammer.ok
        wait_for(lambda: hammer.ok >= after + 20, timeout=30, what="requests after it")
        hammer.done.set()
        hammer.join(15)
        assert hammer.failures == []
        assert kept.post("/validate", json=_excluded_review()).status_code == 200
        assert hook.proc.poll() is None and hook.proc.pid == pid    # no restart

        second = _served(hook.port, ca)
        assert _names(second) == set(NAMES)
        assert second.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
            x509.load_pem_x509_certificate(hook.cert.read_bytes()).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert hook.http.get("/healthz").json()["cert_serial"] == \
            format(second.serial_number, "x")
        assert _metric(hook, 'moray_kube_tls_renewals_total{result="ok"}') == 2.0
        assert _metric(hook, 'moray_kube_tls_renewals_total{result="failed"}') == 0.0

        # each issue is audited, with the admission token as author
        audit = server.api()("GET", "/api/v1/audit", params={"limit": 1000})
        issued = [a for a in audit if a["action"] == "admission.serving_cert"]
        assert len(issued) == 2 and {a["actor"] for a in issued} == {"admission:kube-enforcer"}

        # a restart reuses the certificate on disk while it is not due
        hook.stop()
        hook.spawn().wait_ready()
        assert _served(hook.port, ca).serial_number == second.serial_number
    finally:
        hook.close()


def _csr(*names: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "evil")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_the_names_are_the_servers_never_the_callers(server: ServerProcess,
                                                     token: str) -> None:
    api = server.api(token)
    doc = api("POST", "/api/v1/admission/serving-cert", expect=200,
              json={"csr": _csr("moray-server.moray-system.svc")})
    cert = x509.load_pem_x509_certificate(doc["cert"].encode())
    assert _names(cert) == set(NAMES)
    assert doc["ca"] == (server.data_dir / "pki" / "ca.pem").read_text()
    assert api.status("POST", "/api/v1/admission/serving-cert", json={"csr": "junk"}) == 422
    viewer = server.api()("POST", "/api/v1/tokens", expect=201,
                          json={"name": "v", "role": "viewer"})["token"]
    assert server.api(viewer).status("POST", "/api/v1/admission/serving-cert",
                                     json={"csr": _csr("x")}) == 403


def test_webhook_names_must_not_be_the_servers_own(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    out = subprocess.run(
        [sys.executable, "-m", "moray.controlplane.server.main", "--data-dir", str(data),
         "--host", "127.0.0.1", "--grpc-port", "0", "--enroll-port", "1", "--http-port", "2",
         "--name", "moray.example.com", "--webhook-name", "moray.example.com"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert "--webhook-name moray.example.com: the server's own name" in out.stderr


def test_files_rotated_by_another_tool_are_reloaded(server: ServerProcess, token: str,
                                                    tmp_path: Path) -> None:
    ca = server.data_dir / "pki" / "ca.pem"
    hook = Webhook(tmp_path, server, token, "files", {"cluster": "test"}).spawn().wait_ready()
    try:
        first = _served(hook.port, ca)
        issue_webhook_cert(server, hook.dir)          # new files, as cert-manager would
        assert hook.proc is not None
        hook.proc.send_signal(signal.SIGHUP)          # (else within 30 s)
        wait_for(lambda: _served(hook.port, ca).serial_number != first.serial_number,
                 timeout=30, interval=0.05, what="the new files served")
        assert hook.http.post("/validate", json=_excluded_review()).status_code == 200
        assert hook.proc.poll() is None
    finally:
        hook.close()
