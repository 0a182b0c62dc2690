"""The control plane's tables (SQLAlchemy 2.0 declarative models).

The schema is created and changed only by the alembic migrations in
``controlplane/store/migrations``; ``tests/unit/controlplane/test_store.py`` checks that
these models and the migrations agree. Tables, and when their rows change:

- ``cp_policy``: one row per (tenant, name); ``current_version`` moves on every apply,
  rollback or delete (a delete is a version too, with ``removed`` set).
- ``cp_policy_version``: append-only; each row carries the signed payload the agents get,
  so every server replica sends the same bytes.
- ``cp_agent``: written at enrolment, on every heartbeat (``status``, ``last_seen``) and
  when an admin revokes it.
- ``cp_agent_policy``: the agents' acknowledgements, one row per (agent, policy name).
- ``cp_event``: agents' events, unique by (``agent_id``, ``id``): an agent's event id is
  stored once, so a replay stores nothing twice, and agents cannot collide with each other
  (an agent belongs to one tenant, so ids are unique per tenant too); ``seq`` orders them
  for paging and following. The console's filter columns are set once, when a row is
  stored (revision 0010).
- ``cp_audit``: append-only; written in the same transaction as the change it records,
  with the tenant the change belongs to (NULL: global, seen by global auditors only).
- ``cp_tenant``: the tenants that exist; created and deleted by a global admin (a tenant
  is deleted only while no agent belongs to it).
- ``cp_api_token`` / ``cp_enrollment_token``: stored as SHA-256 hashes only. An enrolment
  token row changes on each use (``uses`` + 1 in the enrolling transaction, refused once
  ``uses`` reaches ``max_uses``; NULL ``max_uses``: unlimited) and when it is revoked.
- ``cp_user``: people who sign in to the console (argon2 password hash only); changed by
  an admin (role, disabled, password) or by the user (password), and rehashed at sign-in
  when the hashing parameters changed.
- ``cp_session``: one row per signed-in browser, keyed by the SHA-256 of its cookie;
  ``last_seen`` moves (at most once a minute) while it is used; rows are deleted on
  sign-out and whenever their user's password, role or state changes or the user is
  deleted (controlplane/store/users.py).

Tables are prefixed ``cp_`` because the database is shared with the scanner's tables
(controlplane/store/scanmodels.py), which live on the same metadata and migrations.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit column.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Policy(Base):
    __tablename__ = "cp_policy"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_cp_policy_tenant_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(253))
    current_version: Mapped[int] = mapped_column(Integer)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[float] = mapped_column(Float)


class PolicyVersion(Base):
    __tablename__ = "cp_policy_version"
    __table_args__ = (
        UniqueConstraint("policy_id", "version", name="uq_cp_policy_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("cp_policy.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))  # apply | rollback | delete
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64))
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(1024), default="")
    author: Mapped[str] = mapped_column(String(253))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))


class Agent(Base):
    __tablename__ = "cp_agent"
    # revision 0013: the agents list's keyset pages, every tenant's and one tenant's
    __table_args__ = (Index("ix_cp_agent_enrolled", "enrolled_at", "id"),
                      Index("ix_cp_agent_tenant_enrolled", "tenant", "enrolled_at", "id"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    hostname: Mapped[str] = mapped_column(String(253))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    cert_serial: Mapped[str] = mapped_column(String(64), unique=True)
    cert_sha256: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    enrollment_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True,
                                                           index=True)
    # what enrolled (EnrollRequest.kind): agent | micro | nano ...; "agent" before 0012
    kind: Mapped[str] = mapped_column(String(32), default="agent", server_default="agent")


class AgentPolicy(Base):
    __tablename__ = "cp_agent_policy"

    agent_id: Mapped[str] = mapped_column(ForeignKey("cp_agent.id"), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(253), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str] = mapped_column(Text, default="")
    tiers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    acked_at: Mapped[float] = mapped_column(Float)


def _partial(name: str, *columns: str, where: str) -> Index:
    """An index of the rows that match ``where`` only, on SQLite and PostgreSQL alike."""
    return Index(name, *columns, sqlite_where=text(where), postgresql_where=text(where))


# The console's filters (revision 0010): each serves "the newest events of a tenant with
# this value, page by page" as one backward range scan of (tenant, value, seq), with
# time_ms in the index so that a time window is checked without reading rows; columns
# most events leave NULL are indexed where set only. A node is its agents' (agent_id,
# seq) scans; a global reader's page is a union of the tenants' scans
# (controlplane/store/cpevents.py). The overview's counts scan the two partial (time_ms,
# ...) indexes of alerts and enforcement decisions. Every index costs ingest time: the
# container's id and the payload's node are stored, not indexed.


class Event(Base):
    __tablename__ = "cp_event"
    __table_args__ = (
        UniqueConstraint("agent_id", "id", name="uq_cp_event_agent_id"),
        Index("ix_cp_event_tenant_seq", "tenant", "seq", "time_ms"),
        Index("ix_cp_event_agent_seq", "agent_id", "seq", "time_ms"),
        Index("ix_cp_event_tenant_type", "tenant", "type", "seq", "time_ms"),
        *(_partial(f"ix_cp_event_tenant_{c}", "tenant", c, "seq", "time_ms",
                   where=f"{c} IS NOT NULL")
          for c in ("rule", "priority", "container", "image")),
        _partial("ix_cp_event_exec", "agent_id", "exec_id", where="exec_id IS NOT NULL"),
        _partial("ix_cp_event_alert_time", "time_ms", "tenant", "rule",
                 where="type = 'alert'"),
        _partial("ix_cp_event_enforce_time", "time_ms", "tenant", "action",
                 where="type = 'enforce'"),
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    time_ms: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[float] = mapped_column(Float)
    payload: Mapped[str] = mapped_column(Text)
    # taken from the payload when stored (controlplane/store/eventcols.py); NULL where the
    # event has none, and for rows stored before revision 0010
    rule: Mapped[str | None] = mapped_column(String(253), nullable=True)
    priority: Mapped[str | None] = mapped_column(String(16), nullable=True)
    container: Mapped[str | None] = mapped_column(String(253), nullable=True)
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    node: Mapped[str | None] = mapped_column(String(253), nullable=True)
    action: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exec_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # exec, fork


class Audit(Base):
    __tablename__ = "cp_audit"
    # revision 0013: the audit log's actor and action filters (action: prefixes too,
    # text_pattern_ops on PostgreSQL so that LIKE 'policy.%' ranges over the index)
    __table_args__ = (Index("ix_cp_audit_tenant", "tenant", "id"),
                      Index("ix_cp_audit_actor", "actor", "id"),
                      Index("ix_cp_audit_action", "action", "id",
                            postgresql_ops={"action": "text_pattern_ops"}))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(253))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(512))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the tenant the entry belongs to (its auditors see it); None: a global change
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Tenant(Base):
    __tablename__ = "cp_tenant"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(253))
    comment: Mapped[str] = mapped_column(Text, server_default="", default="")


class ApiToken(Base):
    __tablename__ = "cp_api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(253))
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the one tenant the token may see and change; None: every tenant (a global token)
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: never


class User(Base):
    __tablename__ = "cp_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    password_hash: Mapped[str] = mapped_column(String(512))
    role: Mapped[str] = mapped_column(String(32))
    # the one tenant the user may see and change; None: every tenant (a global user)
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    password_changed_at: Mapped[float] = mapped_column(Float)


class UserSession(Base):
    __tablename__ = "cp_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("cp_user.id", ondelete="CASCADE"),
                                         index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)   # the absolute end, whatever the use


class EnrollmentToken(Base):
    __tablename__ = "cp_enrollment_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)    # the last use
    used_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its agent
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)   # None: unlimited
    uses: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(253), nullable=True)
    comment: Mapped[str] = mapped_column(String(253), server_default="", default="")
