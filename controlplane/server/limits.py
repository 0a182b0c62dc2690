"""Limits of the REST API that must hold before a request's body is read (pure ASGI, so
nothing buffers the body first):

- auth before body: a request that may carry a body (POST, PUT, PATCH, DELETE) to a route
  in the access matrix is authenticated and its role checked from its headers alone; a
  missing or wrong token gets 401, a wrong role 403, and the body is never read;
- size: then a body longer than its route's limit is refused with 413: at once when
  ``Content-Length`` says so, else (chunked) when the bytes read cross the limit.

Early refusals close the connection (``Connection: close``), so a client cannot keep
streaming a body the server will not read. The principal found is left in the request
scope (``PRINCIPAL``) for the endpoint's own check, which then needs no second lookup.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moray.errors import ControlPlaneError

MAX_BODY = 8 << 20            # bytes of a request body, unless the route says otherwise
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PRINCIPAL = "moray.principal"

# (method, route path, Authorization header) -> the principal, or Refused
Authorize = Callable[[str, str, str | None], Awaitable[Any]]


class Refused(ControlPlaneError):
    """Why a request is refused before its body is read (returned, not raised)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyTooLarge(ControlPlaneError, HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes",
                         headers={"Connection": "close"})


class RequestLimits:
    def __init__(self, app: ASGIApp, *, routes: Callable[[], Sequence[BaseRoute]],
                 authorize: Authorize, access: Mapping[tuple[str, str], Any],
                 body_limits: Mapping[tuple[str, str], int] | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.app, self.routes, self.authorize = app, routes, authorize
        self.access, self.max_body = access, max_body
        self.body_limits = dict(body_limits or {})

    def _template(self, scope: Scope) -> str | None:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", None)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        template = self._template(scope)
        limit = self.body_limits.get((method, template or ""), self.max_body)
        if method in BODY_METHODS and template is not None \
                and (method, template) in self.access:
            found = await self.authorize(method, template, headers.get("authorization"))
            if isinstance(found, Refused):
                extra = {"WWW-Authenticate": "Bearer"} if found.status == 401 else {}
                await _answer(send, found.status, found.message, extra)
                return
            scope[PRINCIPAL] = found
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await _answer(send, 400, "bad Content-Length")
            return
        if length is not None and int(length) > limit:
            await _answer(send, 413, f"request body larger than {limit} bytes")
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as err:
            if started:
                raise
            await _answer(send, 413, str(err.detail))


async def _answer(send: Send, status: int, message: str,
                  headers: Mapping[str, str] | None = None) -> None:
    """A JSON error as FastAPI writes them (``{"detail": ...}``), closing the connection:
    the body the client may still be sending is not read."""
    body = json.dumps({"detail": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
