"""The agent's identity with the control plane: its key, its certificate, the server's CA
and the policy-signing public key, all under ``<data dir>/identity`` and obtained once by
enrolling with a token (one-time, or a multi-use token shared by a DaemonSet's nodes).

Files: ``agent.key`` (ECDSA P-256, 0600, never leaves the host), ``agent.pem`` (issued by
the server CA, CN = agent id), ``ca.pem``, ``policy.pub`` (raw Ed25519 key) and
``agent.json`` (agent id, tenant, labels, key id). Written once at enrolment, and kept
across restarts (the chart mounts the data dir from the host), so a restarted agent never
enrols again; deleting the directory makes it enrol again as a new agent (with a token
that still has a use: docs/controlplane.md "Enrolment tokens").
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.errors import ControlPlaneError

log = logging.getLogger(__name__)


class EnrollmentError(ControlPlaneError):
    pass


@dataclass(frozen=True, slots=True)
class Identity:
    agent_id: str
    tenant: str
    labels: dict[str, str]
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    policy_public_key: bytes
    policy_key_id: str

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem,
                                            private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)


def load_identity(directory: Path) -> Identity | None:
    try:
        meta = json.loads((directory / "agent.json").read_text())
        return Identity(agent_id=meta["agent_id"], tenant=meta["tenant"],
                        labels=meta["labels"], key_pem=(directory / "agent.key").read_bytes(),
                        cert_pem=(directory / "agent.pem").read_bytes(),
                        ca_pem=(directory / "ca.pem").read_bytes(),
                        policy_public_key=(directory / "policy.pub").read_bytes(),
                        policy_key_id=meta["policy_key_id"])
    except FileNotFoundError:
        return None


def fetch_ca(url: str, sha256: str, timeout: float = 10.0) -> bytes:
    """The server's CA from ``url`` (``http://server:7080/ca.pem``), accepted only if its
    SHA-256 fingerprint is ``sha256`` (printed with the enrolment token): the channel may
    be plain HTTP because the pin, not the channel, vouches for the certificate."""
    try:
        response = httpx.get(url, timeout=timeout, verify=False)  # the pin vouches
        response.raise_for_status()
        cert = x509.load_pem_x509_certificate(response.content)
    except (httpx.HTTPError, ValueError) as err:
        raise EnrollmentError(f"cannot fetch the CA from {url}: {err}") from err
    got = cert.fingerprint(hashes.SHA256()).hex()
    if got != sha256.lower().removeprefix("sha256:"):
        raise EnrollmentError(f"the CA at {url} has fingerprint {got}, not the pinned "
                              f"{sha256}: refusing to enrol")
    return response.content


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def enroll(target: str, token: str, ca_pem: bytes, directory: Path, *,
           labels: dict[str, str] | None = None, hostname: str | None = None,
           server_name: str | None = None, timeout: float = 10.0,
           kind: str = "agent") -> Identity:
    """Enrol at ``target`` (host:port of the enrolment listener), trusting ``ca_pem`` for
    the server's certificate, as a ``kind`` (agent, micro ...: the server's agent list
    shows it), and store the identity in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    hostname = hostname or socket.gethostname()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])]))
           .sign(key, hashes.SHA256()))
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_pem),
                             options=options) as channel:
        try:
            reply: moray_pb2.EnrollResponse = moray_pb2_grpc.EnrollmentStub(channel).Enroll(
                moray_pb2.EnrollRequest(token=token, hostname=hostname, labels=labels or {},
                                        kind=kind,
                                        csr_pem=csr.public_bytes(serialization.Encoding.PEM)),
                timeout=timeout)
        except grpc.RpcError as err:
            raise EnrollmentError(f"enrolment at {target} failed: {err.code().name}: "
                                  f"{err.details()}") from err
    _write(directory / "agent.key", key_pem, 0o600)
    _write(directory / "agent.pem", reply.certificate_pem)
    _write(directory / "ca.pem", reply.ca_pem)
    _write(directory / "policy.pub", reply.policy_public_key)
    _write(directory / "agent.json", json.dumps({
        "agent_id": reply.agent_id, "tenant": reply.tenant, "labels": dict(reply.labels),
        "policy_key_id": reply.policy_key_id}, indent=1).encode())
    log.info("enrolled", extra={"agent_id": reply.agent_id, "tenant": reply.tenant})
    identity = load_identity(directory)
    assert identity is not None
    return identity
