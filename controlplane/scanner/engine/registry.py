"""Images in a registry, through the OCI distribution API (``/v2/``).

Manifests and configs are fetched whole (bounded); layer blobs are streamed straight
into the layer reader and hashed on the way, never stored. Authentication: anonymous,
HTTP basic, or bearer tokens obtained from the realm named in ``WWW-Authenticate``
(with basic credentials when given). Plain HTTP is used only when asked for *and* the
registry is on a loopback address; otherwise the request is refused before any I/O.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from moray.controlplane.scanner.engine.source import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON_BYTES,
    HashingReader,
    ResolvedImage,
    check_digest,
    manifest_to_image,
    pick_manifest,
)
from moray.controlplane.scanner.errors import DigestMismatchError, ImageFormatError, RegistryError

log = logging.getLogger(__name__)

ACCEPT = ", ".join([*MANIFEST_TYPES, *INDEX_TYPES])
DEFAULT_REGISTRY = "registry-1.docker.io"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str = "latest"
    digest: str = ""

    @property
    def ref(self) -> str:
        return self.digest or self.tag

    def __str__(self) -> str:
        sep = "@" if self.digest else ":"
        return f"{self.registry}/{self.repository}{sep}{self.ref}"


def parse_reference(text: str) -> Reference:
    """``host:5000/a/b:tag``, ``host/a@sha256:...``, ``alpine:3.18`` (Docker Hub)."""
    name, digest = text, ""
    if "@" in text:
        name, digest = text.split("@", 1)
        check_digest(digest, text)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name if "/" in name else f"library/{name}"
    tag = "latest"
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    if not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", path):
        raise ImageFormatError(f"invalid repository name {path!r}", source=text)
    if not re.fullmatch(r"[\w][\w.-]{0,127}", tag):
        raise ImageFormatError(f"invalid tag {tag!r}", source=text)
    return Reference(registry, path, tag, digest)


def is_loopback(host: str) -> bool:
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class _NoAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob storage) but drop credentials when the host changes."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(
                req.full_url).netloc:
            new.remove_header("Authorization")
        return new


class RegistrySource:
    def __init__(self, ref: Reference, *, insecure: bool = False, username: str | None = None,
                 password: str | None = None, platform: tuple[str, str] = ("linux", "amd64"),
                 timeout: float = 60.0, max_blob: int = 1 << 36) -> None:
        self.ref = ref
        self.name = str(ref)
        if insecure and not is_loopback(ref.registry):
            raise RegistryError("plain HTTP is allowed only for a loopback registry",
                                source=self.name)
        self.base = f"{'http' if insecure else 'https'}://{ref.registry}"
        self.username, self.password = username, password
        self.platform = platform
        self.timeout = timeout
        self.max_blob = max_blob
        self._auth: str | None = None
        self._opener = urllib.request.build_opener(_NoAuthRedirect())

    # -- HTTP ----------------------------------------------------------------------------

    def _basic(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def open_path(self, path: str, accept: str = "") -> IO[bytes]:
        """GET a path under the registry base, authenticating on a 401 challenge."""
        url = self.base + path
        for attempt in range(2):
            req = urllib.request.Request(url)
            if accept:
                req.add_header("Accept", accept)
            if self._auth:
                req.add_header("Authorization", self._auth)
            try:
                return self._opener.open(req, timeout=self.timeout)  # type: ignore[no-any-return]
            except urllib.error.HTTPError as err:
                if err.code == 401 and attempt == 0:
                    self._authenticate(err.headers.get("WWW-Authenticate", ""))
                    continue
                body = err.read(2048).decode("utf-8", "replace")
                raise RegistryError(f"HTTP {err.code} for {path}: {body.strip()[:300]}",
                                    source=self.name) from err
            except (TimeoutError, urllib.error.URLError, OSError) as err:
                raise RegistryError(f"cannot reach registry: {err}{_hint(err, url)}",
                                    source=self.name) from err
        raise RegistryError("authentication failed", source=self.name)

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params_text = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self.username is None:
                raise RegistryError("registry wants basic auth and no credentials were given",
                                    source=self.name)
            self._auth = self._basic()
            return
        if scheme.lower() != "bearer":
            raise RegistryError(f"unsupported auth challenge {challenge!r}", source=self.name)
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryError("bearer challenge without a usable realm", source=self.name)
        if realm.startswith("http://") and not is_loopback(urllib.parse.urlsplit(realm).netloc):
            raise RegistryError("token realm over plain HTTP refused", source=self.name)
        query = {"service": params.get("service", ""),
                 "scope": params.get("scope", f"repository:{self.ref.repository}:pull")}
        req = urllib.request.Request(realm + "?" + urllib.parse.urlencode(query))
        basic = self._basic()
        if basic:
            req.add_header("Authorization", basic)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                doc = json.loads(resp.read(MAX_JSON_BYTES))
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise RegistryError(f"token request failed: {err}", source=self.name) from err
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise RegistryError("token response without a token", source=self.name)
        self._auth = f"Bearer {token}"

    def _get_json(self, path: str, accept: str = "") -> tuple[bytes, str]:
        with self.open_path(path, accept) as resp:
            data = resp.read(MAX_JSON_BYTES + 1)
            media = str(getattr(resp, "headers", {}).get("Content-Type", ""))
        if len(data) > MAX_JSON_BYTES:
            raise RegistryError("manifest too large", source=self.name)
        return data, media

    # -- ImageSource ---------------------------------------------------------------------

    def _read_small(self, digest: str) -> bytes:
        data, _ = self._get_json(f"/v2/{self.ref.repository}/blobs/{digest}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatchError("blob content does not match", source=self.name,
                                      layer=digest)
        return data

    def _manifest(self, ref: str) -> tuple[dict[str, Any], str, str]:
        data, media = self._get_json(f"/v2/{self.ref.repository}/manifests/{ref}", ACCEPT)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.startswith("sha256:") and digest != ref:
            raise DigestMismatchError("manifest does not match its digest", source=self.name)
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise ImageFormatError(f"manifest is not JSON: {err}", source=self.name) from err
        return doc, digest, doc.get("mediaType") or media.split(";")[0]

    def manifest_digest(self) -> str:
        """The digest of the image manifest the reference names (an index: the manifest of
        ``platform`` in it), which is what a scan's verdict is stored under; reads the
        manifest (and an index) only, never the config or layers."""
        doc, digest, media = self._manifest(self.ref.ref)
        if media in INDEX_TYPES or "manifests" in doc:
            desc = pick_manifest(doc, self.name, None, self.platform)
            return check_digest(str(desc.get("digest")), self.name)
        return digest

    def resolve(self) -> ResolvedImage:
        doc, digest, media = self._manifest(self.ref.ref)
        if media in INDEX_TYPES or "manifests" in doc:
            desc = pick_manifest(doc, self.name, None, self.platform)
            doc, digest, media = self._manifest(check_digest(str(desc.get("digest")), self.name))
        if media and media not in MANIFEST_TYPES:
            raise ImageFormatError(f"unsupported manifest type {media}", source=self.name)
        return manifest_to_image(doc, digest, self._read_small, self.name)

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[IO[bytes]]:
        check_digest(digest, self.name)
        with self.open_path(f"/v2/{self.ref.repository}/blobs/{digest}") as resp:
            yield HashingReader(resp, digest, self.name, self.max_blob)  # type: ignore[misc]


MAX_PAGES = 1000


def _next_link(header: str) -> str:
    """The path of a ``Link: </v2/_catalog?last=x&n=100>; rel="next"`` header, or ''."""
    m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', header or "")
    if not m:
        return ""
    parts = urllib.parse.urlsplit(m.group(1))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _paged(src: RegistrySource, path: str, key: str) -> list[str]:
    out: list[str] = []
    for _ in range(MAX_PAGES):
        with src.open_path(path) as resp:
            data = resp.read(MAX_JSON_BYTES)
            link = str(getattr(resp, "headers", {}).get("Link", ""))
        try:
            out.extend(str(x) for x in json.loads(data).get(key) or [])
        except (ValueError, AttributeError) as err:
            raise RegistryError(f"bad {key} listing: {err}", source=src.name) from err
        path = _next_link(link)
        if not path:
            break
    return out


def list_images(registry: str, *, insecure: bool = False, username: str | None = None,
                password: str | None = None, repositories: list[str] | None = None) -> list[str]:
    """Every ``registry/repo:tag`` in a registry (catalog API), or in the given repositories."""
    catalog = RegistrySource(Reference(registry, "catalog"), insecure=insecure,
                             username=username, password=password)
    repos = repositories or _paged(catalog, "/v2/_catalog?n=1000", "repositories")
    images: list[str] = []
    for repo in repos:
        src = RegistrySource(Reference(registry, repo), insecure=insecure, username=username,
                             password=password)
        images.extend(f"{registry}/{repo}:{tag}"
                      for tag in _paged(src, f"/v2/{repo}/tags/list?n=1000", "tags"))
    return images


def _hint(err: BaseException, url: str) -> str:
    """What to try when HTTPS met a plain-HTTP registry (the TLS handshake reads an HTTP
    answer: "wrong version number", "record layer failure")."""
    reason = getattr(err, "reason", err)
    if url.startswith("https://") and isinstance(reason, ssl.SSLError):
        return ("; if this registry speaks plain HTTP, scan with --insecure-registry "
                "(allowed only for a loopback registry)")
    return ""
