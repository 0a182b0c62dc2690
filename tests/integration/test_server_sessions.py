"""Console sign-in against a real moray server (SQLite and PostgreSQL): the first
admin's password file, sign-in and cookie flags, CSRF on unsafe calls, sign-out, lockout
after failed sign-ins, a viewer user refused a policy change, expired and revoked API
tokens refused, the users and API-token CLI; the Secure flag over HTTPS."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.controlplane import (
    CHILD_PYTHONPATH,
    ROOT,
    ServerProcess,
    policy_yaml,
    wait_for,
)

pytestmark = pytest.mark.integration

PW = "a long enough password"


@pytest.fixture(scope="module")
def server(module_server: ServerProcess) -> ServerProcess:
    """One server per module and store (conftest.py): the tests share it."""
    return module_server


def browser(server: ServerProcess) -> httpx.Client:
    verify: ssl.SSLContext | bool = ssl.create_default_context(
        cafile=str(server.data_dir / "pki" / "ca.pem")) if server.http_tls else True
    return httpx.Client(base_url=server.url, timeout=30, verify=verify)


def sign_in(client: httpx.Client, name: str, password: str) -> httpx.Response:
    return client.post("/api/v1/session", json={"username": name, "password": password})


def moray(server: ServerProcess, *args: str, stdin: str = "",
          token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH, "MORAY_SERVER": server.url,
           "MORAY_TOKEN": token or server.admin_token}
    return subprocess.run([sys.executable, "-m", "moray.cli", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)


def test_first_admin_signs_in_with_cookie_and_csrf(server: ServerProcess) -> None:
    path: Path = server.data_dir / "admin.password"
    assert path.stat().st_mode & 0o777 == 0o600
    with browser(server) as c:
        r = sign_in(c, "admin", path.read_text().strip())
        assert r.status_code == 200, r.text
        session = r.json()
        assert {k: session[k] for k in ("user", "role", "tenant")} == {
            "user": "admin", "role": "admin", "tenant": None}
        cookie = r.headers["set-cookie"]
        value, *flags = [p.strip() for p in cookie.split(";")]
        assert value.startswith("moray_session=") and len(value) > 40
        assert set(flags) == {"HttpOnly", "SameSite=Strict", "Path=/"}
        again = c.get("/api/v1/session").json()
        # the same session; its idle end moves on with time
        assert {**again, "expires_at": 0} == {**session, "expires_at": 0}
        assert again["expires_at"] >= session["expires_at"]
        assert c.get("/api/v1/whoami").json()["name"] == "admin"
        # unsafe with the cookie: refused without the CSRF header, before the body
        r = c.post("/api/v1/policies", json={"content": policy_yaml("csrf")})
        assert (r.status_code, r.json()) == (403, {"detail": "missing or wrong CSRF token"})
        r = c.post("/api/v1/policies", json={"content": policy_yaml("csrf")},
                   headers={"X-CSRF-Token": session["csrf_token"]})
        assert r.status_code == 201, r.text
        assert r.json()["policies"][0]["author"] == "admin:user:admin"
        # sign-out ends it on the server: the old cookie is worthless
        old = c.cookies.get("moray_session")
        r = c.delete("/api/v1/session", headers={"X-CSRF-Token": session["csrf_token"]})
        assert r.status_code == 204 and "Max-Age=0" in r.headers["set-cookie"]
        assert c.get("/api/v1/session").status_code == 401
    with browser(server) as replay:
        replay.cookies.set("moray_session", str(old))
        assert replay.get("/api/v1/whoami").status_code == 401
    actions = [a["action"] for a in server.api()("GET", "/api/v1/audit?limit=10000")]
    assert "session.login" in actions and "session.logout" in actions


def test_viewer_user_cannot_apply_a_policy(server: ServerProcess) -> None:
    admin = server.api()
    admin("POST", "/api/v1/users", expect=201,
          json={"name": "vic", "password": PW, "role": "viewer"})
    with browser(server) as c:
        csrf = sign_in(c, "vic", PW).json()["csrf_token"]
        assert c.get("/api/v1/policies").status_code == 200
        r = c.post("/api/v1/policies", json={"content": policy_yaml("nope")},
                   headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
        # its admin disables it: the session ends at once
        admin("PATCH", "/api/v1/users/vic", expect=200, json={"disabled": True})
        assert c.get("/api/v1/policies").status_code == 401
    with browser(server) as c:
        assert sign_in(c, "vic", PW).status_code == 401


def test_lockout_after_five_failures(server: ServerProcess) -> None:
    server.api()("POST", "/api/v1/users", expect=201,
                 json={"name": "lou", "password": PW, "role": "viewer"})
    with browser(server) as c:
        unknown = sign_in(c, "nobody-here", "wrong password")
        wrong = sign_in(c, "lou", "wrong password")
        assert (unknown.status_code, unknown.json()) == (wrong.status_code, wrong.json()) \
            == (401, {"detail": "invalid username or password"})
        for _ in range(4):
            assert sign_in(c, "lou", "wrong password").status_code == 401
        r = sign_in(c, "lou", PW)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 800
        assert sign_in(c, "admin", (server.data_dir / "admin.password").read_text().strip()
                       ).status_code == 200          # the address is not locked by one name
    audit = server.api()("GET", "/api/v1/audit?limit=10000")
    assert any(a["action"] == "session.lockout" and a["target"] == "user:lou" for a in audit)
    assert not any(PW in str(a) or "wrong password" in str(a) for a in audit)


def test_expired_and_revoked_api_tokens_refused(server: ServerProcess) -> None:
    admin = server.api()
    short = admin("POST", "/api/v1/tokens", expect=201,
                  json={"name": "short", "role": "viewer", "ttl_seconds": 1})["token"]
    kept = admin("POST", "/api/v1/tokens", expect=201,
                 json={"name": "kept", "role": "viewer"})["token"]
    assert server.api(kept).status("GET", "/api/v1/whoami") == 200
    wait_for(lambda: server.api(short).status("GET", "/api/v1/whoami") == 401, timeout=10,
             what="the token to expire")
    rows = {t["name"]: t for t in admin("GET", "/api/v1/tokens", expect=200)}
    assert rows["short"]["state"] == "expired" and rows["kept"]["state"] == "active"
    assert not any("token" in t for t in rows.values())
    r = moray(server, "api-token", "revoke", str(rows["kept"]["id"]))
    assert r.returncode == 0, r.stderr
    assert server.api(kept).status("GET", "/api/v1/whoami") == 401
    out = moray(server, "api-token", "list").stdout
    assert "kept" in out and "revoked" in out and kept not in out


def test_user_and_api_token_cli(server: ServerProcess) -> None:
    # tokens are made in tenants of the registry (i-tenancy): t1 exists first
    server.api()("POST", "/api/v1/tenants", expect=201, json={"name": "t1"})
    r = moray(server, "user", "create", "carla", "--role", "operator", "--tenant", "t1",
              "--password-stdin", stdin=PW + "\n")
    assert r.returncode == 0, r.stderr
    r = moray(server, "user", "create", "carl", "--role", "viewer", "--password-stdin",
              stdin="carl\n")
    assert r.returncode != 0 and "12" in r.stderr
    assert "carla" in moray(server, "user", "list").stdout
    with browser(server) as c:
        assert sign_in(c, "carla", PW).json()["tenant"] == "t1"
        r = moray(server, "user", "passwd", "carla", "--password-stdin",
                  stdin="another long password\n")
        assert r.returncode == 0, r.stderr
        assert c.get("/api/v1/session").status_code == 401        # ended by the change
        assert sign_in(c, "carla", "another long password").status_code == 200
    assert moray(server, "user", "delete", "carla").returncode == 0
    token = moray(server, "api-token", "create", "ci", "operator", "--tenant", "t1",
                  "--expires", "30d").stdout.strip()
    assert server.api(token)("GET", "/api/v1/whoami") == {
        "name": "ci", "role": "operator", "tenant": "t1"}
    old = moray(server, "tokens", "create", "legacy", "viewer").stdout.strip()
    assert server.api(old).status("GET", "/api/v1/whoami") == 200


def test_secure_cookie_over_https(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, http_tls=True).start()
    try:
        with browser(srv) as c:
            r = sign_in(c, "admin", (tmp_path / "admin.password").read_text().strip())
            assert r.status_code == 200
            assert "Secure" in [p.strip() for p in r.headers["set-cookie"].split(";")]
    finally:
        srv.stop()
