"""People who sign in to the console: users (``cp_user``), their sessions
(``cp_session``), and the listing and revocation of API tokens (``cp_api_token``).

Data owned here, and when it changes:

- a user row: created by an admin (or by the server for the first administrator), its
  role, ``disabled`` flag or password changed by an admin, its password by the user, its
  hash rewritten at sign-in when the argon2 parameters changed, deleted by an admin;
- a session row: created at sign-in (only the SHA-256 of the cookie is kept), its
  ``last_seen`` moved at most once a ``TOUCH_SECONDS`` (a tenth of the idle timeout
  if shorter) while it is used, deleted at
  sign-out, when it is found idle or past its absolute end, and with every session of its
  user when that user's password, role or state changes or the user is deleted (in the
  same transaction as the change: no request can pass with the old rights after it).

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second
recommended profile). Every change is audited in its transaction (never a password).
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update

from moray.api.tenants import TenantNameError, check_tenant
from moray.controlplane.store.cpstore import (
    Conflict,
    ControlPlaneStore,
    NotFound,
    StoreError,
    sha256_hex,
)
from moray.controlplane.store.models import ApiToken, User, UserSession

USER_ROLES = ("admin", "operator", "auditor", "viewer")   # "admission" is for tokens only
MIN_PASSWORD = 12
MAX_PASSWORD = 1024          # characters; argon2 takes any length, a request should not
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,252}")
IDLE_SECONDS = 30 * 60.0
LIFETIME_SECONDS = 12 * 3600.0
TOUCH_SECONDS = 60.0         # how stale last_seen may get (the idle timeout's precision)
MAX_SESSIONS = 50            # per user; a sign-in beyond ends its oldest


class PasswordRejected(StoreError):
    status = 422


def check_password(name: str, password: str) -> None:
    """The password rules: at least ``MIN_PASSWORD`` characters, at most
    ``MAX_PASSWORD``, not the user name."""
    if len(password) < MIN_PASSWORD:
        raise PasswordRejected(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordRejected(f"a password has at most {MAX_PASSWORD} characters")
    if password.strip().casefold() == name.casefold():
        raise PasswordRejected("the password may not be the user name")


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise StoreError(f"bad user name {name[:64]!r}: letters, digits and . _ @ -, "
                         "starting with a letter or digit, at most 253")


class Passwords:
    """argon2id hashing; ``verify`` of an unknown user runs against a dummy hash of the
    same parameters, so it takes as long as a wrong password."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))   # now, not at a login

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, hashed: str | None, password: str) -> bool:
        if hashed is None:
            hashed = self._dummy
            password = "\0" + password      # never the dummy's password
        try:
            return self.hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(hashed)
        except InvalidHashError:
            return True


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    role: str
    tenant: str | None
    disabled: bool
    created_at: float
    password_changed_at: float

    @classmethod
    def of(cls, row: User) -> UserRecord:
        return cls(row.id, row.name, row.role, row.tenant, row.disabled, row.created_at,
                   row.password_changed_at)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "tenant": self.tenant,
                "disabled": self.disabled, "created_at": self.created_at,
                "password_changed_at": self.password_changed_at}


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: int
    user: str
    role: str
    tenant: str | None
    csrf_token: str
    expires_at: float     # when it ends if not used again (idle), or its absolute end

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "role": self.role, "tenant": self.tenant,
                "csrf_token": self.csrf_token, "expires_at": int(self.expires_at)}

    def csrf_ok(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(),
                                                          self.csrf_token.encode())


def token_state(row: ApiToken, now: float) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


class UserStore:
    """Users, sessions and the API-token list on the control plane's database (the same
    transactions and audit log as ``ControlPlaneStore``)."""

    def __init__(self, store: ControlPlaneStore, *, passwords: Passwords | None = None,
                 idle: float = IDLE_SECONDS, lifetime: float = LIFETIME_SECONDS) -> None:
        self.store, self.passwords = store, passwords or Passwords()
        self.idle, self.lifetime = idle, lifetime

    @property
    def clock(self) -> Any:
        return self.store.clock

    # -- users ---------------------------------------------------------------------------

    def has_users(self) -> bool:
        with self.store._read() as session:
            return session.scalar(select(func.count()).select_from(User)) != 0

    def create_user(self, name: str, password: str, role: str, tenant: str | None, *,
                    author: str) -> UserRecord:
        check_name(name)
        if role not in USER_ROLES:
            raise StoreError(f"unknown role {role!r}; one of {', '.join(USER_ROLES)}")
        if tenant is not None:
            try:
                check_tenant(tenant)
            except TenantNameError as err:
                raise StoreError(str(err)) from err
        check_password(name, password)
        hashed = self.passwords.hash(password)
        now = self.clock()
        with self.store._tx() as session:
            if session.scalar(select(User.id).where(User.name == name)) is not None:
                raise Conflict(f"user {name!r} exists")
            row = User(name=name, password_hash=hashed, role=role, tenant=tenant,
                       disabled=False, created_at=now, password_changed_at=now)
            session.add(row)
            session.flush()
            self.store._audit(session, author, "user.create", name,
                              {"role": role, "tenant": tenant}, tenant=tenant)
            return UserRecord.of(row)

    def users(self, tenant: str | None = None) -> list[UserRecord]:
        """Every user, or those of ``tenant`` only."""
        with self.store._read() as session:
            query = select(User).order_by(User.name)
            if tenant is not None:
                query = query.where(User.tenant == tenant)
            return [UserRecord.of(r) for r in session.scalars(query)]

    def user(self, name: str) -> UserRecord | None:
        with self.store._read() as session:
            row = session.scalars(select(User).where(User.name == name)).first()
            return None if row is None else UserRecord.of(row)

    def update_user(self, name: str, *, author: str, role: str | None = None,
                    disabled: bool | None = None, password: str | None = None,
                    keep_session: int | None = None) -> UserRecord:
        """Change a user's role, state or password; every session of the user ends
        (but ``keep_session``: the one a user changes its own password from)."""
        if role is not None and role not in USER_ROLES:
            raise StoreError(f"unknown role {role!r}; one of {', '.join(USER_ROLES)}")
        if password is not None:
            check_password(name, password)
        hashed = None if password is None else self.passwords.hash(password)
        with self.store._tx() as session:
            row = session.scalars(select(User).where(User.name == name)).first()
            if row is None:
                raise NotFound(f"no user {name!r}")
            detail: dict[str, Any] = {}
            if role is not None and role != row.role:
                detail["role"] = [row.role, role]
                row.role = role
            if disabled is not None and disabled != row.disabled:
                detail["disabled"] = disabled
                row.disabled = disabled
            if hashed is not None:
                detail["password"] = "changed"
                row.password_hash, row.password_changed_at = hashed, self.clock()
            if detail:
                ended = delete(UserSession).where(UserSession.user_id == row.id)
                if keep_session is not None:
                    ended = ended.where(UserSession.id != keep_session)
                session.execute(ended)
                action = "user.password" if list(detail) == ["password"] else "user.update"
                self.store._audit(session, author, action, name, detail, tenant=row.tenant)
            return UserRecord.of(row)

    def delete_user(self, name: str, *, author: str) -> None:
        with self.store._tx() as session:
            row = session.scalars(select(User).where(User.name == name)).first()
            if row is None:
                raise NotFound(f"no user {name!r}")
            session.execute(delete(UserSession).where(UserSession.user_id == row.id))
            session.delete(row)
            self.store._audit(session, author, "user.delete", name,
                              {"role": row.role, "tenant": row.tenant}, tenant=row.tenant)

    def check_login(self, name: str, password: str) -> UserRecord | None:
        """The user if ``password`` is its password and it is enabled, else None, in the
        same time whether the user exists or not. Rehashes on a parameter change."""
        with self.store._read() as session:
            row = session.scalars(select(User).where(User.name == name)).first()
            hashed = None if row is None else row.password_hash
            found = None if row is None else UserRecord.of(row)
        if not self.passwords.verify(hashed, password) or found is None or found.disabled:
            return None
        if hashed is not None and self.passwords.needs_rehash(hashed):
            rehashed = self.passwords.hash(password)
            with self.store._tx() as session:
                session.execute(update(User).where(User.id == found.id,
                                                   User.password_hash == hashed)
                                .values(password_hash=rehashed))
        return found

    # -- sessions ------------------------------------------------------------------------

    def open_session(self, user: UserRecord, *, source: str) -> tuple[str, SessionInfo]:
        """A new session of ``user``: (the cookie value, shown once, and the session)."""
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock()
        end = now + self.lifetime
        with self.store._tx() as session:
            # sessions of anyone that ended unnoticed (nobody came back with them)
            session.execute(delete(UserSession).where(
                (UserSession.expires_at <= now) | (UserSession.last_seen <= now - self.idle)))
            row = UserSession(token_sha256=sha256_hex(cookie), user_id=user.id,
                              csrf_token=csrf, created_at=now, last_seen=now, expires_at=end)
            session.add(row)
            session.flush()
            older = session.scalars(select(UserSession.id).where(
                UserSession.user_id == user.id).order_by(UserSession.id.desc())
                .offset(MAX_SESSIONS)).all()
            if older:
                session.execute(delete(UserSession).where(UserSession.id.in_(older)))
            self.store._audit(session, f"{user.role}:user:{user.name}", "session.login",
                              user.name, {"source": source}, tenant=user.tenant)
            return cookie, SessionInfo(row.id, user.name, user.role, user.tenant, csrf,
                                       min(end, now + self.idle))

    def session(self, cookie: str) -> SessionInfo | None:
        """The live session of a cookie (its user enabled, neither idle nor past its end),
        else None. Moves ``last_seen`` when it is more than ``TOUCH_SECONDS`` old."""
        now = self.clock()
        digest = sha256_hex(cookie)
        with self.store._read() as session:
            found = session.execute(
                select(UserSession, User).join(User, User.id == UserSession.user_id)
                .where(UserSession.token_sha256 == digest)).first()
            if found is None:
                return None
            row, user = found
            sid, last_seen, end = row.id, row.last_seen, row.expires_at
            info = SessionInfo(row.id, user.name, user.role, user.tenant, row.csrf_token,
                               min(end, now + self.idle))
            disabled = user.disabled
        if disabled or now >= end or now >= last_seen + self.idle:
            with self.store._tx() as session:
                session.execute(delete(UserSession).where(UserSession.id == sid))
            return None
        if now - last_seen >= min(TOUCH_SECONDS, self.idle / 10):
            with self.store._tx() as session:
                session.execute(update(UserSession).where(UserSession.id == sid)
                                .values(last_seen=now))
        return info

    def close_session(self, cookie: str) -> SessionInfo | None:
        """Sign out: the session's row is deleted (audited); None if there was none."""
        info = self.session(cookie)
        if info is None:
            return None
        with self.store._tx() as session:
            session.execute(delete(UserSession).where(UserSession.id == info.id))
            self.store._audit(session, f"{info.role}:user:{info.user}", "session.logout",
                              info.user, tenant=info.tenant)
        return info

    def count_sessions(self, name: str) -> int:
        with self.store._read() as session:
            return int(session.scalar(
                select(func.count()).select_from(UserSession).join(
                    User, User.id == UserSession.user_id).where(User.name == name)) or 0)

    # -- API tokens ----------------------------------------------------------------------

    def api_tokens(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every API token (never its secret), or those of ``tenant`` only."""
        now = self.clock()
        with self.store._read() as session:
            query = select(ApiToken).order_by(ApiToken.id)
            if tenant is not None:
                query = query.where(ApiToken.tenant == tenant)
            return [token_dict(r, now) for r in session.scalars(query)]

    def api_token(self, token_id: int) -> dict[str, Any] | None:
        with self.store._read() as session:
            row = session.get(ApiToken, token_id)
            return None if row is None else token_dict(row, self.clock())

    def revoke_api_token(self, token_id: int, *, author: str) -> dict[str, Any]:
        now = self.clock()
        with self.store._tx() as session:
            row = session.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"no API token {token_id}")
            if row.revoked_at is None:
                row.revoked_at = now
                self.store._audit(session, author, "api_token.revoke", row.name,
                                  {"id": row.id, "role": row.role, "tenant": row.tenant},
                                  tenant=row.tenant)
            return token_dict(row, now)


def token_dict(row: ApiToken, now: float) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "role": row.role, "tenant": row.tenant,
            "created_at": row.created_at, "expires_at": row.expires_at,
            "revoked_at": row.revoked_at, "state": token_state(row, now)}
