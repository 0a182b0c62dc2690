"""Console users and sessions: password hashing and rules, login limits, session expiry
(a clock passed in), the end of sessions on every change of their user, CSRF and the
users / API-token endpoints' tenant scope (in process, on a real SQLite file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from moray.controlplane.server.metrics import ServerMetrics
from moray.controlplane.server.pki import Pki
from moray.controlplane.server.rest import create_app
from moray.controlplane.server.sessions import LoginLimits, session_cookie
from moray.controlplane.store.cpstore import ControlPlaneStore, StoreError
from moray.controlplane.store.users import (
    PasswordRejected,
    Passwords,
    UserStore,
    check_password,
)

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PW = "correct horse battery"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def users(engine: Engine, clock: Clock) -> UserStore:
    return UserStore(ControlPlaneStore(engine, clock=clock), passwords=Passwords(FAST),
                     idle=1800, lifetime=43200)


def test_hash_verify_and_dummy() -> None:
    pw = Passwords(FAST)
    hashed = pw.hash(PW)
    assert hashed.startswith("$argon2id$") and PW not in hashed
    assert pw.verify(hashed, PW)
    assert not pw.verify(hashed, PW + "x")
    assert not pw.verify(None, PW)          # unknown user: the dummy hash, never a match
    assert not pw.verify("not a hash", PW)


def test_password_rules() -> None:
    check_password("alice", "a" * 12)
    for bad in ("short", "a" * 11, "x" * 1025):
        with pytest.raises(PasswordRejected):
            check_password("alice", bad)
    with pytest.raises(PasswordRejected, match="user name"):
        check_password("alice-the-admin", "Alice-The-Admin")


def test_rehash_when_parameters_change(users: UserStore) -> None:
    users.create_user("alice", PW, "viewer", None, author="t")
    old = _hash(users, "alice")
    users.passwords = Passwords(PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert users.check_login("alice", PW) is not None
    new = _hash(users, "alice")
    assert new != old and "m=2048" in new
    assert users.check_login("alice", PW) is not None
    assert _hash(users, "alice") == new          # once


def _hash(users: UserStore, name: str) -> str:
    from sqlalchemy import select

    from moray.controlplane.store.models import User
    with users.store._read() as s:
        return str(s.scalar(select(User.password_hash).where(User.name == name)))


def test_login_checks(users: UserStore) -> None:
    users.create_user("alice", PW, "operator", "t1", author="t")
    assert users.check_login("alice", PW) is not None
    assert users.check_login("alice", "wrong password!") is None
    assert users.check_login("nobody", PW) is None
    users.update_user("alice", author="t", disabled=True)
    assert users.check_login("alice", PW) is None
    with pytest.raises(StoreError):
        users.create_user("alice", PW, "viewer", None, author="t")     # exists
    with pytest.raises(StoreError):
        users.create_user("bob", PW, "admission", None, author="t")    # tokens only
    with pytest.raises(StoreError):
        users.create_user("bad name", PW, "viewer", None, author="t")


def test_login_limits_lock_and_unlock() -> None:
    clock = Clock()
    limits = LoginLimits(5, 900, source_failures=5, clock=clock)
    keys = LoginLimits.keys("10.0.0.1", "alice")
    for _ in range(4):
        assert limits.failed(*keys) == []
    assert limits.retry_after(*keys) == 0
    assert limits.failed(*keys) == list(keys)
    assert limits.retry_after(*keys) == 900
    assert limits.retry_after("user:alice") == 900          # any address
    assert limits.retry_after(*LoginLimits.keys("10.0.0.2", "bob")) == 0
    clock.now += 900
    assert limits.retry_after(*keys) == 0
    # failures older than the window do not add up
    for _ in range(4):
        limits.failed(*keys)
    clock.now += 901
    assert limits.failed(*keys) == []
    # a success clears the user's count (not the address's)
    limits.succeeded("user:alice")
    assert limits.failed(*keys) == []


def test_an_address_takes_more_failures_than_a_name() -> None:
    limits = LoginLimits(5, 900, source_failures=20, clock=Clock())
    for i in range(19):
        assert limits.failed(*LoginLimits.keys("10.0.0.9", f"u{i}")) == []
    assert limits.failed(*LoginLimits.keys("10.0.0.9", "u99")) == ["source:10.0.0.9"]
    assert limits.retry_after(*LoginLimits.keys("10.0.0.9", "fresh")) == 900


def test_login_limits_bounded() -> None:
    limits = LoginLimits(5, 900, max_keys=10)
    for i in range(100):
        limits.failed(f"source:{i}")
    assert len(limits._failures) <= 10


def test_session_idle_and_absolute_expiry(users: UserStore, clock: Clock) -> None:
    alice = users.create_user("alice", PW, "viewer", None, author="t")
    cookie, info = users.open_session(alice, source="127.0.0.1")
    assert users.session(cookie) == info
    assert users.session("other") is None
    clock.now += 1799
    assert users.session(cookie) is not None             # used: idle starts again
    clock.now += 1799
    assert users.session(cookie) is not None
    clock.now += 1800
    assert users.session(cookie) is None                 # idle
    assert users.session(cookie) is None                 # and gone
    cookie, _ = users.open_session(alice, source="127.0.0.1")
    for _ in range(43200 // 1500):
        clock.now += 1500
        assert users.session(cookie) is not None
    clock.now += 1500
    assert users.session(cookie) is None                 # 12 h after sign-in, used or not


@pytest.mark.parametrize("change", [{"password": "another password"}, {"disabled": True},
                                    {"role": "admin"}, "delete"])
def test_every_change_of_a_user_ends_its_sessions(users: UserStore,
                                                  change: dict[str, Any] | str) -> None:
    alice = users.create_user("alice", PW, "viewer", None, author="t")
    bob = users.create_user("bob", PW, "viewer", None, author="t")
    cookies = [users.open_session(alice, source="a")[0] for _ in range(2)]
    other, _ = users.open_session(bob, source="b")
    if change == "delete":
        users.delete_user("alice", author="t")
    else:
        assert isinstance(change, dict)
        users.update_user("alice", author="t", **change)
    assert [users.session(c) for c in cookies] == [None, None]
    assert users.session(other) is not None
    actions = [a["action"] for a in users.store.audit_log()]
    assert "user.create" in actions and ("user.delete" in actions or
                                         "user.update" in actions or "user.password" in actions)
    assert not any(PW in str(a) or "another password" in str(a)
                   for a in users.store.audit_log())


def test_cookie_parsing() -> None:
    assert session_cookie("a=b; moray_session=xyz; c=d") == "xyz"
    assert session_cookie("moray_session=") is None
    assert session_cookie(None) is None


# -- the REST layer in process --------------------------------------------------------


@pytest.fixture
def app(engine: Engine, tmp_path: Any, clock: Clock) -> Iterator[tuple[TestClient, UserStore]]:
    store = ControlPlaneStore(engine, clock=clock)
    users = UserStore(store, passwords=Passwords(FAST))
    for tenant in ("t1", "t2"):      # the tenant registry (i-tenancy): tokens need one
        store.create_tenant(tenant, author="t")
    users.create_user("root", PW, "admin", None, author="t")
    users.create_user("t1-admin", PW, "admin", "t1", author="t")
    users.create_user("t2-view", PW, "viewer", "t2", author="t")
    pki = Pki.load_or_create(tmp_path / "pki", [])
    client = TestClient(create_app(store, None, pki, ServerMetrics(), users=users,
                                   login_limits=LoginLimits(5, 900, clock=clock)))
    yield client, users


def login(client: TestClient, name: str, password: str = PW) -> str:
    r = client.post("/api/v1/session", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


def test_csrf_with_cookie_only(app: tuple[TestClient, UserStore]) -> None:
    client, _ = app
    csrf = login(client, "root")
    body = {"name": "vera", "password": "vera's password", "role": "viewer"}
    r = client.post("/api/v1/users", json=body)
    assert (r.status_code, r.json()) == (403, {"detail": "missing or wrong CSRF token"})
    assert client.post("/api/v1/users", json=body,
                       headers={"X-CSRF-Token": csrf + "x"}).status_code == 403
    assert client.post("/api/v1/users", json=body,
                       headers={"X-CSRF-Token": csrf}).status_code == 201
    assert client.get("/api/v1/users").status_code == 200            # safe: no header
    assert client.delete("/api/v1/session").status_code == 403
    assert client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/api/v1/users").status_code == 401


def test_same_answer_for_unknown_user_and_wrong_password(
        app: tuple[TestClient, UserStore]) -> None:
    client, _ = app
    a = client.post("/api/v1/session", json={"username": "root", "password": "nope" * 3})
    b = client.post("/api/v1/session", json={"username": "ghost", "password": "nope" * 3})
    assert (a.status_code, a.json()) == (b.status_code, b.json()) == (
        401, {"detail": "invalid username or password"})


def test_lockout_then_429_with_retry_after(app: tuple[TestClient, UserStore],
                                           clock: Clock) -> None:
    client, users = app
    for _ in range(5):
        assert client.post("/api/v1/session", json={"username": "root",
                                                     "password": "x" * 12}).status_code == 401
    r = client.post("/api/v1/session", json={"username": "root", "password": PW})
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 900
    actions = [a["action"] for a in users.store.audit_log()]
    assert actions.count("session.login_failed") == 5 and "session.lockout" in actions
    clock.now += 900
    login(client, "root")


def test_tenant_admin_manages_its_tenant_only(app: tuple[TestClient, UserStore]) -> None:
    client, users = app
    csrf = login(client, "t1-admin")
    h = {"X-CSRF-Token": csrf}
    assert [u["name"] for u in client.get("/api/v1/users").json()] == ["t1-admin"]
    r = client.post("/api/v1/users", headers=h, json={
        "name": "t1-op", "password": "t1 op password", "role": "operator"})
    assert r.status_code == 201 and r.json()["tenant"] == "t1"
    assert client.post("/api/v1/users", headers=h, json={
        "name": "x", "password": "t1 op password", "role": "viewer",
        "tenant": "t2"}).status_code == 403
    assert client.patch("/api/v1/users/t2-view", headers=h,
                        json={"role": "admin"}).status_code == 404
    assert client.delete("/api/v1/users/root", headers=h).status_code == 404
    r = client.post("/api/v1/tokens", headers=h, json={"name": "ci", "role": "operator"})
    assert r.status_code == 201 and r.json()["tenant"] == "t1"
    assert client.post("/api/v1/tokens", headers=h, json={
        "name": "ci", "role": "operator", "tenant": "t2"}).status_code == 403
    global_id = users.store.create_api_token("g", "admin", author="t")
    del global_id
    tokens = client.get("/api/v1/tokens").json()
    assert [t["tenant"] for t in tokens] == ["t1"] and "token" not in tokens[0]
    other = next(t for t in users.api_tokens() if t["tenant"] is None)
    assert client.post(f"/api/v1/tokens/{other['id']}/revoke", headers=h).status_code == 404
    r = client.post(f"/api/v1/tokens/{tokens[0]['id']}/revoke", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "revoked"


def test_viewer_session_cannot_write(app: tuple[TestClient, UserStore]) -> None:
    client, _ = app
    csrf = login(client, "t2-view")
    assert client.get("/api/v1/whoami").json() == {"name": "t2-view", "role": "viewer",
                                                   "tenant": "t2"}
    r = client.post("/api/v1/policies", headers={"X-CSRF-Token": csrf},
                    json={"content": "x"})
    assert r.status_code == 403


def test_own_password_change_keeps_this_session_only(
        app: tuple[TestClient, UserStore]) -> None:
    client, users = app
    other = TestClient(client.app)
    login(other, "root")
    csrf = login(client, "root")
    h = {"X-CSRF-Token": csrf}
    assert client.post("/api/v1/session/password", headers=h, json={
        "current": "wrong password", "new": "a new password"}).status_code == 403
    assert client.post("/api/v1/session/password", json={
        "current": PW, "new": "a new password"}).status_code == 403       # no CSRF
    assert client.post("/api/v1/session/password", headers=h, json={
        "current": PW, "new": "root"}).status_code == 422
    assert client.post("/api/v1/session/password", headers=h, json={
        "current": PW, "new": "a new password"}).status_code == 204
    assert client.get("/api/v1/session").status_code == 200
    assert other.get("/api/v1/session").status_code == 401
    assert users.check_login("root", "a new password") is not None


def test_an_admin_cannot_lock_itself_out(app: tuple[TestClient, UserStore]) -> None:
    client, _ = app
    h = {"X-CSRF-Token": login(client, "root")}
    assert client.delete("/api/v1/users/root", headers=h).status_code == 409
    assert client.patch("/api/v1/users/root", headers=h,
                        json={"disabled": True}).status_code == 409
    assert client.patch("/api/v1/users/root", headers=h,
                        json={"role": "viewer"}).status_code == 409
    assert client.patch("/api/v1/users/root", headers=h,
                        json={"password": "a new root password"}).status_code == 200
    assert client.get("/api/v1/session").status_code == 401     # a password change ends all


def test_sessions_per_user_are_bounded(users: UserStore) -> None:
    from moray.controlplane.store.users import MAX_SESSIONS

    alice = users.create_user("alice", PW, "viewer", None, author="t")
    first, _ = users.open_session(alice, source="a")
    for _ in range(MAX_SESSIONS):
        users.open_session(alice, source="a")
    assert users.count_sessions("alice") == MAX_SESSIONS
    assert users.session(first) is None


def test_sign_ins_beyond_the_gate_are_answered_503(engine: Engine, tmp_path: Any) -> None:
    """Password checks that block (a hasher stuck in a gate of our own) fill the gate;
    the next sign-in is refused at once, and the rest of the API still answers."""
    import threading

    from moray.controlplane.server.sessions import CONCURRENT_LOGINS

    release = threading.Event()
    entered = threading.Semaphore(0)

    class Stuck(Passwords):
        def verify(self, hashed: str | None, password: str) -> bool:
            entered.release()
            release.wait(30)
            return False

    store = ControlPlaneStore(engine)
    users = UserStore(store, passwords=Stuck(FAST))
    token = store.create_api_token("t", "viewer", author="t")
    client = TestClient(create_app(store, None, Pki.load_or_create(tmp_path / "pki", []),
                                   ServerMetrics(), users=users))
    results: list[int] = []

    def attempt() -> None:
        results.append(client.post("/api/v1/session", json={
            "username": "x", "password": "y" * 12}).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(CONCURRENT_LOGINS)]
    for t in threads:
        t.start()
    for _ in range(CONCURRENT_LOGINS):
        assert entered.acquire(timeout=30)
    r = client.post("/api/v1/session", json={"username": "x", "password": "y" * 12})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert client.get("/api/v1/whoami", headers={
        "Authorization": f"Bearer {token}"}).status_code == 200
    release.set()
    for t in threads:
        t.join(30)
    assert results == [401] * CONCURRENT_LOGINS


def test_first_admin_made_once_when_two_servers_race(engine: Engine, tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two servers start on one empty database: the one that loses the race to create
    ``admin`` carries on (and writes no password file)."""
    from moray.controlplane.server import main

    store = ControlPlaneStore(engine)

    class Raced(UserStore):
        calls = 0

        def has_users(self) -> bool:
            Raced.calls += 1
            if Raced.calls == 1:      # the other server creates it right after we looked
                UserStore(store, passwords=Passwords(FAST)).create_user(
                    "admin", PW, "admin", None, author="other")
                return False
            return super().has_users()

    monkeypatch.setattr(main, "UserStore", Raced)
    config = main.ServerConfig(data_dir=tmp_path)
    users = main.bootstrap_admin_user(store, config)
    assert [u.name for u in users.users()] == ["admin"]
    assert not (tmp_path / "admin.password").exists()
    assert (tmp_path / "admin.token").exists()
