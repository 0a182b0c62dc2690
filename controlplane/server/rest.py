"""The REST API for people and pipelines (FastAPI; the OpenAPI document is /openapi.json).

Every endpoint under /api/v1 takes a bearer token, or the console's session cookie (with
``X-CSRF-Token`` on unsafe methods: controlplane/server/sessions.py, which also serves
sign-in, users and the API-token list), and checks its role against the endpoint's
allowed set (``ACCESS`` below is the whole matrix; the tests walk it). Writes
go through the store, which audits them in the same transaction, and wake the agents'
policy streams through the hub. /metrics (Prometheus), /healthz, /ca.pem and
/openapi.json need no token. The scanner's endpoints (scan jobs for the workers,
verdicts, scheduled registries and images, vulnerability data) are
``controlplane.scanner.service.api``'s router, mounted here with the same token check; its
"read"/"write" classes map to the READ/WRITE role sets below. So do the admission
webhook's (decisions, workload inventory): ``controlplane.server.admissionapi``, and the
console's data endpoints (events and alerts, event detail, overview):
``controlplane.server.eventsapi``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at
# definition time, and they refer to closures (``require``) in ``create_app``.

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography import x509
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool

from moray.api.tenants import DEFAULT_TENANT, TenantNameError, check_tenant
from moray.controlplane.console.app import mount_console
from moray.controlplane.scanner.service.api import MAX_IMPORT_BYTES, SCAN_ACCESS, scan_router
from moray.controlplane.server.admissionapi import ADMISSION_ACCESS, admission_router
from moray.controlplane.server.eventsapi import EVENTS_ACCESS, events_router
from moray.controlplane.server.hub import AgentHub
from moray.controlplane.server.limits import PRINCIPAL, Refused, RequestLimits
from moray.controlplane.server.metrics import HTTP_METHODS, ServerMetrics
from moray.controlplane.server.pki import Pki, PkiError, cert_sha256
from moray.controlplane.server.policydoc import PolicyDocError, parse_policies
from moray.controlplane.server.sessions import (
    BAD_CSRF,
    CSRF_HEADER,
    UNSAFE,
    LoginLimits,
    SessionSettings,
    account_router,
    session_cookie,
)
from moray.controlplane.server.tenancy import (
    CREATE_HINT,
    check_owner,
    require_global,
    scope,
    target,
)
from moray.controlplane.store.cpstore import ROLES, ControlPlaneStore, StoreError
from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.store.users import SessionInfo, UserStore

log = logging.getLogger(__name__)

READ = frozenset(ROLES) - {"admission"}
WRITE = frozenset({"admin", "operator"})
# the admission webhook (moray kube-enforcer) reads verdicts, queues scans on admission
# and reports its decisions: a token of role "admission" can do that and nothing else
ADMISSION = frozenset({"admission"})
ADMIN = frozenset({"admin"})
AUDIT = frozenset({"admin", "auditor"})

# (method, path) -> roles allowed. The single source of truth for authorization.
ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/whoami"): READ | ADMISSION,
    ("GET", "/api/v1/policies"): READ,
    ("POST", "/api/v1/policies"): WRITE,
    ("GET", "/api/v1/policies/{name}"): READ,
    ("DELETE", "/api/v1/policies/{name}"): WRITE,
    ("GET", "/api/v1/policies/{name}/history"): READ,
    ("POST", "/api/v1/policies/{name}/rollback"): WRITE,
    ("GET", "/api/v1/agents"): READ,
    ("GET", "/api/v1/agents/{agent_id}"): READ,
    ("PUT", "/api/v1/agents/{agent_id}/labels"): WRITE,
    ("POST", "/api/v1/agents/{agent_id}/revoke"): ADMIN,
    ("POST", "/api/v1/enrollment-tokens"): ADMIN,
    ("GET", "/api/v1/enrollment-tokens"): ADMIN,
    ("POST", "/api/v1/enrollment-tokens/{token_id}/revoke"): ADMIN,
    ("GET", "/api/v1/audit"): AUDIT,
    ("POST", "/api/v1/tokens"): ADMIN,
    ("GET", "/api/v1/tokens"): ADMIN,
    ("POST", "/api/v1/tokens/{token_id}/revoke"): ADMIN,
    ("GET", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("PATCH", "/api/v1/users/{name}"): ADMIN,
    ("DELETE", "/api/v1/users/{name}"): ADMIN,
    ("GET", "/api/v1/tenants"): READ,
    ("POST", "/api/v1/tenants"): ADMIN,
    ("DELETE", "/api/v1/tenants/{name}"): ADMIN,
    ("POST", "/api/v1/policies/distribute"): WRITE,
    **{key: {"read": READ, "write": WRITE}[cls] for key, cls in SCAN_ACCESS.items()},
    **{key: {"read": READ, "write": WRITE}[cls] for key, cls in ADMISSION_ACCESS.items()},
    **{key: {"read": READ, "write": WRITE}[cls] for key, cls in EVENTS_ACCESS.items()},
}
for _key in (("GET", "/api/v1/images/{digest}/verdicts"), ("POST", "/api/v1/scan-jobs"),
             ("POST", "/api/v1/admission/reviews")):
    ACCESS[_key] = ACCESS[_key] | ADMISSION
# the webhook's serving certificate, for the names given by `moray server --webhook-name`
ACCESS[("POST", "/api/v1/admission/serving-cert")] = ADMIN | ADMISSION
WEBHOOK_CERT_DAYS = 90


INT64_MAX = 2**63 - 1      # BIGINT columns (event seq and time, audit ids)
INT32_MAX = 2**31 - 1      # INTEGER columns (policy versions)
MAX_TOKEN_TTL = 366 * 86400  # an enrolment token's longest life (a DaemonSet's token: months)

# Bodies larger than limits.MAX_BODY (8 MiB): advisory files sent for import (their JSON
# strings may be up to twice the files' size once escaped).
BODY_LIMITS = {("POST", "/api/v1/vulndb/import"): 2 * MAX_IMPORT_BYTES + (1 << 20),
               # read before any authentication: small
               ("POST", "/api/v1/session"): 16 << 10,
               ("POST", "/api/v1/session/password"): 16 << 10}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's or a user's name, role, and the one tenant it may see and
    change (None: every tenant, a global principal)."""

    name: str
    role: str
    tenant: str | None = None
    user: bool = False        # a signed-in user (session cookie), not an API token

    @property
    def actor(self) -> str:
        return f"{self.role}:user:{self.name}" if self.user else f"{self.role}:{self.name}"

    @classmethod
    def of_session(cls, info: SessionInfo) -> "Principal":
        return cls(info.user, info.role, info.tenant, user=True)


class PolicyIn(BaseModel):
    content: str = Field(description="policy documents, YAML or JSON ('---' between several)")
    source: str = Field("<api>", max_length=1024,
                        description="file name, used in error messages and history")
    comment: str = ""


class RollbackIn(BaseModel):
    version: int = Field(ge=1, le=INT32_MAX)
    comment: str = ""


class LabelsIn(BaseModel):
    labels: dict[str, str]


class EnrollmentTokenIn(BaseModel):
    tenant: str | None = Field(None, min_length=1, max_length=128,
                               description="default: the caller's tenant, else 'default'")
    labels: dict[str, str] = {}
    ttl_seconds: float = Field(86400.0, gt=0, le=MAX_TOKEN_TTL)
    # enrolments it allows; null: unlimited until it expires or is revoked
    uses: int | None = Field(1, ge=1, le=INT32_MAX)
    comment: str = Field("", max_length=253)


class TenantIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    comment: str = Field("", max_length=1024)


class DistributeIn(BaseModel):
    tenants: list[str] = Field(min_length=1, max_length=10000,
                               description='tenant names, or ["*"]: every tenant')
    content: str = Field(description="policy documents, YAML or JSON ('---' between several)")
    source: str = Field("<distribute>", max_length=1024)
    comment: str = ""


class ServingCertIn(BaseModel):
    csr: str = Field(max_length=16384, description="PEM certificate signing request: only "
                     "its public key is used; the names are the server's --webhook-name")


class ApiTokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=253)
    role: str
    tenant: str | None = Field(None, description="the one tenant the token may use; "
                               "null: every tenant")
    ttl_seconds: float | None = Field(None, gt=0, le=10 * 366 * 86400,
                                      description="null: valid until revoked")


def create_app(  # noqa: PLR0915 - the route table: one short function per endpoint
        store: ControlPlaneStore, hub: AgentHub | None, pki: Pki, metrics: ServerMetrics, *,
        grpc_port: int = 7443, enroll_port: int = 7444, scans: ScanStore | None = None,
        on_scan_change: Callable[[], None] | None = None,
        webhook_names: tuple[str, ...] = (), users: UserStore | None = None,
        login_limits: LoginLimits | None = None,
        sessions: SessionSettings | None = None) -> FastAPI:
    users = users or UserStore(store)
    login_limits = login_limits or LoginLimits()
    app = FastAPI(title="moray control plane", version="1",
                  description="Policies, agents, events and audit log of moray.")
    bearer = HTTPBearer(auto_error=False)
    signer = pki.policy_key

    def notify() -> None:
        if hub is not None:
            hub.notify()

    def decide(method: str, path: str, headers: Mapping[str, str]) -> Principal | Refused:
        """Who calls, from its headers: a bearer token, else the session cookie (which
        needs the session's CSRF token on unsafe methods), and whether its role may."""
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        principal: Principal
        if scheme.lower() == "bearer" and token.strip():
            found = store.authenticate(token.strip())
            if found is None:
                return Refused(401, "invalid token")
            principal = Principal(*found)
        else:
            cookie = session_cookie(headers.get("cookie"))
            if cookie is None:
                return Refused(401, "missing bearer token")
            info = users.session(cookie)
            if info is None:
                return Refused(401, "session ended: sign in again")
            if method in UNSAFE and not info.csrf_ok(headers.get(CSRF_HEADER)):
                return Refused(403, BAD_CSRF)
            principal = Principal.of_session(info)
        if principal.role not in ACCESS[(method, path)]:
            return Refused(403, f"role {principal.role!r} may not {method} {path}")
        return principal

    def require(method: str, path: str) -> Callable[..., Principal]:
        def check(request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None,
                                                      Depends(bearer)]) -> Principal:
            early = request.scope.get(PRINCIPAL)    # checked before the body was read
            found = early if isinstance(early, Principal) else decide(
                method, path, request.headers)
            if isinstance(found, Refused):
                raise HTTPException(found.status, found.message, headers={
                    "WWW-Authenticate": "Bearer"} if found.status == 401 else None)
            return found

        return check

    async def authorize(method: str, path: str,
                        headers: Mapping[str, str]) -> Principal | Refused:
        return await run_in_threadpool(decide, method, path, headers)

    app.add_middleware(RequestLimits, routes=lambda: app.router.routes, authorize=authorize,
                       access=ACCESS, body_limits=BODY_LIMITS)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def out_of_range(_request: Request, err: Exception) -> JSONResponse:
        # a number or string the database cannot hold (a path id >= 2^63, ...): the
        # client's input, not a server fault
        log.info("request refused by the database", extra={"error": str(err)[:200]})
        return JSONResponse({"detail": "a value is out of range"}, status_code=422)

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, err: StoreError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(PolicyDocError)
    async def policy_error(_request: Request, err: PolicyDocError) -> JSONResponse:
        return JSONResponse(err.as_dict(), status_code=422)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[..., Any]) -> Response:
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", None) or "other"
        method = request.method if request.method in HTTP_METHODS else "other"
        metrics.http_requests.labels(method, str(response.status_code)).inc()
        metrics.http_duration.labels(method, route).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "grpc_port": grpc_port, "enroll_port": enroll_port}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        """200 once every port (gRPC, enrolment, HTTP) is bound and the server serves."""
        ready = bool(getattr(app.state, "ready", False))
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ca.pem", include_in_schema=False)
    def ca_pem() -> Response:
        return Response(pki.ca_pem, media_type="application/x-pem-file")

    P = "/api/v1"

    @app.get(P + "/whoami")
    def whoami(who: Annotated[Principal, Depends(require("GET", P + "/whoami"))]
               ) -> dict[str, str | None]:
        return {"name": who.name, "role": who.role, "tenant": who.tenant}

    @app.get(P + "/policies")
    def list_policies(who: Annotated[Principal, Depends(require("GET", P + "/policies"))],
                      tenant: str | None = None) -> list[dict[str, Any]]:
        return [p.summary() for p in store.current_policies(scope(who, tenant))]

    def existing(tenants: set[str]) -> None:
        for name in sorted(tenants):
            if not store.tenant_exists(name):
                raise HTTPException(422, f"no tenant {name!r}: " + CREATE_HINT.format(name=name))

    def placed(document: dict[str, Any], tenant: str) -> dict[str, Any]:
        """The document as stored in ``tenant``: its metadata.tenant says so."""
        meta = document.get("metadata")
        if not isinstance(meta, dict) or meta.get("tenant", DEFAULT_TENANT) == tenant:
            return document
        out = copy.deepcopy(document)
        out["metadata"]["tenant"] = tenant
        return out

    @app.post(P + "/policies", status_code=200)
    def apply_policy(body: PolicyIn,
                     who: Annotated[Principal, Depends(require("POST", P + "/policies"))],
                     response: Response) -> dict[str, Any]:
        """Validate every document first (nothing is stored if one is wrong), then store
        each as its policy's next version. 201 when any changed, 200 when none did."""
        out = []
        parsed_all = parse_policies(body.content, body.source)
        # a document without metadata.tenant goes to the caller's tenant; one naming
        # another tenant than a scoped caller's is refused (403) before anything is stored
        items = []
        for parsed in parsed_all:
            named = (parsed.document.get("metadata") or {}).get("tenant")
            tenant = target(who, named)
            items.append((tenant, parsed.name, placed(parsed.document, tenant)))
        existing({t for t, _, _ in items})
        for tenant, name, document in items:
            record, changed = store.apply_policy(tenant, name, document,
                                                 author=who.actor, signer=signer,
                                                 source=body.source, comment=body.comment)
            out.append({**record.summary(), "changed": changed})
        if any(p["changed"] for p in out):
            response.status_code = 201
            notify()
        return {"policies": out}

    @app.get(P + "/policies/{name}")
    def get_policy(name: str,
                   who: Annotated[Principal, Depends(require("GET", P + "/policies/{name}"))],
                   tenant: str | None = None) -> dict[str, Any]:
        history = store.policy_history(target(who, tenant), name)
        current = history[-1]
        return {**current.summary(), "document": current.document}

    @app.delete(P + "/policies/{name}")
    def delete_policy(name: str,
                      who: Annotated[Principal, Depends(require("DELETE",
                                                                P + "/policies/{name}"))],
                      tenant: str | None = None) -> dict[str, Any]:
        record = store.delete_policy(target(who, tenant), name, author=who.actor,
                                     signer=signer)
        notify()
        return record.summary()

    @app.get(P + "/policies/{name}/history")
    def policy_history(name: str,
                       who: Annotated[Principal, Depends(require(
                           "GET", P + "/policies/{name}/history"))],
                       tenant: str | None = None) -> list[dict[str, Any]]:
        return [{**r.summary(), "document": r.document}
                for r in store.policy_history(target(who, tenant), name)]

    @app.post(P + "/policies/{name}/rollback")
    def rollback_policy(name: str, body: RollbackIn,
                        who: Annotated[Principal, Depends(require(
                            "POST", P + "/policies/{name}/rollback"))],
                        tenant: str | None = None) -> dict[str, Any]:
        record = store.rollback_policy(target(who, tenant), name, body.version,
                                       author=who.actor,
                                       signer=signer, comment=body.comment)
        notify()
        return record.summary()

    @app.get(P + "/agents")
    def list_agents(who: Annotated[Principal, Depends(require("GET", P + "/agents"))],
                    tenant: str | None = None,
                    enrollment_token: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
                    page: Annotated[int, Query(ge=0, le=1)] = 0,
                    after: Annotated[str | None, Query(max_length=64)] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Every agent in enrolment order (a list); with ``page=1`` or ``after`` (an agent
        id), a keyset page: ``{"agents": [...at most limit...], "next": <id to pass as
        after> | null}``."""
        online = set(hub.connected()) if hub is not None else set()
        scoped = scope(who, tenant)
        if not page and after is None:
            return [{**a.as_dict(), "connected": a.id in online}
                    for a in store.agents(scoped, enrollment_token=enrollment_token)]
        rows, more = store.agent_page(scoped, after=after, limit=limit,
                                      enrollment_token=enrollment_token)
        return {"agents": [{**a.as_dict(), "connected": a.id in online} for a in rows],
                "next": more}

    @app.get(P + "/agents/{agent_id}")
    def get_agent(agent_id: str,
                  who: Annotated[Principal, Depends(require("GET", P + "/agents/{agent_id}"))]
                  ) -> dict[str, Any]:
        agent = store.agent(agent_id)
        if agent is None:
            raise HTTPException(404, f"no agent {agent_id}")
        check_owner(who, agent.tenant, f"agent {agent_id}")
        online = set(hub.connected()) if hub is not None else set()
        return {**agent.as_dict(), "connected": agent.id in online}

    @app.put(P + "/agents/{agent_id}/labels")
    def set_labels(agent_id: str, body: LabelsIn,
                   who: Annotated[Principal, Depends(require(
                       "PUT", P + "/agents/{agent_id}/labels"))]) -> dict[str, Any]:
        agent = store.set_agent_labels(agent_id, body.labels, author=who.actor,
                                       tenant=who.tenant)
        if hub is not None:
            hub.notify(agent_id)
        return agent.as_dict()

    @app.post(P + "/agents/{agent_id}/revoke")
    def revoke(agent_id: str,
               who: Annotated[Principal, Depends(require(
                   "POST", P + "/agents/{agent_id}/revoke"))]) -> dict[str, Any]:
        agent = store.revoke_agent(agent_id, author=who.actor, tenant=who.tenant)
        if hub is not None:
            hub.revoke(agent_id)
        return agent.as_dict()

    @app.post(P + "/enrollment-tokens", status_code=201)
    def enrollment_token(body: EnrollmentTokenIn,
                         who: Annotated[Principal, Depends(require(
                             "POST", P + "/enrollment-tokens"))]) -> dict[str, Any]:
        tenant = target(who, body.tenant)
        existing({tenant})
        record = store.issue_enrollment_token(
            tenant=tenant, labels=body.labels, author=who.actor, ttl=body.ttl_seconds,
            uses=body.uses, comment=body.comment, registered=True)
        return {**record.as_dict(), "ca_sha256": cert_sha256(pki.ca_pem)}

    @app.get(P + "/enrollment-tokens")
    def enrollment_tokens(who: Annotated[Principal, Depends(require(
                              "GET", P + "/enrollment-tokens"))],
                          tenant: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        now = time.time()
        return [r.as_dict(now) for r in store.enrollment_tokens(scope(who, tenant),
                                                                include_inactive=all)]

    @app.post(P + "/enrollment-tokens/{token_id}/revoke")
    def revoke_enrollment_token(
            token_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
            who: Annotated[Principal, Depends(require(
                "POST", P + "/enrollment-tokens/{token_id}/revoke"))]) -> dict[str, Any]:
        return store.revoke_enrollment_token(token_id, author=who.actor,
                                             tenant=who.tenant).as_dict()


    @app.get(P + "/audit")
    def audit(who: Annotated[Principal, Depends(require("GET", P + "/audit"))],
              after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
              before: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
              actor: Annotated[str | None, Query(max_length=300)] = None,
              action: Annotated[str | None, Query(max_length=100)] = None,
              tenant: str | None = None,
              page: Annotated[int, Query(ge=0, le=1)] = 0,
              limit: Annotated[int, Query(ge=1, le=10000)] = 100
              ) -> list[dict[str, Any]] | dict[str, Any]:
        """Oldest first after ``after`` (a list); with ``page=1`` or ``before``, newest
        first: ``{"entries": [...], "next": <id to pass as before> | null}``."""
        scoped = scope(who, tenant)
        if not page and before is None:
            return store.audit_log(after_id=after, limit=limit, actor=actor, action=action,
                                   tenant=scoped)
        rows = store.audit_log(after_id=after, limit=limit + 1, before_id=before or INT64_MAX,
                               actor=actor, action=action, tenant=scoped)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"entries": rows, "next": rows[-1]["id"] if more else None}

    @app.post(P + "/tokens", status_code=201)
    def create_token(body: ApiTokenIn,
                     who: Annotated[Principal, Depends(require("POST", P + "/tokens"))]
                     ) -> dict[str, str | None]:
        # a tenant's admin makes tokens of its tenant only (never a global one)
        tenant = scope(who, body.tenant)
        if tenant is not None:
            existing({tenant})
        return {"name": body.name, "role": body.role, "tenant": tenant,
                "token": store.create_api_token(body.name, body.role, author=who.actor,
                                                tenant=tenant, ttl=body.ttl_seconds)}

    @app.get(P + "/tenants")
    def tenants(who: Annotated[Principal, Depends(require("GET", P + "/tenants"))]
                ) -> list[dict[str, Any]]:
        return store.tenants(who.tenant)

    @app.post(P + "/tenants", status_code=201)
    def create_tenant(body: TenantIn,
                      who: Annotated[Principal, Depends(require("POST", P + "/tenants"))]
                      ) -> dict[str, Any]:
        require_global(who, "creating a tenant")
        try:
            check_tenant(body.name)
        except TenantNameError as err:
            raise HTTPException(422, str(err)) from err
        return store.create_tenant(body.name, author=who.actor, comment=body.comment)

    @app.delete(P + "/tenants/{name}")
    def delete_tenant(name: str, who: Annotated[Principal, Depends(require(
            "DELETE", P + "/tenants/{name}"))]) -> dict[str, Any]:
        require_global(who, "deleting a tenant")
        store.delete_tenant(name, author=who.actor)
        notify()
        return {"name": name, "deleted": True}

    @app.post(P + "/policies/distribute")
    def distribute(body: DistributeIn, who: Annotated[Principal, Depends(require(
            "POST", P + "/policies/distribute"))]) -> dict[str, Any]:
        """The Tenant Manager: every document of ``content`` stored in each tenant named
        (``["*"]``: every tenant) as that tenant's policy, in one transaction: all of it
        is stored or nothing is (a bad document, an unknown tenant, a database error)."""
        require_global(who, "distributing policies to tenants")
        if body.tenants == ["*"]:
            names = [t["name"] for t in store.tenants()]
        elif "*" in body.tenants:
            raise HTTPException(422, 'tenants: ["*"] alone, or tenant names')
        else:
            names = list(dict.fromkeys(body.tenants))
            for name in names:
                try:
                    check_tenant(name)
                except TenantNameError as err:
                    raise HTTPException(422, str(err)) from err
            existing(set(names))
        parsed_all = parse_policies(body.content, body.source)
        items = [(tenant, p.name, placed(p.document, tenant))
                 for tenant in names for p in parsed_all]
        results = store.apply_policies(items, author=who.actor, signer=signer,
                                       source=body.source, comment=body.comment)
        out: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"policies": []} for n in names}
        for (tenant, _, _), (record, changed) in zip(items, results, strict=True):
            out[tenant]["policies"].append({**record.summary(), "changed": changed})
        if any(changed for _, changed in results):
            notify()
        return {"tenants": out}

    @app.post(P + "/admission/serving-cert")
    def serving_cert(body: ServingCertIn, who: Annotated[Principal, Depends(
            require("POST", P + "/admission/serving-cert"))]) -> dict[str, Any]:
        """The admission webhook's TLS certificate, signed by the CA for the names this
        server was started with (``--webhook-name``), never for names the caller picks:
        a token taken from the webhook's pod cannot get a certificate for the server's
        own names (agents trust this CA)."""
        if not webhook_names:
            raise HTTPException(404, "this server issues no webhook certificates: start it "
                                "with --webhook-name NAME (the webhook Service's DNS names)")
        try:
            pem = pki.sign_serving_csr(body.csr.encode(), "moray-kube-enforcer",
                                       list(webhook_names), days=WEBHOOK_CERT_DAYS)
        except PkiError as err:
            raise HTTPException(422, str(err)) from err
        cert = x509.load_pem_x509_certificate(pem)
        not_after = cert.not_valid_after_utc.isoformat()
        store.record_audit(who.actor, "admission.serving_cert", "moray-kube-enforcer",
                           {"names": list(webhook_names), "serial": format(cert.serial_number, "x"),
                            "not_after": not_after}, tenant=who.tenant)
        return {"cert": pem.decode(), "ca": pki.ca_pem.decode(), "not_after": not_after}

    def audit_scan_change(who: Principal, action: str, target: str,
                          detail: dict[str, Any]) -> None:
        # a registration's audit entry belongs to its tenant (a global admin's too)
        tenant = detail.get("tenant") if isinstance(detail.get("tenant"), str) else who.tenant
        store.record_audit(who.actor, action, target, detail, tenant=tenant)

    app.include_router(account_router(store, users, login_limits,
                                      sessions or SessionSettings(), require,
                                      Principal.of_session))
    app.include_router(events_router(store, hub, scans, require))
    if scans is not None:
        app.include_router(scan_router(scans, require, on_scan_change, audit_scan_change))
        app.include_router(admission_router(store, scans, require))
    mount_console(app)   # the web console: / and /ui/ (controlplane/console)
    return app
