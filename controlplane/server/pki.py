"""The server's keys: the certificate authority of its agents, the server's own TLS
certificate, and the Ed25519 key that signs policies.

Files under ``<data dir>/pki`` (created on first start, private keys mode 0600):
``ca.key``/``ca.pem`` (ECDSA P-256, 10 years), ``server.key``/``server.pem`` (issued by
the CA for the names the server is reached by; re-issued when the names change) and
``policy.key`` (Ed25519). Agents get ``ca.pem`` and the policy public key at enrolment.
``gateways/<name>.pem``: the certificates issued to gateways (``moray gateway cert``);
the server trusts a gateway certificate only while its file is there (delete it to
revoke the gateway: its next link is refused). Files written here by root (the CLI on a
packaged server, whose data dir belongs to user moray) get the directory's owner.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moray.errors import ControlPlaneError

log = logging.getLogger(__name__)

_DAY = dt.timedelta(days=1)
GATEWAY_ORG = "moray gateways"   # subject O of gateway certificates


class PkiError(ControlPlaneError):
    pass


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _owned_like(directory: Path, *paths: Path) -> None:
    """Give ``paths`` the owner of ``directory`` when root wrote them: `moray gateway cert`
    run as root on a packaged server's data dir (the server runs as user moray and must
    read ``gateways/``), or a server certificate re-issued by a CLI run as root."""
    if os.geteuid() != 0:
        return
    owner = directory.stat()
    for path in paths:
        st = path.stat()
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(path, owner.st_uid, owner.st_gid)


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@functools.lru_cache(maxsize=1 << 15)
def cert_sha256(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER. Remembered per PEM: every call of every agent
    stream names its peer's certificate this way (a parse costs ~30 us; a fleet's
    heartbeats and streams ask for the same few thousand certificates all day)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


CsrKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def _csr_key(csr_pem: bytes) -> CsrKey:
    """The public key of a CSR whose self-signature verifies (EC, Ed25519 or RSA >= 2048)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise PkiError(f"malformed CSR: {err}") from err
    if not csr.is_signature_valid:
        raise PkiError("CSR signature does not verify")
    public_key = csr.public_key()
    strong_rsa = isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048
    if not (isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
            or strong_rsa):
        raise PkiError("CSR key must be EC, Ed25519 or RSA >= 2048 bits")
    assert isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey |
                      rsa.RSAPublicKey)
    return public_key


@dataclass(frozen=True, slots=True)
class IssuedCert:
    pem: bytes
    serial: str
    sha256: str


class PolicyKey:
    """Ed25519 key that signs policy payloads; ``key_id`` names it (SHA-256 of the public
    key, first 16 hex digits) so a key rotation can be told apart."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                        serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.public_raw).hexdigest()[:16]

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


class Pki:
    def __init__(self, directory: Path, *, ca_key: ec.EllipticCurvePrivateKey,
                 ca_cert: x509.Certificate, server_key_pem: bytes, server_cert_pem: bytes,
                 policy_key: PolicyKey) -> None:
        self.directory = directory
        self._ca_key = ca_key
        self.ca_cert = ca_cert
        self.ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.server_key_pem = server_key_pem
        self.server_cert_pem = server_cert_pem
        self.policy_key = policy_key

    @classmethod
    def load_or_create(cls, directory: Path, names: list[str] | None = None) -> Pki:
        """Load the keys in ``directory``, creating whatever is missing. ``names`` are the
        host names and IP addresses the server certificate must be valid for (localhost,
        127.0.0.1, ::1 and this host's name are always included)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_key_path, ca_path = directory / "ca.key", directory / "ca.pem"
        if ca_key_path.exists() != ca_path.exists():
            raise PkiError(f"{directory}: ca.key and ca.pem must both exist or neither")
        if not ca_key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moray"),
                              x509.NameAttribute(NameOID.COMMON_NAME, "moray agent CA")])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(_now() - _DAY).not_valid_after(_now() + 3650 * _DAY)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(
                        digital_signature=True, key_cert_sign=True, crl_sign=True,
                        content_commitment=False, key_encipherment=False,
                        data_encipherment=False, key_agreement=False, encipher_only=False,
                        decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                   critical=False)
                    .sign(key, hashes.SHA256()))
            _write_private(ca_key_path, _pem_key(key))
            ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            log.info("created agent CA", extra={"path": str(ca_path)})
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{ca_key_path}: not an EC private key")
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())

        policy_path = directory / "policy.key"
        if not policy_path.exists():
            _write_private(policy_path, _pem_key(ed25519.Ed25519PrivateKey.generate()))
        policy_key = serialization.load_pem_private_key(policy_path.read_bytes(), None)
        if not isinstance(policy_key, ed25519.Ed25519PrivateKey):
            raise PkiError(f"{policy_path}: not an Ed25519 private key")

        pki = cls(directory, ca_key=ca_key, ca_cert=ca_cert, server_key_pem=b"",
                  server_cert_pem=b"", policy_key=PolicyKey(policy_key))
        pki._ensure_server_cert(names or [])
        return pki

    def _ensure_server_cert(self, extra: list[str]) -> None:
        names = sorted({"localhost", "127.0.0.1", "::1", socket.gethostname(), *extra})
        key_path, cert_path = self.directory / "server.key", self.directory / "server.pem"
        if key_path.exists() and cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                have = {str(v) for v in san.value.get_values_for_type(x509.DNSName)} | {
                    str(v) for v in san.value.get_values_for_type(x509.IPAddress)}
            except x509.ExtensionNotFound:
                have = set()
            fresh = cert.not_valid_after_utc > _now() + 30 * _DAY
            if set(names) <= have and fresh and cert.issuer == self.ca_cert.subject:
                self.server_key_pem, self.server_cert_pem = key_path.read_bytes(), \
                    cert_path.read_bytes()
                return
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            "moray-server")]))
                .issuer_name(self.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - _DAY).not_valid_after(_now() + 825 * _DAY)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self._ca_key, hashes.SHA256()))
        self.server_key_pem = _pem_key(key)
        self.server_cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write_private(key_path, self.server_key_pem)
        cert_path.write_bytes(self.server_cert_pem)
        _owned_like(self.directory, key_path, cert_path)

    def issue_agent_cert(self, csr_pem: bytes, agent_id: str,
                         days: int = 365) -> IssuedCert:
        """Sign an agent's CSR. The subject is set here (CN = agent id); only the CSR's
        public key is used, after its self-signature is checked."""
        public_key = _csr_key(csr_pem)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                            "moray agents"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
                .issuer_name(self.ca_cert.subject).public_key(public_key)
                .serial_number(serial)
                .not_valid_before(_now() - _DAY).not_valid_after(_now() + days * _DAY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self._ca_key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return IssuedCert(pem=pem, serial=format(serial, "x"),
                          sha256=cert.fingerprint(hashes.SHA256()).hex())

    # -- serving certificates (the admission webhook) -------------------------------------

    def issue_serving_cert(self, name: str, hosts: list[str], days: int = 90
                           ) -> tuple[bytes, bytes]:
        """A key and a TLS server certificate (CN = ``name``) for ``hosts``, such as the
        admission webhook's Service names (``moray-kube-enforcer.moray.svc``); the API
        server verifies it with this CA (the webhook configuration's ``caBundle``).
        Nothing is recorded: it authenticates a server to clients, never a client here."""
        key = ec.generate_private_key(ec.SECP256R1())
        return _pem_key(key), self._serving_cert(name, hosts, key.public_key(), days)

    def sign_serving_csr(self, csr_pem: bytes, name: str, hosts: list[str], days: int = 90
                         ) -> bytes:
        """``issue_serving_cert`` for a key the caller holds (the webhook renewing its
        certificate over the REST API: its key never leaves its pod). Only the CSR's
        public key is used, after its self-signature is checked: the names are
        ``hosts``, whatever the CSR asks for."""
        return self._serving_cert(name, hosts, _csr_key(csr_pem), days)

    def _serving_cert(self, name: str, hosts: list[str], public_key: CsrKey,
                      days: int) -> bytes:
        if not hosts:
            raise PkiError("a serving certificate needs at least one host name or IP")
        alt: list[x509.GeneralName] = []
        for n in sorted(set(hosts)):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.ca_cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - _DAY).not_valid_after(_now() + days * _DAY)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self._ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_names(self) -> set[str]:
        """The DNS names and IPs the server's own certificate covers."""
        cert = x509.load_pem_x509_certificate(self.server_cert_pem)
        try:
            alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return set()
        return {*alt.get_values_for_type(x509.DNSName),
                *(str(a) for a in alt.get_values_for_type(x509.IPAddress))}

    # -- gateways ------------------------------------------------------------------------

    def issue_gateway_cert(self, name: str, hosts: list[str], days: int = 825
                           ) -> tuple[bytes, bytes]:
        """A key and certificate for gateway ``name`` (O = moray gateways, CN = name),
        valid as a TLS server for ``hosts`` (agents connect to it; none given: localhost and
        127.0.0.1) and as a client (it links to this server); recorded under ``gateways/``
        so the server trusts it."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise PkiError(f"gateway name {name!r}: letters, digits, '-', '_', '.' only")
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for n in sorted(set(hosts or ["localhost", "127.0.0.1"])):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                            GATEWAY_ORG),
                                         x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - _DAY).not_valid_after(_now() + days * _DAY)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self._ca_key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        gateways = self.directory / "gateways"
        gateways.mkdir(mode=0o700, exist_ok=True)
        (gateways / f"{name}.pem").write_bytes(pem)
        _owned_like(self.directory, gateways, gateways / f"{name}.pem")
        return _pem_key(key), pem

    def gateway_name(self, cert_pem: bytes) -> str | None:
        """The gateway a client certificate belongs to, or None: it must be a gateway
        certificate (O = moray gateways) whose file is still under ``gateways/``."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not orgs or orgs[0].value != GATEWAY_ORG or not names:
            return None
        name = str(names[0].value)
        path = self.directory / "gateways" / f"{name}.pem"
        try:
            known = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None
        return name if known.fingerprint(hashes.SHA256()) == cert.fingerprint(
            hashes.SHA256()) else None
