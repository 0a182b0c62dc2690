"""Limits of the REST API that must hold before a request's body is read (pure ASGI, so
nothing buffers the body first):

- auth before body: a request that may carry a body (POST, PUT, PATCH, DELETE) to a route
  in the access matrix is authenticated and its role checked from its headers alone; a
  missing or wrong token (or session cookie) gets 401, a wrong role or a missing CSRF
  header with a cookie 403, and the body is never read;
- size: then a body longer than its route's limit is refused with 413: at once when
  ``Content-Length`` says so, else (chunked) when the bytes read cross the limit.

Early refusals close the connection (``Connection: close``), so a client cannot keep
streaming a body the server will not read. The principal found is left in the request
scope (``PRINCIPAL``) for the endpoint's own check, which then needs no second lookup.

Rates: ``RateLimiter`` (token buckets per key, a bounded number of keys) and
``EnrollLimits`` (per source address and per enrolment token), used by the server's
enrolment service and the gateway's enrolment proxy before any work is done for a
request (controlplane/server/agentapi.py, controlplane/gateway/enroll.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moray.errors import ControlPlaneError

MAX_BODY = 8 << 20            # bytes of a request body, unless the route says otherwise
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PRINCIPAL = "moray.principal"

# (method, route path, the request's headers, names in lower case) -> the principal, or
# Refused (a bearer token, or the console's session cookie and CSRF header)
Authorize = Callable[[str, str, Mapping[str, str]], Awaitable[Any]]


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
            found = await self.authorize(method, template, headers)
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


class RateLimiter:
    """Token buckets per key: ``rate`` requests a second on average, ``burst`` at once.
    At most ``max_keys`` keys are kept (the least recently used is dropped first, and
    comes back with a full bucket), so a client spraying keys costs bounded memory.
    ``rate`` 0 allows everything. Thread-safe."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.max_keys, self.clock = max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if ``key`` may go on now (one request counted), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            level, at = self._buckets.pop(key, (self.burst, now))
            level = min(self.burst, level + (now - at) * self.rate)
            wait = 0.0 if level >= 1.0 else (1.0 - level) / self.rate
            self._buckets[key] = (level - 1.0 if wait == 0.0 else level, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait


def parse_rate(text: str) -> tuple[float, float]:
    """``RATE[/BURST]`` (per second; burst default ten seconds' worth, at least 1) ->
    (rate, burst); ``0`` turns the limit off."""
    rate_text, _, burst_text = text.partition("/")
    try:
        rate = float(rate_text)
        burst = float(burst_text) if burst_text else max(1.0, rate * 10)
    except ValueError as err:
        raise ValueError(f"bad rate {text!r}: RATE[/BURST], e.g. 2/20") from err
    if rate < 0 or burst < 0:
        raise ValueError(f"bad rate {text!r}: negative")
    return rate, burst


def rate_arg(text: str) -> str:
    """An argparse ``type`` checking ``RATE[/BURST]``."""
    import argparse

    try:
        parse_rate(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


ENROLL_PER_SOURCE = "2/20"     # one address: a node, or a NAT / gateway in front of many
ENROLL_PER_TOKEN = "10/100"    # one token: a DaemonSet's nodes share it


def peer_address(peer: str) -> str:
    """The address of a gRPC peer string without its port: ``ipv4:10.0.0.5:41234`` ->
    ``10.0.0.5``, ``ipv6:[::1]:5`` -> ``::1``; anything else as it is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


@dataclass(frozen=True, slots=True)
class EnrollRefusal:
    scope: str         # "source" or "token"
    retry_after: float

    def message(self) -> str:
        return (f"too many enrolments from this {'address' if self.scope == 'source' else 'token'}"
                f"; retry in {self.retry_after:.1f} s")


class EnrollLimits:
    """The enrolment rate limits: per source address, then per token (keyed by the
    token's SHA-256, so no token is kept in memory). A request refused by its source does
    not count against its token, so one noisy address cannot spend a token's budget
    alone; it does when it comes from many addresses (a leaked token: revoke it)."""

    def __init__(self, per_source: str = ENROLL_PER_SOURCE, per_token: str = ENROLL_PER_TOKEN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = RateLimiter(*parse_rate(per_source), clock=clock)
        self.token = RateLimiter(*parse_rate(per_token), clock=clock)

    def check(self, peer: str, token: str) -> EnrollRefusal | None:
        wait = self.source.take(peer_address(peer))
        if wait:
            return EnrollRefusal("source", wait)
        wait = self.token.take(hashlib.sha256(token.encode()).hexdigest())
        return EnrollRefusal("token", wait) if wait else None
