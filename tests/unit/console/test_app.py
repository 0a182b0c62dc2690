"""The console's static files as served by ``mount_console``: index at /, assets under
/ui/, the security headers on every console response (404s included), nothing outside
the static folder, and every file the pages import shipped as package data."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from moray.controlplane.console.app import CSP, SECURITY_HEADERS, STATIC, mount_console

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()

    @app.get("/api/v1/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    mount_console(app)
    return TestClient(app)


def _secure(headers: object) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, name   # type: ignore[index]


def test_index_and_assets_carry_the_security_headers(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/app.js">' in index.text
    _secure(index.headers)
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css"),
                        ("/ui/pages/overview.js", "javascript")):
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert kind in got.headers["content-type"]
        _secure(got.headers)
    missing = client.get("/ui/no-such.js")
    assert missing.status_code == 404
    _secure(missing.headers)
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP


def test_api_routes_are_untouched(client: TestClient) -> None:
    assert client.get("/api/v1/ping").json() == {"ok": True}


@pytest.mark.parametrize("path", ["/ui/../app.py", "/ui/%2e%2e/app.py", "/ui/..%2fapp.py",
                                  "/ui//etc/passwd"])
def test_nothing_outside_the_static_folder(client: TestClient, path: str) -> None:
    got = client.get(path)
    assert got.status_code == 404 or "mount_console" not in got.text


def test_no_inline_script_style_or_innerhtml() -> None:
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and " style=" not in html
    for js in STATIC.rglob("*.js"):
        source = js.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                       "eval(", "new Function"):
            assert banned not in source, f"{js.name}: {banned}"


def test_every_static_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["moray.controlplane.console"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            rel = path.relative_to(STATIC.parent).as_posix()
            assert any(fnmatch(rel, p) for p in patterns), f"{rel} not in package-data"


def test_no_asset_loads_from_another_origin() -> None:
    """Offline, no CDN: no URL of another origin in the page, scripts or styles (the SVG
    namespace is a name, not a load), no CSS import or url() to fetch."""
    allowed = {"http://www.w3.org/2000/svg"}
    for path in STATIC.rglob("*"):
        if path.suffix not in (".html", ".js", ".css"):
            continue
        source = path.read_text()
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s'\"`)]*", source))
        assert urls <= allowed, f"{path.name}: {sorted(urls - allowed)}"
        if path.suffix == ".css":
            assert "@import" not in source and "url(" not in source, path.name
