"""The webhook's serving certificate: two files, loaded into the live TLS context.

``CertKeeper`` owns ``--tls-cert`` / ``--tls-key`` and what the server's TLS context
serves. What changes it:

- the files change on disk (another tool rotated them: cert-manager, a Secret update):
  checked every ``CERT_CHECK`` seconds, loaded when both parse and match;
- with ``--cert-from-server``: at start, when the files are missing, unreadable or
  expired, a new key is made here and the server signs its CSR (``POST
  /api/v1/admission/serving-cert``, names from ``moray server --webhook-name``); then
  when less than a third of the certificate's lifetime is left (day 60 of 90), checked
  as soon as it serves and every ``CERT_CHECK`` seconds;
- SIGHUP: renew now (with ``--cert-from-server``), else read the files now.

A new certificate is written next to the old files and renamed over them (key first),
then loaded into the same ``ssl.SSLContext``: connections open keep theirs, the next
handshakes get the new one; no listener is closed, no request dropped. A failed renewal
keeps the current certificate and is tried again at the next check. ``expires`` (and
the ``moray_kube_tls_cert_expiry_timestamp_seconds`` metric, the ``/healthz`` field
``cert_expires_in``) shows what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from moray.controlplane.kubeenforcer.verdicts import Server, ServerUnavailable
from moray.errors import ConfigError

log = logging.getLogger(__name__)

CERT_CHECK = 30.0
RENEW_AT = 2 / 3            # of the lifetime: renew with a third left
RETRY_FIRST = (0.5, 30.0)   # first certificate: back-off from, to (seconds)


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    """``data`` as a path OpenSSL can open, in memory only (no writable disk needed)."""
    with os.fdopen(os.memfd_create(name, os.MFD_CLOEXEC), "w+b") as f:
        f.write(data)
        f.flush()
        yield f"/proc/self/fd/{f.fileno()}"


class CertKeeper:
    def __init__(self, cert: Path, key: Path, *, server: Server | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cert, self.key = cert, key
        self.server = server               # None: the files are someone else's
        self.clock = clock
        self.context: ssl.SSLContext | None = None
        self.expires = 0.0                 # unix time the served certificate expires
        self.issued = 0.0                  # ... it became valid
        self.serial = ""
        self.renewed = 0
        self.failed = 0
        self._stamp: tuple[float, float] | None = None
        self._wake = asyncio.Event()
        self._force = False

    # -- the files -------------------------------------------------------------------------

    def _read(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def due(self) -> bool:
        return self.clock() >= self.issued + (self.expires - self.issued) * RENEW_AT

    def _note(self, cert: x509.Certificate) -> None:
        self.issued = cert.not_valid_before_utc.timestamp()
        self.expires = cert.not_valid_after_utc.timestamp()
        self.serial = format(cert.serial_number, "x")

    def load(self) -> None:
        """Read the files (``OSError``/``ValueError`` if they cannot be) and, once a TLS
        context is attached, serve them."""
        stamp = self.cert.stat().st_mtime_ns, self.key.stat().st_mtime_ns
        cert_pem, key_pem = self.cert.read_bytes(), self.key.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        # the pair is read once and loaded from private in-memory copies: a rotation
        # under way (key written, certificate not yet) cannot give the live context a
        # certificate with another one's key. A pair that does not load must not touch
        # the live context either: tried on a throwaway one first.
        with _memory_file("tls.crt", cert_pem) as c, _memory_file("tls.key", key_pem) as k:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(c, k)
            if self.context is not None:
                self.context.load_cert_chain(c, k)
        self._note(cert)
        self._stamp = stamp

    def changed(self) -> bool:
        try:
            return (self.cert.stat().st_mtime_ns, self.key.stat().st_mtime_ns) != self._stamp
        except OSError:
            return False

    def attach(self, context: ssl.SSLContext) -> None:
        self.context = context

    def _write(self, key_pem: bytes, cert_pem: bytes) -> None:
        for path, data, mode in ((self.key, key_pem, 0o600), (self.cert, cert_pem, 0o644)):
            tmp = path.with_name(f".{path.name}.new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)

    # -- from the server -------------------------------------------------------------------

    async def renew(self) -> None:
        """A new key here, its CSR signed by the server, written and served."""
        assert self.server is not None
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                           "moray-kube-enforcer")]))
               .sign(key, hashes.SHA256()))
        answer = await self.server.serving_cert(csr.public_bytes(serialization.Encoding.PEM))
        cert_pem = answer["cert"].encode()
        cert = x509.load_pem_x509_certificate(cert_pem)
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ServerUnavailable("the server signed another key than ours")
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        await asyncio.to_thread(self._write, key_pem, cert_pem)
        self.load()
        self.renewed += 1
        log.info("TLS certificate renewed", extra={
            "serial": self.serial, "not_after": dt.datetime.fromtimestamp(
                self.expires, dt.UTC).isoformat()})

    async def first(self, stop: asyncio.Event) -> None:
        """Before listening: the files as they are while they have not expired (a due
        renewal is the first thing ``run`` does), else a certificate from the server,
        retried with back-off until ``stop``."""
        try:
            self.load()
            if self.server is None or self.clock() < self.expires:
                return
        except (OSError, ValueError) as err:
            if self.server is None:
                raise ConfigError(f"{self.cert}, {self.key}: {err}") from err
        delay = RETRY_FIRST[0]
        while not stop.is_set():
            try:
                await self.renew()
                return
            except (ServerUnavailable, OSError, ValueError) as err:
                self.failed += 1
                log.warning("cannot get a serving certificate from the server; retrying",
                            extra={"error": str(err)[:300], "retry_in": delay})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, RETRY_FIRST[1])

    # -- while serving ---------------------------------------------------------------------

    def wake(self) -> None:
        """SIGHUP: renew now (from the server), else read the files now."""
        self._force = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            force, self._force = self._force, False
            await self.check(force=force)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CERT_CHECK)
            self._wake.clear()

    async def check(self, *, force: bool = False) -> None:
        if self.server is not None and (force or self.due()):
            try:
                await self.renew()
            except (ServerUnavailable, OSError, ValueError) as err:
                self.failed += 1
                log.warning("cannot renew the TLS certificate; still serving the current one",
                            extra={"error": str(err)[:300], "expires_in": int(
                                self.expires - self.clock())})
            return
        if force or self.changed():
            try:
                self.load()
                log.info("TLS certificate reloaded", extra={"cert": str(self.cert),
                                                             "serial": self.serial})
            except (OSError, ValueError, ssl.SSLError) as err:   # half-written: next round
                log.warning("cannot reload the TLS certificate", extra={"error": str(err)})
