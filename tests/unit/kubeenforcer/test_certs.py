"""CertKeeper: when a certificate from the server is due (two thirds of its lifetime), what
start-up does with files that are there, expired or missing, and that a renewal the server
cannot give keeps the current certificate. A fake Server signs with a real Pki; a clock is
injected."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from moray.controlplane.kubeenforcer.certs import CertKeeper
from moray.controlplane.kubeenforcer.config import EnforcerConfig
from moray.controlplane.kubeenforcer.verdicts import Server, ServerUnavailable
from moray.controlplane.server.pki import Pki
from moray.errors import ConfigError

DAY = 86400.0


class SigningServer(Server):
    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.down = False
        self.calls = 0

    async def serving_cert(self, csr_pem: bytes) -> dict[str, str]:
        self.calls += 1
        if self.down:
            raise ServerUnavailable("server unreachable: test")
        cert = self.pki.sign_serving_csr(csr_pem, "moray-kube-enforcer", ["webhook.test"])
        return {"cert": cert.decode(), "ca": self.pki.ca_pem.decode(), "not_after": ""}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.load_or_create(tmp_path / "pki")


def _serial(path: Path) -> str:
    return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "x")


def test_first_certificate_from_the_server_then_due_at_two_thirds(pki: Pki,
                                                                  tmp_path: Path) -> None:
    server = SigningServer(pki)
    now = [0.0]
    keeper = CertKeeper(tmp_path / "tls.crt", tmp_path / "tls.key", server=server,
                        clock=lambda: now[0])
    asyncio.run(keeper.first(asyncio.Event()))
    assert server.calls == 1 and keeper.renewed == 1
    assert keeper.serial == _serial(tmp_path / "tls.crt")
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tmp_path / "tls.crt",
                                                            tmp_path / "tls.key")
    lifetime = keeper.expires - keeper.issued          # 90 days, valid from a day before
    now[0] = keeper.issued + lifetime * 0.66
    assert not keeper.due()
    now[0] = keeper.issued + lifetime * 0.67
    assert keeper.due()
    first = keeper.serial
    asyncio.run(keeper.check())
    assert keeper.serial != first and keeper.renewed == 2


def test_files_there_are_used_until_they_expire(pki: Pki, tmp_path: Path) -> None:
    server = SigningServer(pki)
    key, cert = pki.issue_serving_cert("x", ["webhook.test"])
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    now = [0.0]
    keeper = CertKeeper(tmp_path / "tls.crt", tmp_path / "tls.key", server=server,
                        clock=lambda: now[0])
    now[0] = 1e12          # far beyond: expired
    asyncio.run(keeper.first(asyncio.Event()))
    assert server.calls == 1
    # a restart with an unexpired (even due) certificate serves it first
    keeper2 = CertKeeper(tmp_path / "tls.crt", tmp_path / "tls.key", server=server,
                         clock=lambda: keeper.expires - 1)
    asyncio.run(keeper2.first(asyncio.Event()))
    assert server.calls == 1 and keeper2.serial == keeper.serial and keeper2.due()


def test_a_failed_renewal_keeps_the_current_certificate(pki: Pki, tmp_path: Path) -> None:
    server = SigningServer(pki)
    keeper = CertKeeper(tmp_path / "tls.crt", tmp_path / "tls.key", server=server)
    asyncio.run(keeper.first(asyncio.Event()))
    serial = keeper.serial
    server.down = True
    asyncio.run(keeper.check(force=True))
    assert keeper.failed == 1 and keeper.serial == serial == _serial(tmp_path / "tls.crt")


def test_start_waits_for_the_server_and_stops_when_told(pki: Pki, tmp_path: Path) -> None:
    server = SigningServer(pki)
    server.down = True
    keeper = CertKeeper(tmp_path / "tls.crt", tmp_path / "tls.key", server=server)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keeper.first(stop))
        while server.calls < 2:
            await asyncio.sleep(0.05)
        server.down = False
        await asyncio.wait_for(task, 10)
        assert keeper.renewed == 1
        # without a server nothing is waited for: the files must be there
        with pytest.raises(ConfigError):
            await CertKeeper(tmp_path / "no.crt", tmp_path / "no.key").first(stop)

    asyncio.run(run())


def test_a_mismatched_pair_on_disk_is_not_loaded(pki: Pki, tmp_path: Path) -> None:
    key, cert = pki.issue_serving_cert("x", ["webhook.test"])
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    keeper = CertKeeper(tmp_path / "tls.crt", tmp_path / "tls.key")
    asyncio.run(keeper.first(asyncio.Event()))
    serial = keeper.serial
    _, other = pki.issue_serving_cert("x", ["webhook.test"])
    (tmp_path / "tls.crt").write_bytes(other)          # half a rotation: the new cert only
    asyncio.run(keeper.check())
    assert keeper.serial == serial


def test_config_default_is_files() -> None:
    assert EnforcerConfig(server="http://s", token="t").cert_from_server is False
