"""The control plane's data: policies and their versions, agents, acknowledgements, events,
the audit log and tokens. ``ControlPlaneStore`` is the only code that issues SQL for the
``cp_*`` tables (controlplane/store/models.py).

Every method is one transaction. Every change made on behalf of a person or an agent is
audited in the transaction that makes it, so the audit log and the data cannot disagree.
Policy versions are signed when they are created (``PolicySigner``), so each version's
bytes are fixed once and every agent receives the same signed payload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy import Engine, Table, bindparam, delete, func, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from moray.api.imageverdicts import VERDICTS_NAME
from moray.api.proto import moray_pb2
from moray.api.tenants import TenantNameError, check_tenant
from moray.controlplane.store import cpevents
from moray.controlplane.store.cpevents import EventFilter
from moray.controlplane.store.eventcols import EventColumns, event_columns
from moray.controlplane.store.models import (
    Agent,
    AgentPolicy,
    ApiToken,
    Audit,
    EnrollmentToken,
    Event,
    Policy,
    PolicyVersion,
    Tenant,
)
from moray.errors import ControlPlaneError

log = logging.getLogger(__name__)

# "admission": the admission webhook's token, nothing else (controlplane/server/rest.py)
ROLES = ("admin", "operator", "auditor", "viewer", "admission")


def actor_names(actor: str) -> list[str]:
    """The audit actors an actor filter matches: itself, and a principal's actor of any
    role whose name (token) or ``user:`` name (user) it is: ``alice`` matches
    ``admin:alice`` and ``viewer:user:alice``, ``user:alice`` matches
    ``admin:user:alice``. An equality list, so the (actor, id) index answers it."""
    names = {actor, *(f"{role}:{actor}" for role in ROLES),
             *(f"{role}:user:{actor}" for role in ROLES)}
    return sorted(n for n in names if len(n) <= 253)

# PostgreSQL NOTIFY channel of the changes that policy streams must see (payloads:
# "policy", "agent:<id>", "revoke:<id>"); controlplane/server/watch.py listens on it.
NOTIFY_CHANNEL = "moray_cp"


class StoreError(ControlPlaneError):
    """Base of the store's errors; ``status`` is the HTTP status the REST API answers."""

    status = 400


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class UnknownTenant(StoreError):
    """A tenant that is not in the registry (``cp_tenant``)."""

    status = 422


class AgentRevoked(StoreError):
    """The agent is revoked (or unknown): nothing from it is stored."""

    status = 403


ACK_STATUSES = frozenset(moray_pb2.ApplyStatus.keys())
MAX_ACK_ERROR = 4096        # characters of an ack's error kept
MAX_VERDICTS_VERSION = 2**31 - 1   # acks of the image-verdict list (cp_agent_policy.version)
# what an enrolling client may call itself (EnrollRequest.kind): agent, micro, nano ...
AGENT_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_ACK_TIERS = 1024        # rule -> tier entries of one ack kept


class PolicySigner(Protocol):
    key_id: str

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    tenant: str
    name: str
    version: int
    action: str
    removed: bool
    document: dict[str, Any]
    sha256: str
    source: str
    author: str
    comment: str
    created_at: float
    payload: bytes
    signature: bytes
    key_id: str

    def signed(self) -> moray_pb2.SignedPolicy:
        return moray_pb2.SignedPolicy(payload=self.payload, signature=self.signature,
                                      key_id=self.key_id)

    def summary(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "name": self.name, "version": self.version,
                "action": self.action, "removed": self.removed, "sha256": self.sha256,
                "source": self.source, "author": self.author, "comment": self.comment,
                "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    tenant: str
    hostname: str
    labels: dict[str, str]
    cert_serial: str
    cert_sha256: str
    enrolled_at: float
    last_seen: float | None
    status: dict[str, Any]
    revoked_at: float | None
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    enrollment_token_id: int | None = None
    kind: str = "agent"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "tenant": self.tenant,
                "hostname": self.hostname,
                "labels": self.labels, "cert_serial": self.cert_serial,
                "enrolled_at": self.enrolled_at, "last_seen": self.last_seen,
                "status": self.status, "revoked": self.revoked_at is not None,
                "revoked_at": self.revoked_at, "policies": self.policies,
                "enrollment_token": self.enrollment_token_id}


@dataclass(frozen=True, slots=True)
class EnrollmentTokenRecord:
    """An enrolment token as listed: ``token`` is set only in the answer to its creation
    (the store keeps its SHA-256 alone)."""
    id: int
    tenant: str
    labels: dict[str, str]
    comment: str
    created_by: str
    created_at: float
    expires_at: float
    max_uses: int | None
    uses: int
    last_used_at: float | None
    revoked_at: float | None
    agents: int
    token: str | None = None

    @property
    def uses_left(self) -> int | None:
        return None if self.max_uses is None else max(0, self.max_uses - self.uses)

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "used-up" if self.uses_left == 0 else "active"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        found = {"id": self.id, "tenant": self.tenant, "labels": self.labels,
                 "comment": self.comment, "created_by": self.created_by,
                 "created_at": self.created_at, "expires_at": self.expires_at,
                 "max_uses": self.max_uses, "uses": self.uses, "uses_left": self.uses_left,
                 "unlimited": self.max_uses is None, "last_used_at": self.last_used_at,
                 "revoked_at": self.revoked_at, "agents": self.agents,
                 "state": self.state(time.time() if now is None else now)}
        if self.token is not None:
            found["token"] = self.token
        return found


@dataclass(frozen=True, slots=True)
class EnrollmentGrant:
    tenant: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class PolicyAckRow:
    agent_id: str
    name: str
    version: int
    status: str
    error: str
    tiers: dict[str, str]
    at: float


@dataclass(frozen=True, slots=True)
class InsertResult:
    stored: int
    duplicates: int


# one event to store: (id, time_ms, type, payload), and its filter columns when the
# caller has them (eventcols.columns_of; else the store takes them from the payload)
EventRow = tuple[str, int, str, str] | tuple[str, int, str, str, EventColumns]
# one agent's events to store: (agent id, tenant, rows)
EventGroup = tuple[str, str, Sequence[EventRow]]


def _columns(row: EventRow) -> EventColumns:
    if len(row) == 5:
        return row[4]
    return event_columns(row[2], row[3])


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _policy_record(policy: Policy, row: PolicyVersion) -> PolicyRecord:
    return PolicyRecord(tenant=policy.tenant, name=policy.name, version=row.version,
                        action=row.action, removed=row.removed, document=row.document,
                        sha256=row.sha256, source=row.source, author=row.author,
                        comment=row.comment, created_at=row.created_at, payload=row.payload,
                        signature=row.signature, key_id=row.key_id)


def _agent_record(agent: Agent, acks: Sequence[AgentPolicy] = ()) -> AgentRecord:
    return AgentRecord(id=agent.id, tenant=agent.tenant, hostname=agent.hostname,
                       labels=dict(agent.labels), cert_serial=agent.cert_serial,
                       cert_sha256=agent.cert_sha256, enrolled_at=agent.enrolled_at,
                       last_seen=agent.last_seen, status=dict(agent.status or {}),
                       revoked_at=agent.revoked_at,
                       enrollment_token_id=agent.enrollment_token_id,
                       kind=agent.kind or "agent",
                       policies={a.policy_name: {"version": a.version, "status": a.status,
                                                 "error": a.error, "tiers": a.tiers,
                                                 "acked_at": a.acked_at} for a in acks})


def _token_record(row: EnrollmentToken, agents: int,
                  token: str | None = None) -> EnrollmentTokenRecord:
    return EnrollmentTokenRecord(
        id=row.id, tenant=row.tenant, labels=dict(row.labels), comment=row.comment or "",
        created_by=row.created_by, created_at=row.created_at, expires_at=row.expires_at,
        max_uses=row.max_uses, uses=row.uses or 0, last_used_at=row.used_at,
        revoked_at=row.revoked_at, agents=agents, token=token)


def _payload(row: Event) -> dict[str, Any]:
    """``{"event": the payload}``; a payload stored before ingest validated them that is
    not a JSON object is shown as ``{"event": null, "invalid_payload": the first 1024
    characters}``, so one bad row cannot fail a whole page of events."""
    try:
        event = json.loads(row.payload)
    except ValueError:
        event = None
    if isinstance(event, dict):
        return {"event": event}
    log.warning("stored event payload is not a JSON object",
                extra={"seq": row.seq, "agent_id": row.agent_id})
    return {"event": None, "invalid_payload": row.payload[:1024]}


class ControlPlaneStore:
    """All reads and writes of the control plane tables. Thread-safe: SQLite writes are
    serialized in-process (one writer at a time is SQLite's rule anyway; taking the lock
    here avoids SQLITE_BUSY on read-to-write upgrades), PostgreSQL writes are not."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time,
                 wire_document: Callable[[dict[str, Any]], dict[str, Any]] = dict) -> None:
        """``wire_document`` maps a stored document to the one signed for agents (the
        server drops its agent selector, controlplane/server/policydoc.py)."""
        self.engine = engine
        self.clock = clock
        self.wire_document = wire_document
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        if self._sqlite:
            with self._write_lock, self._sessions.begin() as session:
                yield session
        else:
            with self._sessions.begin() as session:
                yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def _notify(self, session: Session, payload: str) -> None:
        """Tell every server process on this database, at commit (PostgreSQL delivers a
        NOTIFY only if its transaction commits; SQLite has one server process: the
        server tells its watcher itself)."""
        if not self._sqlite:
            session.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))

    def _audit(self, session: Session, actor: str, action: str, target: str,
               detail: dict[str, Any] | None = None, *, tenant: str | None) -> None:
        """One audit entry; ``tenant``: the tenant the change belongs to (its auditors see
        the entry), None for a global change (global auditors only)."""
        session.add(Audit(at=self.clock(), actor=actor, action=action, target=target,
                          detail=detail or {}, tenant=tenant))

    def record_audit(self, actor: str, action: str, target: str,
                     detail: dict[str, Any] | None = None, *,
                     tenant: str | None = None) -> None:
        """Audit a change made in another store (the scanner's registrations and imports),
        right after it was committed there."""
        with self._tx() as session:
            self._audit(session, actor, action, target, detail, tenant=tenant)

    def record_audits(self, actor: str,
                      entries: Sequence[tuple[str, str, dict[str, Any]]], *,
                      tenant: str | None = None) -> None:
        """Many audit entries (action, target, detail) in one transaction (the admission
        webhook's decisions, sent in batches)."""
        with self._tx() as session:
            for action, target, detail in entries:
                self._audit(session, actor, action, target, detail, tenant=tenant)

    # -- policies ----------------------------------------------------------------------

    def _new_version(self, session: Session, policy: Policy, *, action: str,
                     document: dict[str, Any], removed: bool, source: str, author: str,
                     comment: str, signer: PolicySigner) -> PolicyRecord:
        version = policy.current_version + 1
        wire = canonical_json(self.wire_document(document))
        now = self.clock()
        payload = moray_pb2.PolicyPayload(
            name=policy.name, tenant=policy.tenant, version=version,
            document_json="" if removed else wire, removed=removed,
            issued_at_ms=int(now * 1000), sha256=sha256_hex(wire),
        ).SerializeToString()
        row = PolicyVersion(policy_id=policy.id, version=version, action=action,
                            document=document, sha256=sha256_hex(canonical_json(document)),
                            removed=removed,
                            source=source, author=author, comment=comment, created_at=now,
                            payload=payload, signature=signer.sign(payload),
                            key_id=signer.key_id)
        session.add(row)
        policy.current_version = version
        policy.removed = removed
        policy.updated_at = now
        self._audit(session, author, f"policy.{action}", f"{policy.tenant}/{policy.name}",
                    {"version": version, "sha256": row.sha256, "source": source,
                     "comment": comment}, tenant=policy.tenant)
        session.flush()
        self._notify(session, "policy")
        return _policy_record(policy, row)

    def apply_policy(self, tenant: str, name: str, document: dict[str, Any], *,
                     author: str, signer: PolicySigner, source: str = "",
                     comment: str = "") -> tuple[PolicyRecord, bool]:
        """Store ``document`` as the policy's next version. Returns (record, changed):
        applying the document that is already current stores nothing (changed False)."""
        with self._tx() as session:
            return self._apply(session, tenant, name, document, author=author, signer=signer,
                               source=source, comment=comment)

    def apply_policies(self, items: Sequence[tuple[str, str, dict[str, Any]]], *,
                       author: str, signer: PolicySigner, source: str = "",
                       comment: str = "") -> list[tuple[PolicyRecord, bool]]:
        """``apply_policy`` of each (tenant, name, document), all in one transaction: every
        one is stored or none is (the Tenant Manager's distribution to several tenants).
        Rows are locked in (tenant, name) order, so two distributions cannot deadlock."""
        order = sorted(range(len(items)), key=lambda i: items[i][:2])
        out: dict[int, tuple[PolicyRecord, bool]] = {}
        with self._tx() as session:
            for i in order:
                tenant, name, document = items[i]
                out[i] = self._apply(session, tenant, name, document, author=author,
                                     signer=signer, source=source, comment=comment)
        return [out[i] for i in range(len(items))]

    def _apply(self, session: Session, tenant: str, name: str, document: dict[str, Any], *,
               author: str, signer: PolicySigner, source: str,
               comment: str) -> tuple[PolicyRecord, bool]:
        policy = session.scalars(select(Policy).where(
            Policy.tenant == tenant, Policy.name == name).with_for_update()).first()
        if policy is None:
            policy = Policy(tenant=tenant, name=name, current_version=0, removed=False,
                            updated_at=self.clock())
            session.add(policy)
            session.flush()
        else:
            current = session.scalars(select(PolicyVersion).where(
                PolicyVersion.policy_id == policy.id,
                PolicyVersion.version == policy.current_version)).one()
            if not current.removed and current.sha256 == sha256_hex(canonical_json(document)):
                return _policy_record(policy, current), False
        record = self._new_version(session, policy, action="apply", document=document,
                                   removed=False, source=source, author=author,
                                   comment=comment, signer=signer)
        return record, True

    def rollback_policy(self, tenant: str, name: str, to_version: int, *, author: str,
                        signer: PolicySigner, comment: str = "") -> PolicyRecord:
        """Make the document of ``to_version`` current again, as a new version (history is
        never rewritten, and agents only ever move forward)."""
        with self._tx() as session:
            policy = self._policy(session, tenant, name)
            target = session.scalars(select(PolicyVersion).where(
                PolicyVersion.policy_id == policy.id,
                PolicyVersion.version == to_version)).first()
            if target is None:
                raise NotFound(f"policy {tenant}/{name} has no version {to_version}")
            if target.removed:
                raise Conflict(f"version {to_version} of {tenant}/{name} is a deletion")
            return self._new_version(session, policy, action="rollback",
                                     document=target.document, removed=False,
                                     source=f"rollback to v{to_version}", author=author,
                                     comment=comment or f"rollback to version {to_version}",
                                     signer=signer)

    def delete_policy(self, tenant: str, name: str, *, author: str, signer: PolicySigner,
                      comment: str = "") -> PolicyRecord:
        with self._tx() as session:
            policy = self._policy(session, tenant, name)
            if policy.removed:
                raise Conflict(f"policy {tenant}/{name} is already deleted")
            current = session.scalars(select(PolicyVersion).where(
                PolicyVersion.policy_id == policy.id,
                PolicyVersion.version == policy.current_version)).one()
            return self._new_version(session, policy, action="delete",
                                     document=current.document, removed=True, source="",
                                     author=author, comment=comment, signer=signer)

    @staticmethod
    def _policy(session: Session, tenant: str, name: str) -> Policy:
        policy = session.scalars(select(Policy).where(
            Policy.tenant == tenant, Policy.name == name).with_for_update()).first()
        if policy is None:
            raise NotFound(f"no policy {tenant}/{name}")
        return policy

    def current_policies(self, tenant: str | None = None, *,
                         include_removed: bool = False) -> list[PolicyRecord]:
        with self._read() as session:
            query = select(Policy, PolicyVersion).join(
                PolicyVersion, (PolicyVersion.policy_id == Policy.id)
                & (PolicyVersion.version == Policy.current_version))
            if tenant is not None:
                query = query.where(Policy.tenant == tenant)
            if not include_removed:
                query = query.where(Policy.removed.is_(False))
            rows = session.execute(query.order_by(Policy.tenant, Policy.name)).all()
            return [_policy_record(p, v) for p, v in rows]

    def policy_history(self, tenant: str, name: str) -> list[PolicyRecord]:
        with self._read() as session:
            policy = session.scalars(select(Policy).where(
                Policy.tenant == tenant, Policy.name == name)).first()
            if policy is None:
                raise NotFound(f"no policy {tenant}/{name}")
            rows = session.scalars(select(PolicyVersion).where(
                PolicyVersion.policy_id == policy.id).order_by(PolicyVersion.version)).all()
            return [_policy_record(policy, r) for r in rows]

    def policy_versions(self) -> dict[tuple[str, str], int]:
        """(tenant, name) -> current version of every policy: the watcher's cheap
        safety-net probe (one small query, no documents)."""
        with self._read() as session:
            rows = session.execute(select(Policy.tenant, Policy.name, Policy.current_version))
            return {(t, n): int(v) for t, n, v in rows}

    def policy_generation(self) -> int:
        """Grows with every stored policy version: a cheap "did anything change" probe."""
        with self._read() as session:
            return int(session.scalar(select(func.coalesce(func.max(PolicyVersion.id), 0)))
                       or 0)

    # -- agents --------------------------------------------------------------------------

    def create_enrollment_token(self, *, tenant: str, labels: dict[str, str], author: str,
                                ttl: float = 86400.0, uses: int | None = 1) -> str:
        """The token of ``issue_enrollment_token`` (one-time by default)."""
        record = self.issue_enrollment_token(tenant=tenant, labels=labels, author=author,
                                             ttl=ttl, uses=uses)
        assert record.token is not None
        return record.token

    def issue_enrollment_token(self, *, tenant: str, labels: dict[str, str], author: str,
                               ttl: float = 86400.0, uses: int | None = 1,
                               comment: str = "",
                               registered: bool = False) -> EnrollmentTokenRecord:
        """A new enrolment token for ``tenant``: at most ``uses`` enrolments (None:
        unlimited) until ``ttl`` seconds from now or until it is revoked; every agent
        enrolled with it gets ``labels`` (over the labels it asks for). Only the token's
        SHA-256 is stored: the token itself is in the record returned, and nowhere else.
        ``registered``: only for a tenant in the registry, checked under a share lock of
        its row, so a deletion of the tenant cannot commit between the check and the
        token (the REST API's tokens; the store's own callers may name any tenant)."""
        if uses is not None and uses < 1:
            raise StoreError("an enrolment token needs at least one use")
        if ttl <= 0:
            raise StoreError("an enrolment token needs a positive lifetime")
        token = "moray-enroll-" + secrets.token_urlsafe(24)
        now = self.clock()
        with self._tx() as session:
            if registered and session.get(Tenant, tenant, with_for_update=(
                    None if self._sqlite else {"read": True})) is None:
                raise UnknownTenant(f"no tenant {tenant!r}: create it first: moray tenant "
                                    f"create {tenant}")
            row = EnrollmentToken(token_sha256=sha256_hex(token), tenant=tenant,
                                  labels=labels, created_by=author, created_at=now,
                                  expires_at=now + ttl, max_uses=uses, uses=0,
                                  comment=comment[:253])
            session.add(row)
            session.flush()
            self._audit(session, author, "enrollment_token.create", f"token:{row.id}",
                        {"tenant": tenant, "labels": labels, "ttl": ttl, "uses": uses,
                         "comment": row.comment}, tenant=tenant)
            return _token_record(row, 0, token)

    def enroll_agent(self, token: str, *, hostname: str, labels: dict[str, str],
                     issue: Callable[[str], tuple[str, str]],
                     kind: str = "agent") -> AgentRecord:
        """Spend one use of ``token`` and register a new agent of ``kind`` (agent, micro,
        nano ...: ``AGENT_KIND``; "" is "agent"). ``issue(agent_id)`` signs
        its certificate and returns (serial hex, certificate SHA-256); it runs inside the
        transaction, so a use is spent only when a certificate was issued.

        The use is checked and counted by one conditional UPDATE (unrevoked, unexpired,
        ``uses < max_uses``): on PostgreSQL a second transaction updating the same row
        waits for the first and re-checks the condition on the row it committed, on
        SQLite writers are serialized; either way two enrolments racing for a token's
        last use cannot both win. A token that cannot enrol (unknown, revoked, expired,
        used up) is refused by a read first, without taking SQLite's write lock: bad
        tokens cost no writer its turn."""
        kind = kind or "agent"
        if not AGENT_KIND.fullmatch(kind):
            raise StoreError(f"agent kind {kind[:40]!r} is not [a-z][a-z0-9-]{{0,31}}")
        now = self.clock()
        with self._read() as session:
            usable = session.scalar(select(EnrollmentToken.id).where(
                EnrollmentToken.token_sha256 == sha256_hex(token),
                EnrollmentToken.revoked_at.is_(None),
                EnrollmentToken.expires_at > now,
                (EnrollmentToken.max_uses.is_(None))
                | (EnrollmentToken.uses < EnrollmentToken.max_uses)))
        if usable is None:
            raise StoreError("enrolment token unknown, expired, revoked or used up")
        with self._tx() as session:
            spent = session.execute(update(EnrollmentToken).where(
                EnrollmentToken.token_sha256 == sha256_hex(token),
                EnrollmentToken.revoked_at.is_(None),
                EnrollmentToken.expires_at > now,
                (EnrollmentToken.max_uses.is_(None))
                | (EnrollmentToken.uses < EnrollmentToken.max_uses),
            ).values(uses=EnrollmentToken.uses + 1, used_at=now).returning(
                EnrollmentToken.id, EnrollmentToken.tenant, EnrollmentToken.labels,
                EnrollmentToken.uses, EnrollmentToken.max_uses)).first()
            if spent is None:
                raise StoreError("enrolment token unknown, expired, revoked or used up")
            agent_id = uuid.uuid4().hex
            serial, cert_sha = issue(agent_id)
            merged = {**labels, **dict(spent.labels)}   # the token's labels win
            agent = Agent(id=agent_id, tenant=spent.tenant, hostname=hostname,
                          labels=merged, cert_serial=serial, cert_sha256=cert_sha,
                          enrolled_at=now, last_seen=now, status={}, revoked_at=None,
                          enrollment_token_id=spent.id, kind=kind)
            session.add(agent)
            session.execute(update(EnrollmentToken).where(EnrollmentToken.id == spent.id)
                            .values(used_by=agent_id))
            self._audit(session, f"agent:{agent_id}", "agent.enroll", agent_id,
                        {"hostname": hostname, "kind": kind, "labels": merged,
                         "tenant": spent.tenant,
                         "token": spent.id, "use": spent.uses,
                         "uses_left": None if spent.max_uses is None
                         else spent.max_uses - spent.uses}, tenant=spent.tenant)
            session.flush()
            return _agent_record(agent)

    def enrollment_tokens(self, tenant: str | None = None, *,
                          include_inactive: bool = False) -> list[EnrollmentTokenRecord]:
        """The enrolment tokens (never the tokens themselves), oldest first, each with the
        number of agents enrolled with it; ``include_inactive``: also the expired, revoked
        and used-up ones."""
        now = self.clock()
        with self._read() as session:
            query = select(EnrollmentToken).order_by(EnrollmentToken.id)
            if tenant is not None:
                query = query.where(EnrollmentToken.tenant == tenant)
            if not include_inactive:
                query = query.where(
                    EnrollmentToken.revoked_at.is_(None), EnrollmentToken.expires_at > now,
                    (EnrollmentToken.max_uses.is_(None))
                    | (EnrollmentToken.uses < EnrollmentToken.max_uses))
            rows = session.scalars(query).all()
            counts: dict[int | None, int] = {}
            if rows:
                counts = {token_id: int(n) for token_id, n in session.execute(
                    select(Agent.enrollment_token_id, func.count())
                    .where(Agent.enrollment_token_id.in_([r.id for r in rows]))
                    .group_by(Agent.enrollment_token_id))}
            return [_token_record(r, counts.get(r.id, 0)) for r in rows]

    def revoke_enrollment_token(self, token_id: int, *, author: str,
                                tenant: str | None = None) -> EnrollmentTokenRecord:
        """Refuse every later enrolment with the token; agents it enrolled stay enrolled
        (revoke them with ``revoke_agent``). ``tenant``: only a token of that tenant (one
        of another is not found)."""
        with self._tx() as session:
            row = session.get(EnrollmentToken, token_id, with_for_update=not self._sqlite)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no enrolment token {token_id}")
            if row.revoked_at is None:
                row.revoked_at, row.revoked_by = self.clock(), author
                self._audit(session, author, "enrollment_token.revoke", f"token:{token_id}",
                            {"tenant": row.tenant, "uses": row.uses}, tenant=row.tenant)
            session.flush()
            count = session.scalar(select(func.count()).select_from(Agent).where(
                Agent.enrollment_token_id == token_id)) or 0
            return _token_record(row, int(count))

    def agent(self, agent_id: str) -> AgentRecord | None:
        with self._read() as session:
            agent = session.get(Agent, agent_id)
            if agent is None:
                return None
            acks = session.scalars(select(AgentPolicy).where(
                AgentPolicy.agent_id == agent_id)).all()
            return _agent_record(agent, acks)

    def agents(self, tenant: str | None = None, *,
               enrollment_token: int | None = None) -> list[AgentRecord]:
        """Every agent (``tenant``: of that tenant), in enrolment order."""
        return self.agent_page(tenant, enrollment_token=enrollment_token, limit=None)[0]

    def agent_page(self, tenant: str | None = None, *, after: str | None = None,
                   limit: int | None = 100, enrollment_token: int | None = None
                   ) -> tuple[list[AgentRecord], str | None]:
        """Agents in enrolment order (enrolled_at, id) after the agent ``after`` (a keyset
        page of the (tenant,) enrolled_at, id index), at most ``limit`` (None: all), and
        the id to pass as ``after`` for the next page (None: this was the last). An
        ``after`` that is not an agent (of the tenant) starts nowhere: an empty page."""
        with self._read() as session:
            query = select(Agent).order_by(Agent.enrolled_at, Agent.id)
            if tenant is not None:
                query = query.where(Agent.tenant == tenant)
            if enrollment_token is not None:
                query = query.where(Agent.enrollment_token_id == enrollment_token)
            if after is not None:
                mark = session.get(Agent, after)
                if mark is None or (tenant is not None and mark.tenant != tenant):
                    return [], None
                query = query.where(tuple_(Agent.enrolled_at, Agent.id)
                                    > tuple_(mark.enrolled_at, mark.id))
            if limit is not None:
                query = query.limit(limit + 1)
            agents = list(session.scalars(query).all())
            more = limit is not None and len(agents) > limit
            agents = agents[:limit] if limit is not None else agents
            acks: dict[str, list[AgentPolicy]] = {}
            ack_query = select(AgentPolicy)
            if limit is not None:       # a page: its agents' acks only
                ack_query = ack_query.where(AgentPolicy.agent_id.in_([a.id for a in agents]))
            for ack in session.scalars(ack_query).all():
                acks.setdefault(ack.agent_id, []).append(ack)
            return ([_agent_record(a, acks.get(a.id, ())) for a in agents],
                    agents[-1].id if more else None)

    def revoke_agent(self, agent_id: str, *, author: str,
                     tenant: str | None = None) -> AgentRecord:
        """``tenant``: only an agent of that tenant (one of another is not found)."""
        with self._tx() as session:
            agent = session.get(Agent, agent_id, with_for_update=True)
            if agent is None or (tenant is not None and agent.tenant != tenant):
                raise NotFound(f"no agent {agent_id}")
            if agent.revoked_at is None:
                agent.revoked_at = self.clock()
                self._audit(session, author, "agent.revoke", agent_id,
                            {"cert_serial": agent.cert_serial}, tenant=agent.tenant)
            self._notify(session, f"revoke:{agent_id}")
            session.flush()
            return _agent_record(agent)

    def set_agent_labels(self, agent_id: str, labels: dict[str, str], *,
                         author: str, tenant: str | None = None) -> AgentRecord:
        """``tenant``: only an agent of that tenant (one of another is not found)."""
        with self._tx() as session:
            agent = session.get(Agent, agent_id, with_for_update=True)
            if agent is None or (tenant is not None and agent.tenant != tenant):
                raise NotFound(f"no agent {agent_id}")
            self._audit(session, author, "agent.labels", agent_id,
                        {"before": agent.labels, "after": labels}, tenant=agent.tenant)
            agent.labels = dict(labels)
            self._notify(session, f"agent:{agent_id}")
            session.flush()
            return _agent_record(agent)

    def heartbeats(self, beats: Sequence[tuple[str, dict[str, Any], float]]) -> None:
        """Store several agents' (agent id, status, seen at) in one transaction; revoked
        agents' are skipped."""
        table = cast(Table, Agent.__table__)
        stmt = (update(table).where(table.c.id == bindparam("b_id"),
                                    table.c.revoked_at.is_(None))
                .values(status=bindparam("b_status"), last_seen=bindparam("b_seen")))
        with self._tx() as session:
            session.connection().execute(stmt, [
                {"b_id": a, "b_status": st, "b_seen": seen} for a, st, seen in beats])

    def record_ack(self, agent_id: str, name: str, version: int, *, status: str,
                   error: str, tiers: dict[str, str]) -> None:
        self.record_acks([PolicyAckRow(agent_id, name, version, status, error, tiers,
                                       self.clock())])

    def record_acks(self, acks: Sequence[PolicyAckRow]) -> int:
        """Store agents' acknowledgements in one transaction (the server batches the acks
        that arrive together, e.g. from every agent after one policy change). An ack is
        stored only if its agent is enrolled and not revoked, it names a policy of the
        agent's tenant, its version is one that policy has had, and its status is known;
        the others are refused (logged, counted in the result). Should the batch fail
        anyway, each ack is tried alone, so one bad row never drops the others. Returns
        how many were refused."""
        try:
            return self._record_acks(acks)
        except SQLAlchemyError:
            if len(acks) <= 1:
                raise
            log.exception("storing a batch of acknowledgements failed; one by one",
                          extra={"count": len(acks)})
        refused = 0
        for ack in acks:
            try:
                refused += self._record_acks([ack])
            except SQLAlchemyError:
                refused += 1
                log.exception("acknowledgement not stored", extra={
                    "agent_id": ack.agent_id, "policy": ack.name[:253], "version": ack.version})
        return refused

    _ACK_UPSERT = (
        "INSERT INTO cp_agent_policy (agent_id, policy_name, version, status, error, tiers, "
        "acked_at) VALUES ({0}, {0}, {0}, {0}, {0}, {1}, {0}) "
        "ON CONFLICT (agent_id, policy_name) DO UPDATE SET version = excluded.version, "
        "status = excluded.status, error = excluded.error, tiers = excluded.tiers, "
        "acked_at = excluded.acked_at")

    def _record_acks(self, acks: Sequence[PolicyAckRow]) -> int:
        refused = 0
        rows: dict[tuple[str, str], tuple[str, str, int, str, str, str, float]] = {}
        with self._tx() as session:
            tenants: dict[str, str] = {
                agent_id: tenant for agent_id, tenant in session.execute(
                    select(Agent.id, Agent.tenant).where(
                        Agent.id.in_({a.agent_id for a in acks}), Agent.revoked_at.is_(None)))}
            names = {a.name for a in acks if a.agent_id in tenants and len(a.name) <= 253}
            versions: dict[tuple[str, str], int] = {
                (tenant, name): version for tenant, name, version in session.execute(
                    select(Policy.tenant, Policy.name, Policy.current_version).where(
                        Policy.name.in_(names), Policy.tenant.in_(set(tenants.values()))))
            } if names else {}
            for ack in acks:
                tenant = tenants.get(ack.agent_id)
                known = versions.get((tenant, ack.name)) if tenant is not None else None
                if ack.name == VERDICTS_NAME and tenant is not None:
                    known = MAX_VERDICTS_VERSION    # the image-verdict list: not a policy
                why = ("unknown or revoked agent" if tenant is None
                       else "unknown policy" if known is None
                       else "version never issued" if not 0 <= ack.version <= known
                       else "unknown status" if ack.status not in ACK_STATUSES
                       else None)
                if why is not None:
                    refused += 1
                    log.warning("acknowledgement refused", extra={
                        "agent_id": ack.agent_id, "policy": ack.name[:253],
                        "version": ack.version, "reason": why})
                    continue
                # the last acknowledgement of an agent's policy in the batch wins
                rows[(ack.agent_id, ack.name)] = (
                    ack.agent_id, ack.name, ack.version, ack.status, ack.error[:MAX_ACK_ERROR],
                    json.dumps(dict(list(ack.tiers.items())[:MAX_ACK_TIERS])), ack.at)
                if ack.status not in ("APPLIED", "REMOVED"):
                    self._audit(session, f"agent:{ack.agent_id}", "policy.reject", ack.name,
                                {"version": ack.version, "status": ack.status,
                                 "error": ack.error[:MAX_ACK_ERROR]}, tenant=tenant)
            if rows:
                # one statement of a fixed shape per ack (executemany): an ORM read and
                # write per ack was most of a push to thousands of agents
                sql = self._ACK_UPSERT.format(*(("?", "?") if self._sqlite else ("%s", "%s::json")))
                cursor = session.connection().connection.cursor()
                try:
                    cursor.executemany(sql, list(rows.values()))
                finally:
                    cursor.close()
        return refused

    # -- events --------------------------------------------------------------------------

    def insert_events(self, agent_id: str, tenant: str,
                      events: Sequence[EventRow]) -> InsertResult:
        """Store one agent's (id, time_ms, type, payload_json) rows (``insert_groups``);
        raises AgentRevoked when the agent is revoked or unknown."""
        result = self.insert_groups([(agent_id, tenant, events)])[0]
        if result is None:
            raise AgentRevoked(f"agent {agent_id} is revoked")
        return result

    def insert_groups(self, groups: Sequence[EventGroup]) -> list[InsertResult | None]:
        """Store several agents' events, (agent id, tenant, rows of (id, time_ms, type,
        payload_json)), in one transaction: the server commits together the batches that
        arrive together, from many agents or from a gateway. Ids an agent already stored
        are skipped, so a batch delivered twice is stored once (ids are unique per agent,
        not across agents: another agent's event with the same id is stored too). Commits
        before returning: the caller may acknowledge the batches when this returns. One
        result per group, in order; None for a group whose agent is revoked or unknown
        (nothing of it stored). The check and the insert are one transaction, and the
        agents' rows are locked against a concurrent revocation (PostgreSQL ``FOR KEY
        SHARE``; SQLite writes are serial), so nothing is stored once a revocation has
        committed."""
        if not any(rows for _, _, rows in groups):
            return [InsertResult(0, 0) for _ in groups]
        ids = sorted({agent_id for agent_id, _, rows in groups if rows})
        now = self.clock()
        with self._tx() as session:
            alive = {a for a, revoked in session.execute(
                select(Agent.id, Agent.revoked_at).where(Agent.id.in_(ids))
                .with_for_update(read=True, key_share=True)) if revoked is None}
            insert = self._insert_sqlite if self._sqlite else self._insert_postgresql
            results = insert(session, groups, alive, now)
        return results

    # One statement of a fixed shape, whatever the number of rows: built by SQLAlchemy
    # (insertmanyvalues) the statement's text changed with every batch and parsing it
    # was most of the ingest's time.
    _COLUMNS = ("id, agent_id, tenant, type, time_ms, received_at, payload, rule, priority, "
                "container, container_id, image, node, action, exec_id")
    _SQLITE_INSERT = (
        f"INSERT INTO cp_event ({_COLUMNS}) "
        f"VALUES ({', '.join('?' * 15)}) ON CONFLICT (agent_id, id) DO NOTHING")
    # %b: the arrays go in binary, each element as its length and bytes (in text, every
    # quote of every JSON payload was escaped by a regular expression)
    _PG_INSERT = (
        f"INSERT INTO cp_event ({_COLUMNS}) "
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], "
        "%b::double precision[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], "
        "%b::text[], %b::text[], %b::text[], %b::text[]) "
        "ON CONFLICT (agent_id, id) DO NOTHING RETURNING agent_id, id")

    def _insert_sqlite(self, session: Session, groups: Sequence[EventGroup],
                       alive: set[str], now: float) -> list[InsertResult | None]:
        """Each group by executemany, its row count its stored events (the server is
        SQLite's one writer: a group that repeats rows already stored, in this call or
        before, counts them as duplicates)."""
        cursor = session.connection().connection.cursor()
        results: list[InsertResult | None] = []
        try:
            for agent_id, tenant, rows in groups:
                if not rows:
                    results.append(InsertResult(0, 0))
                elif agent_id not in alive:
                    results.append(None)
                else:
                    cursor.executemany(self._SQLITE_INSERT, [
                        (r[0], agent_id, tenant, r[2], r[1], now, r[3], *_columns(r))
                        for r in rows])
                    results.append(InsertResult(cursor.rowcount, len(rows) - cursor.rowcount))
        finally:
            cursor.close()
        return results

    def _insert_postgresql(self, session: Session, groups: Sequence[EventGroup],
                           alive: set[str], now: float) -> list[InsertResult | None]:
        """One statement for every group; RETURNING names only the rows this transaction
        inserted, so the counts stay right when two deliveries of one batch race (a
        reconnect during a commit, possibly to another server process)."""
        unique: dict[tuple[str, str], tuple[str, EventRow]] = {}
        for agent_id, tenant, rows in groups:
            if agent_id in alive:
                for row in rows:
                    unique.setdefault((agent_id, row[0]), (tenant, row))
        inserted: set[tuple[str, str]] = set()
        if unique:
            keys = list(unique)
            values = [(tenant, r[1], r[2], r[3]) for tenant, r in unique.values()]
            columns = list(zip(*(_columns(r) for _, r in unique.values()), strict=True))
            connection = session.connection().connection.driver_connection
            assert connection is not None
            with connection.cursor() as cursor:
                cursor.execute(self._PG_INSERT, (
                    [k[1] for k in keys], [k[0] for k in keys], [v[0] for v in values],
                    [v[2] for v in values], [v[1] for v in values], [now] * len(keys),
                    [v[3] for v in values], *(list(c) for c in columns)))
                inserted.update((a, i) for a, i in cursor.fetchall())
        results: list[InsertResult | None] = []
        for agent_id, _, rows in groups:
            if rows and agent_id not in alive:
                results.append(None)
                continue
            mine = {(agent_id, row[0]) for row in rows} & inserted
            inserted -= mine      # a row stored is counted once, in its first group
            results.append(InsertResult(len(mine), len(rows) - len(mine)))
        return results

    def query_events(self, *, tenant: str | None = None, agent_id: str | None = None,
                     type: str | None = None, after_seq: int = 0, since_ms: int | None = None,
                     limit: int = 100, where: EventFilter | None = None
                     ) -> list[dict[str, Any]]:
        """Events after ``after_seq``, oldest first, the payload under ``event`` (the list
        shape of GET /api/v1/events without ``page``; the CLI follows with it). ``where``,
        when given, replaces the other filters."""
        if where is None:
            where = EventFilter(tenant=tenant, agent_id=agent_id, type=type,
                                since_ms=since_ms)
        with self._read() as session:
            rows = cpevents.page(session, where, after=after_seq, limit=limit,
                                 newest_first=False)
            return [{"seq": r.seq, "id": r.id, "agent_id": r.agent_id, "tenant": r.tenant,
                     "type": r.type, "time_ms": r.time_ms, "received_at": r.received_at,
                     **_payload(r)} for r in rows]

    def event_page(self, where: EventFilter, *, before: int | None = None, after: int = 0,
                   limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """One page of the events that match, newest first, and the ``before`` of the next
        page (None: this was the last). ``after`` bounds the page from below (the newest
        events since a ``seq`` the client has: a live view's poll)."""
        with self._read() as session:
            rows = cpevents.page(session, where, before=before, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return [cpevents.event_item(r) for r in rows], rows[-1].seq if more else None

    def event_detail(self, seq: int, *, tenant: str | None = None) -> dict[str, Any] | None:
        """``{"event", "payload", "ancestry"}`` of one stored event; None when there is
        none (or it is another tenant's than ``tenant``)."""
        with self._read() as session:
            row = session.get(Event, seq)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return {"event": cpevents.event_item(row), "payload": _payload(row)["event"],
                    "ancestry": cpevents.ancestry(session, row)}

    def overview(self, *, tenant: str | None = None, hours: int = 24,
                 connected: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """Agents online/offline/revoked, hourly alert counts over the last ``hours``, the
        top rules and the enforcement decisions that stopped something (cpevents)."""
        with self._read() as session:
            return cpevents.overview(session, tenant=tenant, hours=hours, now=self.clock(),
                                     connected=set(connected))

    def prune_events(self, *, max_age: float | None, max_per_tenant: int | None,
                     batch: int = 5000) -> dict[str, tuple[int, int]]:
        """Event retention, per tenant, oldest first (by ``seq``, the order of arrival):
        events received more than ``max_age`` seconds ago, then the oldest beyond
        ``max_per_tenant`` rows. Deletes in transactions of at most ``batch`` rows (so
        ingest is not held up). Returns tenant -> (dropped for age, dropped for size) for
        the tenants where anything was dropped. Safe to run from several server processes
        at once: each row is counted by the one that deleted it."""
        out: dict[str, tuple[int, int]] = {}
        with self._read() as session:
            tenants = [t for (t,) in session.execute(select(Agent.tenant).distinct())]
        for tenant in tenants:
            by_age = by_size = 0
            if max_age is not None:
                cutoff = self.clock() - max_age
                while True:
                    with self._read() as session:
                        rows = session.execute(
                            select(Event.seq, Event.received_at).where(Event.tenant == tenant)
                            .order_by(Event.seq).limit(batch)).all()
                    old = [seq for seq, at in rows if at < cutoff]
                    by_age += self._delete_events(old)
                    if len(old) < batch:
                        break
            if max_per_tenant is not None:
                with self._read() as session:
                    total = int(session.scalar(select(func.count()).select_from(Event).where(
                        Event.tenant == tenant)) or 0)
                excess = total - max_per_tenant
                while excess > 0:
                    with self._read() as session:
                        seqs = list(session.scalars(
                            select(Event.seq).where(Event.tenant == tenant)
                            .order_by(Event.seq).limit(min(batch, excess))))
                    if not seqs:
                        break
                    by_size += self._delete_events(seqs)
                    excess -= len(seqs)
            if by_age or by_size:
                out[tenant] = (by_age, by_size)
        return out

    def _delete_events(self, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        with self._tx() as session:
            result = session.execute(delete(Event).where(Event.seq.in_(seqs)))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def count_events(self) -> int:
        with self._read() as session:
            return int(session.scalar(select(func.count()).select_from(Event)) or 0)

    # -- audit and tokens ----------------------------------------------------------------

    def audit_log(self, *, after_id: int = 0, limit: int = 100, before_id: int | None = None,
                  actor: str | None = None, action: str | None = None,
                  tenant: str | None = None) -> list[dict[str, Any]]:
        """Entries oldest first after ``after_id``; with ``before_id``, newest first below
        it (the console's pages). ``actor`` matches exactly or as the name after the role
        (``alice``: ``admin:alice`` and ``admin:user:alice``; see ``actor_names``);
        ``action`` exactly or as a prefix ending in '.' (``policy.`` for every policy
        change); ``tenant``: only that tenant's. Each filter is an index range
        (revision 0013)."""
        q = select(Audit).where(Audit.id > after_id)
        if before_id is not None:
            q = q.where(Audit.id < before_id)
        if tenant is not None:
            q = q.where(Audit.tenant == tenant)
        if actor:
            q = q.where(Audit.actor.in_(actor_names(actor)))
        if action and action.endswith("."):
            if self.engine.dialect.name == "sqlite":     # BINARY collation: a byte range
                q = q.where(Audit.action >= action, Audit.action < action[:-1] + "/")
            else:       # text_pattern_ops index: LIKE 'prefix%' is a range of it
                q = q.where(Audit.action.startswith(action, autoescape=True))
        elif action:
            q = q.where(Audit.action == action)
        q = q.order_by(Audit.id.desc() if before_id is not None else Audit.id)
        with self._read() as session:
            rows = session.scalars(q.limit(limit)).all()
            return [{"id": r.id, "at": r.at, "actor": r.actor, "action": r.action,
                     "target": r.target, "tenant": r.tenant, "detail": r.detail}
                    for r in rows]

    # -- tenants -------------------------------------------------------------------------

    def tenant_exists(self, name: str) -> bool:
        with self._read() as session:
            return session.get(Tenant, name) is not None

    def tenants(self, name: str | None = None) -> list[dict[str, Any]]:
        """The tenants (``name``: that one only), each with its number of agents (not
        revoked) and of live policies."""
        with self._read() as session:
            query = select(Tenant).order_by(Tenant.name)
            if name is not None:
                query = query.where(Tenant.name == name)
            rows = session.scalars(query).all()
            agents = {t: n for t, n in session.execute(
                select(Agent.tenant, func.count()).where(Agent.revoked_at.is_(None))
                .group_by(Agent.tenant))}
            policies = {t: n for t, n in session.execute(
                select(Policy.tenant, func.count()).where(Policy.removed.is_(False))
                .group_by(Policy.tenant))}
            return [{"name": r.name, "created_at": r.created_at, "created_by": r.created_by,
                     "comment": r.comment, "agents": int(agents.get(r.name, 0)),
                     "policies": int(policies.get(r.name, 0))} for r in rows]

    def create_tenant(self, name: str, *, author: str, comment: str = "") -> dict[str, Any]:
        try:
            check_tenant(name)
        except TenantNameError as err:
            raise StoreError(str(err)) from err
        with self._tx() as session:
            if session.get(Tenant, name) is not None:
                raise Conflict(f"tenant {name} exists already")
            session.add(Tenant(name=name, created_at=self.clock(), created_by=author,
                               comment=comment))
            self._audit(session, author, "tenant.create", name, {"comment": comment},
                        tenant=name)
        return self.tenants(name)[0]

    def delete_tenant(self, name: str, *, author: str) -> None:
        """Remove a tenant from the registry: refused while an agent (not revoked) or an
        enrolment token that can still enrol belongs to it. Its policies, events and audit
        entries stay (a tenant created again with the name sees them); no new policy or
        enrolment token can name it."""
        with self._tx() as session:
            row = session.get(Tenant, name, with_for_update=not self._sqlite)
            if row is None:
                raise NotFound(f"no tenant {name}")
            live = int(session.scalar(select(func.count()).select_from(Agent).where(
                Agent.tenant == name, Agent.revoked_at.is_(None))) or 0)
            if live:
                raise Conflict(f"tenant {name} has {live} agents: revoke them first "
                               "(moray agents revoke ID)")
            # a token still usable would enrol agents into a tenant that is gone
            now = self.clock()
            usable = int(session.scalar(select(func.count()).select_from(EnrollmentToken)
                                        .where(EnrollmentToken.tenant == name,
                                               EnrollmentToken.revoked_at.is_(None),
                                               EnrollmentToken.expires_at > now,
                                               (EnrollmentToken.max_uses.is_(None))
                                               | (EnrollmentToken.uses
                                                  < EnrollmentToken.max_uses))) or 0)
            if usable:
                raise Conflict(f"tenant {name} has {usable} usable enrolment tokens: revoke "
                               f"them first (moray token list --tenant {name}; "
                               "moray token revoke ID)")
            session.delete(row)
            self._audit(session, author, "tenant.delete", name, {}, tenant=name)

    def create_api_token(self, name: str, role: str, *, author: str,
                         tenant: str | None = None, ttl: float | None = None) -> str:
        """A new API token of *role*, scoped to *tenant* (None: every tenant), valid for
        *ttl* seconds (None: until revoked). Only its SHA-256 is stored."""
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if tenant is not None:
            try:
                check_tenant(tenant)
            except TenantNameError as err:
                raise StoreError(str(err)) from err
        token = f"moray-{role}-" + secrets.token_urlsafe(24)
        now = self.clock()
        with self._tx() as session:
            session.add(ApiToken(name=name, role=role, token_sha256=sha256_hex(token),
                                 created_at=now, tenant=tenant,
                                 expires_at=None if ttl is None else now + ttl))
            self._audit(session, author, "api_token.create", name,
                        {"role": role, "tenant": tenant, "ttl": ttl}, tenant=tenant)
        return token

    def has_api_tokens(self) -> bool:
        with self._read() as session:
            return session.scalar(select(func.count()).select_from(ApiToken)) != 0

    def authenticate(self, token: str) -> tuple[str, str, str | None] | None:
        """(name, role, tenant) of a valid API token (not revoked, not expired), else
        None. tenant None: the token sees every tenant."""
        with self._read() as session:
            row = session.scalars(select(ApiToken).where(
                ApiToken.token_sha256 == sha256_hex(token),
                ApiToken.revoked_at.is_(None))).first()
            if row is None or (row.expires_at is not None and row.expires_at <= self.clock()):
                return None
            return (row.name, row.role, row.tenant)
