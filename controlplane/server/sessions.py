"""The console's sign-in: session endpoints, the users API and API-token list/revoke
(mounted by controlplane/server/rest.py, whose ``ACCESS`` matrix covers the users and
tokens endpoints like every other).

    POST   /api/v1/session            {"username", "password"} -> the session + cookie
    GET    /api/v1/session            the session of the cookie, or 401
    DELETE /api/v1/session            sign out (revoked server-side), 204
    POST   /api/v1/session/password   {"current", "new"}: the user's own password, 204

A session is an opaque random cookie (``moray_session``; HttpOnly, SameSite=Strict,
Path=/, Secure over HTTPS); the store keeps only its SHA-256. With the cookie, every
unsafe method needs ``X-CSRF-Token`` (the ``csrf_token`` of the session), checked in
rest.py's ``decide``. Sign-in is limited per user name and per source address
(``LoginLimits``): after ``max_failures`` failures for one name (``source_failures``
from one address: a proxy or NAT carries many people) within ``lockout`` seconds, that
name or address is locked for ``lockout`` seconds (429 + Retry-After), whether the
name exists or not. The counters live in the server process (several servers on one
PostgreSQL count apart). A password check costs ~0.1-0.3 s of CPU (argon2id), and the
endpoints share one thread pool: at most ``CONCURRENT_LOGINS`` checks run at once, a
sign-in beyond that is answered 503 + Retry-After at once, so a flood of sign-ins (from
many addresses) cannot take every thread from the rest of the API.

A tenant's admin (``Principal.tenant`` set) sees and changes only the users and tokens
of its tenant, and creates only those (a missing tenant is its own); another tenant's
user or token answers 404, as if it did not exist.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations.

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import cookie_parser

from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.users import MAX_PASSWORD, SessionInfo, UserStore

log = logging.getLogger(__name__)

COOKIE = "moray_session"
CSRF_HEADER = "x-csrf-token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BAD_LOGIN = "invalid username or password"
BAD_CSRF = "missing or wrong CSRF token"
MAX_FAILURES = 5
SOURCE_FAILURES = 20
CONCURRENT_LOGINS = 4
LOCKOUT_SECONDS = 15 * 60.0
INT32_MAX = 2**31 - 1


def session_cookie(header: str | None) -> str | None:
    """The value of ``moray_session`` in a Cookie header, if any."""
    if not header:
        return None
    return cookie_parser(header).get(COOKIE) or None


def set_cookie(response: Response, value: str, *, secure: bool) -> None:
    flags = "; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")
    response.headers.append("set-cookie", f"{COOKIE}={value}{flags}")


def clear_cookie(response: Response, *, secure: bool) -> None:
    flags = "; Max-Age=0; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")
    response.headers.append("set-cookie", f"{COOKIE}={flags}")


class LoginLimits:
    """Failed sign-ins per key (``source:ADDR``, ``user:NAME``) within ``lockout``
    seconds; at ``max_failures`` (``source_failures`` for an address) the key is locked
    for ``lockout`` seconds. At most ``max_keys`` keys are kept (least recently failed
    dropped first). Thread-safe; a limit of 0 turns it off."""

    def __init__(self, max_failures: int = MAX_FAILURES, lockout: float = LOCKOUT_SECONDS,
                 *, source_failures: int = SOURCE_FAILURES, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.lockout = max_failures, lockout
        self.source_failures = source_failures
        self.max_keys, self.clock = max_keys, clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(source: str, user: str) -> tuple[str, str]:
        return f"source:{source}", f"user:{user}"

    def retry_after(self, *keys: str) -> float:
        """0 if none of ``keys`` is locked, else the seconds until all are free."""
        now = self.clock()
        with self._lock:
            wait = 0.0
            for key in keys:
                until = self._locked.get(key)
                if until is not None and until <= now:
                    del self._locked[key]
                elif until is not None:
                    wait = max(wait, until - now)
            return wait

    def failed(self, *keys: str) -> list[str]:
        """Count a failure against each key; the keys this failure locked."""
        now = self.clock()
        locked = []
        with self._lock:
            for key in keys:
                limit = self.source_failures if key.startswith("source:") \
                    else self.max_failures
                if limit <= 0:
                    continue
                times = [t for t in self._failures.pop(key, []) if t > now - self.lockout]
                times.append(now)
                if len(times) >= limit:
                    self._locked[key] = now + self.lockout
                    locked.append(key)
                    times = []
                self._failures[key] = times
                while len(self._failures) > self.max_keys:
                    self._failures.popitem(last=False)
                if len(self._locked) > self.max_keys:
                    self._locked = {k: u for k, u in self._locked.items() if u > now}
        return locked

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


@dataclass(frozen=True)
class SessionSettings:
    secure: bool = False           # the HTTP port is TLS: cookies carry Secure


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=253)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class PasswordIn(BaseModel):
    current: str = Field(min_length=1, max_length=MAX_PASSWORD)
    new: str = Field(min_length=1, max_length=MAX_PASSWORD)


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=253)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)
    role: str
    tenant: str | None = Field(None, description="the one tenant the user may see and "
                               "change; null: the creator's scope (every tenant for a "
                               "global admin)")


class UserPatch(BaseModel):
    role: str | None = None
    disabled: bool | None = None
    password: str | None = Field(None, min_length=1, max_length=MAX_PASSWORD)


def scoped_tenant(who: Any, tenant: str | None) -> str | None:
    """The tenant an object made by ``who`` gets: its own when it is scoped (another one:
    403), ``tenant`` as given when it is global."""
    if who.tenant is None:
        return tenant
    if tenant is not None and tenant != who.tenant:
        raise HTTPException(403, f"{who.actor} may act in tenant {who.tenant!r} only")
    return str(who.tenant)


def visible(who: Any, tenant: str | None) -> bool:
    return who.tenant is None or who.tenant == tenant


def account_router(  # noqa: PLR0915 - the route table: one short function per endpoint
        store: ControlPlaneStore, users: UserStore, limits: LoginLimits,
                   settings: SessionSettings, require: Callable[[str, str], Any],
                   principal: Callable[[SessionInfo], Any]) -> APIRouter:
    router = APIRouter()
    P = "/api/v1"
    gate = threading.BoundedSemaphore(CONCURRENT_LOGINS)

    def check_password(name: str, password: str) -> Any:
        """``users.check_login`` through the gate; 503 when it is full."""
        if not gate.acquire(blocking=False):
            raise HTTPException(503, "too many sign-ins at once; try again",
                                headers={"Retry-After": "1"})
        try:
            return users.check_login(name, password)
        finally:
            gate.release()

    def live(request: Request) -> tuple[str, SessionInfo] | None:
        cookie = session_cookie(request.headers.get("cookie"))
        info = None if cookie is None else users.session(cookie)
        return None if cookie is None or info is None else (cookie, info)

    def too_many(wait: float) -> HTTPException:
        return HTTPException(429, "too many failed sign-ins; try again later",
                             headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def failure(source: str, name: str, action: str) -> None:
        keys = LoginLimits.keys(source, name)
        store.record_audit(f"anonymous:{source}", action, name, {"source": source})
        for key in limits.failed(*keys):
            log.warning("sign-in locked after failures", extra={
                "key": key, "source": source, "seconds": limits.lockout})
            store.record_audit("moray-server", "session.lockout", key,
                               {"source": source, "user": name, "seconds": limits.lockout})

    @router.post(P + "/session")
    def login(body: LoginIn, request: Request) -> JSONResponse:
        source = request.client.host if request.client else "unknown"
        keys = LoginLimits.keys(source, body.username)
        wait = limits.retry_after(*keys)
        if wait:
            raise too_many(wait)
        user = check_password(body.username, body.password)
        if user is None:
            failure(source, body.username, "session.login_failed")
            return JSONResponse({"detail": BAD_LOGIN}, status_code=401)
        limits.succeeded(keys[1])
        cookie, info = users.open_session(user, source=source)
        response = JSONResponse(info.as_dict())
        set_cookie(response, cookie, secure=settings.secure)
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.get(P + "/session")
    def current(request: Request) -> JSONResponse:
        found = live(request)
        if found is None:
            return JSONResponse({"detail": "not signed in"}, status_code=401)
        response = JSONResponse(found[1].as_dict())
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.delete(P + "/session", status_code=204)
    def logout(request: Request) -> Response:
        found = live(request)
        if found is not None and not found[1].csrf_ok(request.headers.get(CSRF_HEADER)):
            return JSONResponse({"detail": BAD_CSRF}, status_code=403)
        if found is not None:
            users.close_session(found[0])
        response = Response(status_code=204)
        clear_cookie(response, secure=settings.secure)
        return response

    @router.post(P + "/session/password", status_code=204)
    def change_password(body: PasswordIn, request: Request) -> Response:
        found = live(request)
        if found is None:
            return JSONResponse({"detail": "not signed in"}, status_code=401)
        info = found[1]
        if not info.csrf_ok(request.headers.get(CSRF_HEADER)):
            return JSONResponse({"detail": BAD_CSRF}, status_code=403)
        source = request.client.host if request.client else "unknown"
        keys = LoginLimits.keys(source, info.user)
        wait = limits.retry_after(*keys)
        if wait:
            raise too_many(wait)
        if check_password(info.user, body.current) is None:
            failure(source, info.user, "user.password_failed")
            return JSONResponse({"detail": "the current password is wrong"},
                                status_code=403)
        users.update_user(info.user, author=principal(info).actor, password=body.new,
                          keep_session=info.id)
        return Response(status_code=204)

    # -- users (admin) -------------------------------------------------------------------

    def target(who: Any, name: str, *, own: str = "") -> None:
        """404 for a user ``who`` may not see; 409 when a signed-in admin would lock
        itself out (``own``: what it tries)."""
        user = users.user(name)
        if user is None or not visible(who, user.tenant):
            raise HTTPException(404, f"no user {name!r}")
        if own and who.user and who.name == name:
            raise HTTPException(409, f"you may not {own} yourself (another admin may)")

    @router.get(P + "/users")
    def list_users(who: Annotated[Any, Depends(require("GET", P + "/users"))]
                   ) -> list[dict[str, Any]]:
        return [u.as_dict() for u in users.users(who.tenant)]

    @router.post(P + "/users", status_code=201)
    def create_user(body: UserIn, who: Annotated[Any, Depends(require("POST", P + "/users"))]
                    ) -> dict[str, Any]:
        tenant = scoped_tenant(who, body.tenant)
        return users.create_user(body.name, body.password, body.role, tenant,
                                 author=who.actor).as_dict()

    @router.patch(P + "/users/{name}")
    def update_user(name: str, body: UserPatch,
                    who: Annotated[Any, Depends(require("PATCH", P + "/users/{name}"))]
                    ) -> dict[str, Any]:
        own = "disable" if body.disabled else ("change the role of"
                                                if body.role not in (None, who.role) else "")
        target(who, name, own=own)
        return users.update_user(name, author=who.actor, role=body.role,
                                 disabled=body.disabled, password=body.password).as_dict()

    @router.delete(P + "/users/{name}", status_code=204)
    def delete_user(name: str,
                    who: Annotated[Any, Depends(require("DELETE", P + "/users/{name}"))]
                    ) -> Response:
        target(who, name, own="delete")
        users.delete_user(name, author=who.actor)
        return Response(status_code=204)

    # -- API tokens (admin; creation is rest.py's POST /tokens) ---------------------------

    @router.get(P + "/tokens")
    def list_tokens(who: Annotated[Any, Depends(require("GET", P + "/tokens"))]
                    ) -> list[dict[str, Any]]:
        return users.api_tokens(who.tenant)

    @router.post(P + "/tokens/{token_id}/revoke")
    def revoke_token(token_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
                     who: Annotated[Any, Depends(require("POST",
                                                         P + "/tokens/{token_id}/revoke"))]
                     ) -> dict[str, Any]:
        found = users.api_token(token_id)
        if found is None or not visible(who, found["tenant"]):
            raise HTTPException(404, f"no API token {token_id}")
        return users.revoke_api_token(token_id, author=who.actor)

    return router

