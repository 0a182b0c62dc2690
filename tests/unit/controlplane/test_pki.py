"""Gateway certificates: issued by the server's CA, trusted only while their file is under
pki/gateways/, and never confused with agent certificates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moray.controlplane.server.pki import Pki


def test_gateway_certificate_trusted_until_its_file_is_removed(tmp_path: Path) -> None:
    pki = Pki.load_or_create(tmp_path / "pki")
    key_pem, cert_pem = pki.issue_gateway_cert("gw1", ["gw1.example.com", "10.0.0.5"])
    assert b"PRIVATE KEY" in key_pem
    cert = x509.load_pem_x509_certificate(cert_pem)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gw1.example.com" in names.get_values_for_type(x509.DNSName)
    assert pki.gateway_name(cert_pem) == "gw1"
    # another certificate under the same name is not the one on file
    _key2, other = Pki.load_or_create(tmp_path / "pki").issue_gateway_cert("gw2", [])
    (tmp_path / "pki" / "gateways" / "gw2.pem").write_bytes(cert_pem)
    assert pki.gateway_name(other) is None
    (tmp_path / "pki" / "gateways" / "gw1.pem").unlink()
    assert pki.gateway_name(cert_pem) is None


def test_agent_certificate_is_no_gateway(tmp_path: Path) -> None:
    pki = Pki.load_or_create(tmp_path / "pki")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw1")]))
           .sign(key, hashes.SHA256()))
    issued = pki.issue_agent_cert(csr.public_bytes(serialization.Encoding.PEM), "gw1")
    pki.issue_gateway_cert("gw1", [])
    assert pki.gateway_name(issued.pem) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_files_root_writes_belong_to_the_servers_user(tmp_path: Path) -> None:
    """`moray gateway cert` run as root on a packaged server (data dir of user moray): the
    server must still read gateways/ and its certificate, or the gateway's link is refused."""
    nobody = 65534
    Pki.load_or_create(tmp_path / "pki")
    for path in (tmp_path / "pki", *(tmp_path / "pki").iterdir()):
        os.chown(path, nobody, nobody)
    (tmp_path / "pki" / "server.pem").unlink()        # re-issued by the root CLI below
    pki = Pki.load_or_create(tmp_path / "pki")
    pki.issue_gateway_cert("gw1", [])
    for name in ("gateways", "gateways/gw1.pem", "server.pem", "server.key"):
        st = (tmp_path / "pki" / name).stat()
        assert (st.st_uid, st.st_gid) == (nobody, nobody), name
