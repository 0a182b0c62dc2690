"""Tenant names: the one rule every component checks them by.

A tenant is an isolation domain (agents, policies, events, tokens, users, scans belong to
one). Its name appears in URLs, audit targets (``tenant/name``), metric labels and file
names, so it is restricted to 1-63 characters of ``[a-z0-9-]``, starting and ending with a
letter or digit (a DNS label, as Kubernetes namespaces), plus the legacy names of up to
128 characters of ``[A-Za-z0-9_.-]`` that earlier versions accepted.
"""

from __future__ import annotations

import re

from moray.errors import ControlPlaneError

DEFAULT_TENANT = "default"
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?")


class TenantNameError(ControlPlaneError, ValueError):
    """A tenant name that breaks the rule above."""

    status = 422


def check_tenant(name: str) -> str:
    """*name* if it is a valid tenant name, else TenantNameError saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TenantNameError(
            f"invalid tenant name {name!r}: 1-128 characters of letters, digits, '_', '.' "
            "and '-', starting and ending with a letter or digit")
    return name
