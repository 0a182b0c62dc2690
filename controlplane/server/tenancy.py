"""Tenants as isolation domains: the one rule every REST endpoint scopes its data by.

A principal (an API token or a user, ``rest.Principal``) has a tenant, or none: a global
principal. Every endpoint asks these helpers, so the rule lives here alone:

- ``scope(who, tenant)``: the tenant a list is limited to. A scoped principal: its own
  (``?tenant=`` naming another: 403); a global one: ``?tenant=`` if given, else None
  (every tenant).
- ``target(who, tenant)``: the one tenant an object named by (tenant, name) is looked up
  or written in: a scoped principal's own (another named: 403), a global one's
  ``tenant`` or ``default``.
- ``owns(who, tenant)``: may ``who`` see an object of ``tenant``; an endpoint answers 404
  for an object it may not see (as if it did not exist), ``hidden(what)`` builds that.
- ``require_global(who, what)``: 403 for a scoped principal (the scan workers' endpoints,
  the tenant registry, the Tenant Manager, the shared vulnerability data's import).
"""

from __future__ import annotations

from typing import Protocol

from fastapi import HTTPException

from moray.api.tenants import DEFAULT_TENANT
from moray.errors import ControlPlaneError

CREATE_HINT = "create it first: moray tenant create {name} (POST /api/v1/tenants)"


class HasTenant(Protocol):
    @property
    def tenant(self) -> str | None: ...


class TenantAccessError(ControlPlaneError, HTTPException):
    """Refused by the tenant rule: 403 (a tenant named that the principal may not use)
    or 404 (an object of another tenant, as if it did not exist). An HTTPException, so
    FastAPI answers it wherever a router raises it."""

    def __init__(self, status: int, message: str) -> None:
        HTTPException.__init__(self, status, message)


def owns(who: HasTenant, tenant: str | None) -> bool:
    return who.tenant is None or who.tenant == tenant


def scope(who: HasTenant, tenant: str | None = None) -> str | None:
    if who.tenant is None:
        return tenant
    if tenant is not None and tenant != who.tenant:
        raise TenantAccessError(403, f"this principal may not use tenant {tenant!r}")
    return who.tenant


def target(who: HasTenant, tenant: str | None = None) -> str:
    found = scope(who, tenant)
    return DEFAULT_TENANT if found is None else found


def check_owner(who: HasTenant, tenant: str | None, what: str) -> None:
    """404 (``what`` not found) unless ``who`` may see an object of ``tenant``."""
    if not owns(who, tenant):
        raise hidden(what)


def hidden(what: str) -> TenantAccessError:
    return TenantAccessError(404, f"no {what}")


def require_global(who: HasTenant, what: str) -> None:
    if who.tenant is not None:
        raise TenantAccessError(403, f"{what} needs a principal of every tenant "
                                f"(this one is limited to tenant {who.tenant!r})")
