"""Registry credentials by reference.

The store, the job queue and the REST API only ever hold a *reference*; the secret is
read on the host that uses it: the server when it lists a registry, a worker when it
pulls an image. So a worker on another host needs the same reference to resolve there
(the same environment variables or file), and no password travels with a job.

| reference | username, password |
|---|---|
| ``""`` | anonymous |
| ``env:NAME`` | ``$NAME_USERNAME``, ``$NAME_PASSWORD`` |
| ``file:/path`` | first line ``username:password``, or JSON ``{"username", "password"}`` |
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from moray.controlplane.scanner.errors import RegistryError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_reference(ref: str) -> str:
    """``ref`` if it is well formed (what the API accepts), else ``RegistryError``."""
    if ref == "" or (ref.startswith("env:") and _ENV_NAME.match(ref[4:])) or (
            ref.startswith("file:/") and len(ref) > 6):
        return ref
    raise RegistryError("credentials reference must be '', env:NAME or file:/absolute/path",
                        source=ref)


def resolve(ref: str, environ: Mapping[str, str] | None = None
            ) -> tuple[str | None, str | None]:
    """(username, password) for a reference; (None, None) for anonymous."""
    check_reference(ref)
    if not ref:
        return None, None
    if ref.startswith("env:"):
        env = os.environ if environ is None else environ
        name = ref[4:]
        user = env.get(f"{name}_USERNAME")
        if user is None:
            raise RegistryError(f"${name}_USERNAME is not set", source=ref)
        return user, env.get(f"{name}_PASSWORD", "")
    path = Path(ref[5:])
    try:
        raw = path.read_text()
    except OSError as err:
        raise RegistryError(f"cannot read credentials: {err.strerror}", source=ref) from err
    if raw.lstrip().startswith("{"):
        try:
            doc = json.loads(raw)
            return str(doc["username"]), str(doc.get("password", ""))
        except (ValueError, KeyError, TypeError) as err:
            raise RegistryError("credentials file: expected {username, password}",
                                source=ref) from err
    user, sep, password = raw.splitlines()[0].partition(":") if raw else ("", "", "")
    if not sep or not user:
        raise RegistryError("credentials file: expected username:password", source=ref)
    return user, password
