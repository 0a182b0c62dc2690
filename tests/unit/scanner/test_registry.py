"""RegistrySource against an in-process fake registry: bearer tokens, basic auth,
digest checks, and the loopback-only rule for plain HTTP."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from moray.controlplane.scanner.engine.registry import (
    RegistrySource,
    _next_link,
    is_loopback,
    parse_reference,
)
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.errors import ImageFormatError, RegistryError
from tests.fixtures.images.builder import Image, sha

IMAGE = Image([{"usr/lib/python3/site-packages/requests-2.19.0.dist-info/METADATA":
                b"Name: requests\nVersion: 2.19.0\n"}])


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    blobs: ClassVar[dict[str, bytes]] = {}
    manifests: ClassVar[dict[str, bytes]] = {}
    token = "tok123"
    tamper = ""  # digest of a blob to corrupt

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path.startswith("/token"):
            creds = base64.b64encode(b"alice:wonderland").decode()
            if self.headers.get("Authorization") != f"Basic {creds}":
                self._send(401)
                return
            self._send(200, b'{"token": "%s"}' % self.token.encode())
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, b"{}", {"WWW-Authenticate":
                       f'Bearer realm="http://127.0.0.1:{port}/token",service="fake",'
                       f'scope="repository:team/app:pull"'})
            return
        _, _, _repo1, _repo2, kind, ref = self.path.split("/")
        if kind == "manifests" and ref in self.manifests:
            self._send(200, self.manifests[ref],
                       {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        elif kind == "blobs" and ref in self.blobs:
            body = self.blobs[ref]
            if ref == self.tamper:
                body = body[:-1] + bytes([body[-1] ^ 1])
            self._send(200, body)
        else:
            self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')


@pytest.fixture
def registry() -> Iterator[str]:
    _, blobs, config, manifest = IMAGE.build()
    FakeRegistry.blobs = {sha(b): b for b in [*blobs, config]}
    FakeRegistry.manifests = {"1.0": manifest, sha(manifest): manifest}
    FakeRegistry.tamper = ""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bearer_token_flow_with_basic_credentials(registry: str) -> None:
    src = RegistrySource(parse_reference(f"{registry}/team/app:1.0"), insecure=True,
                         username="alice", password="wonderland")
    result = scan_image(src, ScanOptions())
    assert [(p.name, p.version) for p in result.packages] == [("requests", "2.19.0")]
    assert result.digest == sha(IMAGE.build()[3])


def test_wrong_credentials_and_missing_tag(registry: str) -> None:
    bad = RegistrySource(parse_reference(f"{registry}/team/app:1.0"), insecure=True,
                         username="alice", password="nope")
    with pytest.raises(RegistryError, match="token request failed"):
        bad.resolve()
    good = RegistrySource(parse_reference(f"{registry}/team/app:2.0"), insecure=True,
                          username="alice", password="wonderland")
    with pytest.raises(RegistryError, match="HTTP 404"):
        good.resolve()


def test_tampered_layer_is_refused(registry: str) -> None:
    FakeRegistry.tamper = sha(IMAGE.build()[1][0])
    src = RegistrySource(parse_reference(f"{registry}/team/app:1.0"), insecure=True,
                         username="alice", password="wonderland")
    with pytest.raises((RegistryError, ImageFormatError)):
        scan_image(src, ScanOptions())


def test_plain_http_only_for_loopback() -> None:
    with pytest.raises(RegistryError, match="loopback"):
        RegistrySource(parse_reference("registry.example.test/a/b:1"), insecure=True)
    assert is_loopback("127.0.0.1:5000") and is_loopback("[::1]:5000")
    assert is_loopback("localhost:5000") and not is_loopback("10.0.0.1:5000")
    src = RegistrySource(parse_reference("registry.example.test/a/b:1"))
    assert src.base == "https://registry.example.test"


def test_plain_http_registry_without_the_flag_says_which(registry: str) -> None:
    """HTTPS against a plain-HTTP registry fails in the TLS handshake; the error names
    --insecure-registry."""
    src = RegistrySource(parse_reference(f"{registry}/team/app:1.0"))
    with pytest.raises(RegistryError, match="scan with --insecure-registry"):
        src.resolve()


def test_parse_reference() -> None:
    r = parse_reference("127.0.0.1:5000/team/app:1.0")
    assert (r.registry, r.repository, r.tag) == ("127.0.0.1:5000", "team/app", "1.0")
    r = parse_reference("alpine:3.18")
    assert (r.registry, r.repository, r.tag) == ("registry-1.docker.io", "library/alpine",
                                                 "3.18")
    d = "sha256:" + "a" * 64
    assert parse_reference(f"localhost:5000/x@{d}").ref == d
    with pytest.raises(ImageFormatError):
        parse_reference("host.test/UPPER/../x:1")


def test_pagination_link() -> None:
    assert _next_link('</v2/_catalog?last=b&n=2>; rel="next"') == "/v2/_catalog?last=b&n=2"
    assert _next_link('<https://r.test/v2/x/tags/list?n=1&last=a>; rel="next"') == \
        "/v2/x/tags/list?n=1&last=a"
    assert _next_link("") == ""
