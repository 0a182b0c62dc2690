"""Where a client command finds moray-server: the REST API's URL, an API token, and the CA
of a server run with ``--http-tls``; and the one HTTP client built from them.

Each setting comes from the first of, in this order:

1. the command line: ``--server``, ``--token``, ``--ca`` (before or after the subcommand);
2. the environment: ``$MORAY_SERVER``, ``$MORAY_TOKEN``, ``$MORAY_CA``;
3. the config file: ``$MORAY_CONFIG``, else ``$XDG_CONFIG_HOME/moray/config.yaml`` (default
   ``~/.config/moray/config.yaml``), a YAML mapping with the keys ``server``, ``token``
   and ``ca`` (a relative ``ca`` is taken from the file's folder).

A missing default file is not an error; a file named by ``$MORAY_CONFIG`` must exist.
Users: ``moray policy|agents|events|audit|tokens`` (which also fall back to
``http://127.0.0.1:7080`` and ``$MORAY_DATA_DIR/admin.token``), ``moray scan
registry|image`` and ``moray vulndb import`` (a server sends them to it; none: the local
store), ``moray scan worker`` and ``moray scan IMAGE`` (a server: jobs and matching there).
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moray.errors import ConfigError, ControlPlaneError, ServerUnreachable

if TYPE_CHECKING:
    import httpx

KEYS = ("server", "token", "ca")
ENV = {"server": "MORAY_SERVER", "token": "MORAY_TOKEN", "ca": "MORAY_CA"}
DEFAULT_SERVER = "http://127.0.0.1:7080"


def config_path(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file and whether it must exist (named by ``$MORAY_CONFIG``)."""
    if environ.get("MORAY_CONFIG"):
        return Path(environ["MORAY_CONFIG"]), True
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or "~") / ".config")
    return Path(base).expanduser() / "moray" / "config.yaml", False


def read_config_file(path: Path, *, required: bool) -> dict[str, str]:
    """The file's settings; ConfigError (naming the file) for anything but a mapping of
    the known keys to strings."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such config file ($MORAY_CONFIG)") from None
        return {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    import yaml  # only when there is a file

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not YAML: {err}") from err
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: must be a mapping of {', '.join(KEYS)}")
    out: dict[str, str] = {}
    for key, value in doc.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (expected one of: {', '.join(KEYS)})")
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key}: must be a string")
        out[key] = str(path.parent / value) if key == "ca" else value
    return out


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The resolved settings; ``None``: given nowhere."""

    server: str | None = None
    token: str | None = None
    ca: str | None = None

    @classmethod
    def resolve(cls, server: str | None = None, token: str | None = None,
                ca: str | None = None, *, environ: Mapping[str, str] | None = None
                ) -> ClientConfig:
        """Flags (the arguments) > environment > config file; the file is read only when
        a setting is missing from both."""
        env = os.environ if environ is None else environ
        flags = {"server": server, "token": token, "ca": ca}
        values = {k: flags[k] or env.get(ENV[k]) or None for k in KEYS}
        if None in values.values():
            path, required = config_path(env)
            from_file = read_config_file(path, required=required)
            values = {k: values[k] or from_file.get(k) for k in KEYS}
        return cls(**values)

    @property
    def base_url(self) -> str:
        return (self.server or DEFAULT_SERVER).rstrip("/")

    def api_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The token, else the first admin token moray-server wrote on this host
        (``$MORAY_DATA_DIR/admin.token``) when it is readable."""
        if self.token:
            return self.token
        env = os.environ if environ is None else environ
        path = Path(env.get("MORAY_DATA_DIR") or "/var/lib/moray") / "admin.token"
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def verify(self) -> ssl.SSLContext | bool:
        """TLS verification: the CA file if one is configured, else the system's CAs."""
        return ssl.create_default_context(cafile=self.ca) if self.ca else True

    def http_client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """The one HTTP client of moray's client commands: base URL, bearer token, CA."""
        import httpx  # only commands that talk to a server pay for it

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                            verify=self.verify())


class ApiError(ControlPlaneError):
    """The REST API answered with an HTTP error; ``body`` is its JSON (or text)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        message = body.get("error") or body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")


class Api:
    """moray-server's REST API (``/api/v1``): ``call`` returns the decoded body or raises
    ApiError (the server answered with an error) or ServerUnreachable."""

    def __init__(self, config: ClientConfig, token: str | None = None) -> None:
        self.config = config
        self.http = config.http_client(token)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, "/api/v1" + path, **kw)
        except httpx.TransportError as err:
            raise ServerUnreachable(
                f"cannot reach the server at {self.http.base_url}: {err}") from err
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return body


def add_client_options(p: argparse.ArgumentParser, *, server_help: str | None = None,
                       ca: bool = True) -> None:
    """``--server``, ``--token``, ``--ca`` on a subcommand: the same settings as the ones
    ``moray`` takes before the subcommand (a value given here wins)."""
    p.add_argument("--server", default=argparse.SUPPRESS, metavar="URL",
                   help=server_help or "moray-server's REST API URL ($MORAY_SERVER)")
    p.add_argument("--token", default=argparse.SUPPRESS, help="API token ($MORAY_TOKEN)")
    if ca:
        p.add_argument("--ca", default=argparse.SUPPRESS, metavar="FILE",
                       help="CA file of an HTTPS server, its pki/ca.pem ($MORAY_CA)")


def from_args(args: argparse.Namespace) -> ClientConfig:
    """The client configuration of a parsed command line."""
    return ClientConfig.resolve(getattr(args, "server", None), getattr(args, "token", None),
                                getattr(args, "ca", None))
