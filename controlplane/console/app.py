"""Serves the console on the REST API's FastAPI app: ``/`` -> static/index.html, the
assets under ``/ui/``. Every console response (the page, assets, their 404s) carries the
security headers of ``SECURITY_HEADERS``: scripts and styles only from this origin (no
inline script or style, no ``eval``), no framing, no referrer, no MIME sniffing.

The files are read from the package (``static/``, shipped as package data); nothing is
generated per request, so the page holds no data and no secret: everything it shows comes
from /api/v1 calls made with the session cookie."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # revalidated on each load (ETag / Last-Modified): an upgraded server's console is
    # used at once, not a cached mix of old and new modules
    "Cache-Control": "no-cache",
}
_RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class SecureHeaders:
    """ASGI wrapper: adds ``SECURITY_HEADERS`` to every response of the wrapped app
    (replacing any of the same name)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in _RAW_HEADERS}
                message["headers"] = [(k, v) for k, v in message.get("headers", [])
                                      if k.lower() not in names] + _RAW_HEADERS
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except HTTPException as err:     # StaticFiles' 404 / 405: answered here, headers on
            await PlainTextResponse(str(err.detail), status_code=err.status_code,
                                    headers=SECURITY_HEADERS)(scope, receive, send)


def mount_console(app: FastAPI, static: Path = STATIC) -> None:
    """Adds ``/`` and ``/ui/`` to ``app`` (call after the API routes are defined)."""
    index = static / "index.html"

    @app.get("/", include_in_schema=False)
    def console_index() -> Response:
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers=SECURITY_HEADERS)

    app.mount("/ui", SecureHeaders(StaticFiles(directory=static, follow_symlink=False)),
              name="console")
