"""Tenants as isolation domains, against a real moray-server (SQLite and PostgreSQL) with
enrolled mTLS agents (tests/helpers/simagents.py):

- the matrix: every (method, path) of ``ACCESS`` called with tenant B's tokens of every
  role against tenant A's objects: none of A's data comes back, nothing of A changes;
  ``CASES`` must name every endpoint of ``ACCESS`` (a new endpoint without a case fails);
- agents: a tenant's agents get its policies only, and their events are stored under
  their tenant whatever the payload says;
- the tenant registry and the Tenant Manager (distribution to several tenants, all or
  nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moray.agent.controlplane import ControlPlaneClient
from moray.api.imageverdicts import VERDICTS_NAME
from moray.controlplane.server.rest import ACCESS
from tests.helpers.controlplane import ROOT, Api, GatewayProcess, ServerProcess, wait_for
from tests.helpers.simagents import SimAgent, SimFleet
from tests.integration.test_server_agents import Recorder

pytestmark = pytest.mark.integration

A, B = "tenant-a", "tenant-b"
DIGEST_A = "sha256:" + "a1" * 32
REGISTRY_A = "127.0.0.1:5901"
IMAGE_A = f"{REGISTRY_A}/secret-a/img:1"
ROLES = ("admin", "operator", "auditor", "viewer", "admission")


def policy(name: str, tenant: str | None = None, deny: str = "/bin/sh") -> str:
    meta = f"{{name: {name}" + (f", tenant: {tenant}}}" if tenant else "}")
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {meta}\n"
            f"spec:\n  scope: {{host: true}}\n  mode: enforce\n  exec: {{deny: [{deny}]}}\n")


@dataclass
class World:
    server: ServerProcess
    fleet: SimFleet
    admin: Api
    agent_a: SimAgent
    agent_b: SimAgent
    token_a_id: int
    registry_a: int
    image_a: int
    job_a: int
    b: dict[str, Api] = field(default_factory=dict)
    markers: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def fleet() -> Iterator[SimFleet]:
    f = SimFleet()
    yield f
    f.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          fleet: SimFleet) -> Iterator[World]:
    url = None
    if request.param == "postgresql":
        from tests.helpers.postgres import create_database
        url = create_database(request.getfixturevalue("pg_base"))
    work = tmp_path_factory.mktemp("tenancy")
    server = ServerProcess(work / "server", database_url=url,
                           extra_args=("--scan-workers", "0")).start()
    try:
        yield _build(server, fleet, work)
    finally:
        server.stop()


def _build(server: ServerProcess, fleet: SimFleet, work: Path) -> World:
    admin = server.api()
    for name in (A, B):
        admin("POST", "/api/v1/tenants", expect=201, json={"name": name})
    admin("POST", "/api/v1/policies", expect=201,
          json={"content": policy("secret-a", A), "source": "a.yaml"})
    admin("POST", "/api/v1/policies", expect=201,
          json={"content": policy("own-b", B, "/bin/dash"), "source": "b.yaml"})
    agent_a = fleet.enroll_many(server, work / "a", 1, prefix="a", tenant=A,
                                labels={"zone": "secret-a"})[0]
    agent_b = fleet.enroll_many(server, work / "b", 1, prefix="b", tenant=B)[0]
    token_a = admin("POST", "/api/v1/enrollment-tokens", expect=201,
                    json={"tenant": A, "comment": "secret-a", "uses": 5})
    # A's events say they are B's: stored under A all the same
    wait_for(lambda: agent_a.connected, what="agent A's stream")
    lying = json.dumps({"type": "exec", "tenant": B, "args": ["secret-a"]}).encode()
    assert fleet.call(agent_a.send_events([("ev-a-1", "exec", lying)])) == 1
    registry = admin("POST", "/api/v1/scan-registries", expect=201,
                     json={"registry": REGISTRY_A, "tenant": A, "insecure": True,
                           "interval_seconds": 30 * 86400})["id"]
    image = admin("POST", "/api/v1/scan-images", expect=201,
                  json={"image": IMAGE_A, "tenant": A,
                        "interval_seconds": 30 * 86400})["id"]
    # the same job as the schedule's first (which queues it too): one job, whichever is
    # first, and no worker runs it (--scan-workers 0)
    job = admin("POST", "/api/v1/scan-jobs", json={"image": IMAGE_A, "tenant": A})["id"]
    # a worker reports the verdict of A's job: the digest becomes A's image
    admin("POST", f"/api/v1/images/{DIGEST_A}/verdicts", expect=200,
          json={"image": IMAGE_A, "policy": "secret-a-gate", "passed": False,
                "reasons": ["secret-a"], "vulnerabilities": [
                    {"id": "CVE-2099-0001", "package": "secret-a-lib", "version": "1"}],
                "report": {"secrets": [{"rule": "secret-a-rule", "path": "secret-a/key",
                                        "line": 1}],
                           "sbom": '{"bomFormat": "CycloneDX", "secret-a": 1}'}})
    tokens_a = admin("POST", "/api/v1/tokens", expect=201,
                     json={"name": "a-admission", "role": "admission", "tenant": A})
    Api(server.url, tokens_a["token"])("POST", "/api/v1/admission/reviews", expect=200, json={
        "cluster": "c1", "reviews": [{
            "namespace": "ns-a", "kind": "Deployment", "name": "secret-a-app",
            "operation": "CREATE", "allowed": True, "decision": "allow",
            "images": [{"container_type": "container", "container": "app",
                        "image": IMAGE_A, "digest": DIGEST_A, "verdict": "compliant"}]}]})
    world = World(server, fleet, admin, agent_a, agent_b, token_a["id"], registry, image, job,
                  markers=(A, "secret-a", agent_a.agent_id, REGISTRY_A, DIGEST_A,
                           "CVE-2099-0001"))
    for role in ROLES:
        made = admin("POST", "/api/v1/tokens", expect=201,
                     json={"name": f"b-{role}", "role": role, "tenant": B})
        assert made["tenant"] == B
        world.b[role] = Api(server.url, made["token"])
    return world


def snapshot(w: World) -> dict[str, Any]:
    """Tenant A's state as a global admin sees it (fields that only the server's own
    clocks move left out)."""
    get = w.admin

    def strip(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in keys} for r in rows]

    agent = get("GET", f"/api/v1/agents/{w.agent_a.agent_id}")
    return {
        "policies": get("GET", "/api/v1/policies", params={"tenant": A}),
        "history": get("GET", "/api/v1/policies/secret-a/history", params={"tenant": A}),
        "agent": {k: agent[k] for k in ("tenant", "labels", "revoked", "revoked_at")},
        "tokens": strip(get("GET", "/api/v1/enrollment-tokens",
                            params={"tenant": A, "all": True}), "state"),
        "events": get("GET", "/api/v1/events", params={"tenant": A}),
        "registries": strip(get("GET", "/api/v1/scan-registries", params={"tenant": A}),
                            "next_run", "last_run", "last_images", "last_error"),
        "images": strip(get("GET", "/api/v1/scan-images", params={"tenant": A}),
                        "next_run", "last_run"),
        "jobs": get("GET", "/api/v1/scan-jobs", params={"tenant": A}),
        "verdicts": strip(get("GET", f"/api/v1/images/{DIGEST_A}/verdicts"), "stale"),
        "vulns": get("GET", f"/api/v1/images/{DIGEST_A}/vulnerabilities"),
        "findings": get("GET", f"/api/v1/images/{DIGEST_A}/findings"),
        "image_list": strip(get("GET", "/api/v1/images", params={"tenant": A}), "verdicts"),
        "workloads": get("GET", "/api/v1/workloads", params={"tenant": A}),
        "tenants": [t for t in get("GET", "/api/v1/tenants") if t["name"] == A],
        "audit": get("GET", "/api/v1/audit", params={"tenant": A, "limit": 10000}),
    }


Case = Callable[[World], list[tuple[str, dict[str, Any]]]]
P = "/api/v1"


def _one(path: str, **kw: Any) -> Case:
    return lambda w: [(path.format(w=w), kw)]


def _lists(path: str, **kw: Any) -> Case:
    """A list: plain (the caller's tenant) and naming A (403)."""
    return lambda w: [(path.format(w=w), kw),
                      (path.format(w=w), {**kw, "params": {**kw.get("params", {}),
                                                           "tenant": A}})]


def _paged(path: str, after: str) -> Case:
    """A list that pages too: plain, naming A (403), a page, and a page after one of A's
    objects (empty: no oracle of where A's object would stand)."""
    return lambda w: [*_lists(path)(w), (path, {"params": {"page": 1, "limit": 1}}),
                      (path, {"params": {"after": after.format(w=w), "limit": 5}})]


def _named(path: str, **kw: Any) -> Case:
    """An object of A by name: in the caller's tenant (404) and naming A (403)."""
    return lambda w: [(path.format(w=w), kw),
                      (path.format(w=w), {**kw, "params": {"tenant": A}})]


REVIEW_B = {"cluster": "c1", "reviews": [{
    "namespace": "ns-b", "kind": "Deployment", "name": "b-app", "operation": "CREATE",
    "allowed": True, "decision": "allow", "images": [{
        "container_type": "container", "container": "app", "image": "b/img:1",
        "digest": "sha256:" + "b2" * 32, "verdict": "compliant"}]}]}

# (method, path) of ACCESS -> the requests tenant B makes against tenant A's objects
CASES: dict[tuple[str, str], Case] = {
    ("GET", P + "/whoami"): _one(P + "/whoami"),
    ("GET", P + "/policies"): _lists(P + "/policies"),
    ("POST", P + "/policies"): _one(P + "/policies", json={"content": policy("secret-a", A)}),
    ("GET", P + "/policies/{name}"): _named(P + "/policies/secret-a"),
    ("DELETE", P + "/policies/{name}"): _named(P + "/policies/secret-a"),
    ("GET", P + "/policies/{name}/history"): _named(P + "/policies/secret-a/history"),
    ("POST", P + "/policies/{name}/rollback"): _named(P + "/policies/secret-a/rollback",
                                                      json={"version": 1}),
    ("POST", P + "/policies/distribute"): _one(P + "/policies/distribute", json={
        "tenants": [A], "content": policy("secret-a")}),
    ("GET", P + "/agents"): _paged(P + "/agents", "{w.agent_a.agent_id}"),
    ("GET", P + "/agents/{agent_id}"): _one(P + "/agents/{w.agent_a.agent_id}"),
    ("PUT", P + "/agents/{agent_id}/labels"): _one(P + "/agents/{w.agent_a.agent_id}/labels",
                                                   json={"labels": {"zone": "b"}}),
    ("POST", P + "/agents/{agent_id}/revoke"): _one(P + "/agents/{w.agent_a.agent_id}/revoke"),
    ("POST", P + "/enrollment-tokens"): _one(P + "/enrollment-tokens", json={"tenant": A}),
    ("GET", P + "/enrollment-tokens"): _lists(P + "/enrollment-tokens", params={"all": True}),
    ("POST", P + "/enrollment-tokens/{token_id}/revoke"): _one(
        P + "/enrollment-tokens/{w.token_a_id}/revoke"),
    ("GET", P + "/events"): _lists(P + "/events"),
    ("GET", P + "/audit"): _lists(P + "/audit", params={"limit": 10000}),
    ("POST", P + "/tokens"): lambda w: [
        (P + "/tokens", {"json": {"name": "x", "role": "admin", "tenant": A}}),
        (P + "/tokens", {"json": {"name": "y", "role": "viewer"}})],
    ("GET", P + "/tenants"): _one(P + "/tenants"),
    ("POST", P + "/tenants"): _one(P + "/tenants", json={"name": "b-made"}),
    ("DELETE", P + "/tenants/{name}"): _one(P + "/tenants/" + A),
    ("POST", P + "/admission/serving-cert"): _one(P + "/admission/serving-cert",
                                                  json={"csr": "x"}),
    ("POST", P + "/scan-jobs"): _one(P + "/scan-jobs", json={"image": IMAGE_A, "tenant": A}),
    ("GET", P + "/scan-jobs"): _lists(P + "/scan-jobs"),
    ("POST", P + "/scan-jobs/claim"): _one(P + "/scan-jobs/claim", json={"worker": "b"}),
    ("POST", P + "/scan-jobs/{job_id}/finish"): _one(P + "/scan-jobs/{w.job_a}/finish",
                                                     json={"worker": "b", "digest": "x"}),
    ("POST", P + "/scan-jobs/{job_id}/extend"): _one(P + "/scan-jobs/{w.job_a}/extend",
                                                     json={"worker": "b"}),
    ("POST", P + "/scan-jobs/{job_id}/release"): _one(P + "/scan-jobs/{w.job_a}/release",
                                                      json={"worker": "b"}),
    ("POST", P + "/scan-jobs/rescan-stale"): _one(P + "/scan-jobs/rescan-stale"),
    ("GET", P + "/images/{digest}/verdicts"): _one(P + f"/images/{DIGEST_A}/verdicts"),
    ("POST", P + "/images/{digest}/verdicts"): _one(
        P + f"/images/{DIGEST_A}/verdicts",
        json={"image": IMAGE_A, "policy": "secret-a-gate", "passed": True}),
    ("GET", P + "/vulndb/status"): _one(P + "/vulndb/status"),
    ("POST", P + "/vulndb/match"): _one(P + "/vulndb/match", json={"packages": []}),
    ("POST", P + "/vulndb/import"): _one(P + "/vulndb/import", json={"files": {}}),
    ("GET", P + "/scan-registries"): _lists(P + "/scan-registries"),
    ("POST", P + "/scan-registries"): _one(P + "/scan-registries", json={
        "registry": REGISTRY_A, "tenant": A, "insecure": True}),
    ("DELETE", P + "/scan-registries/{registry_id}"): _one(
        P + "/scan-registries/{w.registry_a}"),
    ("POST", P + "/scan-registries/{registry_id}/run"): _one(
        P + "/scan-registries/{w.registry_a}/run"),
    ("GET", P + "/scan-images"): _lists(P + "/scan-images"),
    ("POST", P + "/scan-images"): _one(P + "/scan-images", json={
        "image": IMAGE_A, "tenant": A, "insecure": True}),
    ("DELETE", P + "/scan-images/{image_id}"): _one(P + "/scan-images/{w.image_a}"),
    ("POST", P + "/admission/reviews"): _one(P + "/admission/reviews", json=REVIEW_B),
    ("GET", P + "/workloads"): _lists(P + "/workloads", params={"include_denied": True}),
    ("GET", P + "/images/{digest}/vulnerabilities"): _one(
        P + f"/images/{DIGEST_A}/vulnerabilities"),
    # the console's data (i-events): an event by seq (the first ones are A's), overview
    ("GET", P + "/events/{seq}"): lambda w: [(P + f"/events/{seq}", {}) for seq in (1, 2, 3)],
    ("GET", P + "/overview"): _lists(P + "/overview"),
    # the console's images page (i-uipages)
    ("GET", P + "/images"): _paged(P + "/images", DIGEST_A),
    ("GET", P + "/images/{digest}/findings"): _one(P + f"/images/{DIGEST_A}/findings"),
    ("GET", P + "/images/{digest}/sbom"): _one(P + f"/images/{DIGEST_A}/sbom"),
    # users and API tokens (i-auth): A's are not B's to see or change (id 1: the
    # bootstrap admin's token, a global one)
    ("GET", P + "/tokens"): _one(P + "/tokens"),
    ("POST", P + "/tokens/{token_id}/revoke"): _one(P + "/tokens/1/revoke"),
    ("GET", P + "/users"): _one(P + "/users"),
    ("POST", P + "/users"): _one(P + "/users", json={
        "name": "b-user", "password": "a long password 1", "role": "admin", "tenant": A}),
    ("PATCH", P + "/users/{name}"): _one(P + "/users/admin", json={"role": "viewer"}),
    ("DELETE", P + "/users/{name}"): _one(P + "/users/admin"),
}


def test_every_endpoint_has_a_tenant_case() -> None:
    """A new endpoint in ACCESS needs its case here: the matrix stays complete."""
    assert set(CASES) == set(ACCESS), {
        "missing": sorted(set(ACCESS) - set(CASES)), "stale": sorted(set(CASES) - set(ACCESS))}


def test_tenant_b_sees_and_changes_nothing_of_tenant_a(world: World) -> None:
    before = snapshot(world)
    assert before["agent"]["labels"] == {"zone": "secret-a"} and before["jobs"]
    assert before["verdicts"] and before["vulns"] and before["workloads"]
    assert {e["tenant"] for e in before["events"]} == {A}      # whatever the payload said
    assert before["audit"] and all(e["tenant"] == A for e in before["audit"])
    calls = 0
    for key in sorted(ACCESS):
        method, _ = key
        for role, api in world.b.items():
            for path, kw in CASES[key](world):
                r = api.http.request(method, path, **kw)
                calls += 1
                where = (role, method, path, kw, r.status_code, r.text[:300])
                assert r.status_code < 500, where
                if role not in ACCESS[key]:
                    assert r.status_code == 403, where
                if r.status_code < 300:
                    for marker in world.markers:
                        assert marker not in r.text, (marker, *where)
    assert calls > 250
    after = snapshot(world)
    for part in before:
        assert after[part] == before[part], part


def test_scoped_principal_answers(world: World) -> None:
    """The rule's answers: another tenant named 403, another tenant's object 404, lists
    and new objects in the caller's own tenant."""
    admin_b = world.b["admin"]
    assert admin_b.status("GET", P + "/agents", params={"tenant": A}) == 403
    assert admin_b.status("GET", f"{P}/agents/{world.agent_a.agent_id}") == 404
    assert admin_b.status("GET", P + "/policies/secret-a", params={"tenant": A}) == 403
    assert admin_b.status("GET", P + "/policies/secret-a") == 404
    assert admin_b.status("POST", f"{P}/enrollment-tokens/{world.token_a_id}/revoke") == 404
    assert admin_b.status("DELETE", f"{P}/scan-registries/{world.registry_a}") == 404
    assert [a["id"] for a in admin_b("GET", P + "/agents")] == [world.agent_b.agent_id]
    page = admin_b("GET", P + "/agents", params={"page": 1, "limit": 1})
    assert [a["id"] for a in page["agents"]] == [world.agent_b.agent_id]
    # a page after A's agent or image: empty, as after one that does not exist
    for path, after in (("/agents", world.agent_a.agent_id), ("/images", DIGEST_A)):
        got = admin_b("GET", P + path, params={"after": after})
        assert got == {path[1:]: [], "next": None}, (path, got)
    assert [t["name"] for t in admin_b("GET", P + "/tenants")] == [B]
    # a document without metadata.tenant goes to the caller's tenant
    made = admin_b("POST", P + "/policies", json={"content": policy("b-new")})
    assert made["policies"][0]["tenant"] == B
    token = admin_b("POST", P + "/enrollment-tokens", expect=201, json={})
    assert token["tenant"] == B
    assert admin_b("POST", P + "/tokens", expect=201,
                   json={"name": "b2", "role": "viewer"})["tenant"] == B
    # a tenant that does not exist: refused, saying how to create it
    r = world.admin.http.post(P + "/enrollment-tokens", json={"tenant": "nowhere"})
    assert r.status_code == 422 and "moray tenant create nowhere" in r.text
    r = world.admin.http.post(P + "/policies", json={"content": policy("x", "nowhere")})
    assert r.status_code == 422 and "moray tenant create nowhere" in r.text


def test_agents_get_their_tenants_policies_only(world: World) -> None:
    wait_for(lambda: world.agent_a.versions().get("secret-a") and
             world.agent_b.versions().get("own-b"), timeout=30, what="both tenants' policies")
    assert "own-b" not in world.agent_a.versions()
    assert "secret-a" not in world.agent_b.versions()
    names_b = {name for name, *_ in world.agent_b.received}
    assert "secret-a" not in names_b


def test_tenant_manager_distributes_all_or_nothing(world: World) -> None:
    admin, api_b = world.admin, world.b["admin"]
    shared = policy("baseline", deny="/usr/bin/nc") + "---\n" + policy("baseline-2",
                                                                      deny="/usr/bin/ncat")
    # a tenant that does not exist: nothing stored anywhere
    r = admin.http.post(P + "/policies/distribute", json={
        "tenants": [A, "nowhere"], "content": shared})
    assert r.status_code == 422 and "moray tenant create nowhere" in r.text
    assert admin.status("GET", P + "/policies/baseline", params={"tenant": A}) == 404
    # a bad document: nothing stored
    r = admin.http.post(P + "/policies/distribute", json={
        "tenants": [A, B], "content": shared + "---\nkind: RuntimePolicy\nspec: [\n"})
    assert r.status_code == 422
    assert admin.status("GET", P + "/policies/baseline", params={"tenant": B}) == 404
    # scoped principals may not distribute
    assert api_b.status("POST", P + "/policies/distribute",
                        json={"tenants": [B], "content": shared}) == 403
    out = admin("POST", P + "/policies/distribute", expect=200, json={
        "tenants": [A, B], "content": shared, "comment": "fleet baseline"})
    assert set(out["tenants"]) == {A, B}
    for tenant in (A, B):
        stored = out["tenants"][tenant]["policies"]
        assert [(p["name"], p["tenant"], p["changed"]) for p in stored] == [
            ("baseline", tenant, True), ("baseline-2", tenant, True)]
    # each tenant's agents receive and acknowledge it; their own policies stay apart
    for agent in (world.agent_a, world.agent_b):
        wait_for(lambda a=agent: {"baseline", "baseline-2"} <= set(a.versions()),
                 timeout=30, what="the distributed policies")
    assert "own-b" not in world.agent_a.versions()
    assert "secret-a" not in world.agent_b.versions()

    def acked(agent: SimAgent, tenant: str) -> bool:
        got = admin("GET", P + "/agents", params={"tenant": tenant})
        row = next(a for a in got if a["id"] == agent.agent_id)
        return row["policies"].get("baseline", {}).get("status") == "APPLIED"

    wait_for(lambda: acked(world.agent_a, A) and acked(world.agent_b, B), timeout=30,
             what="acks of the distributed policy")
    # the change is audited in each tenant; B's auditor sees B's entry only
    audit_b = world.b["auditor"]("GET", P + "/audit", params={"limit": 10000})
    mine = [e for e in audit_b if e["target"] == f"{B}/baseline"]
    assert mine and all(e["tenant"] == B for e in audit_b)
    assert not [e for e in audit_b if A in e["target"]]
    # ["*"]: every tenant (default too)
    out = admin("POST", P + "/policies/distribute", expect=200,
                json={"tenants": ["*"], "content": policy("everywhere")})
    assert {"default", A, B} <= set(out["tenants"])


def test_tenant_registry(world: World) -> None:
    admin = world.admin
    listed = {t["name"]: t for t in admin("GET", P + "/tenants")}
    assert {"default", A, B} <= set(listed)
    assert listed[A]["agents"] == 1 and listed[A]["policies"] >= 1
    assert admin.status("POST", P + "/tenants", json={"name": A}) == 409
    assert admin.status("POST", P + "/tenants", json={"name": "-bad-"}) == 422
    assert admin.status("DELETE", P + "/tenants/" + A) == 409      # it has an agent
    admin("POST", P + "/tenants", expect=201, json={"name": "short-lived"})
    admin("DELETE", P + "/tenants/short-lived", expect=200)
    assert admin.status("DELETE", P + "/tenants/short-lived") == 404
    assert admin.status("POST", P + "/enrollment-tokens", json={"tenant": "short-lived"}) == 422


def test_cli_tenant_and_distribute(world: World, tmp_path: Path) -> None:
    def moray(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": world.server.url,
               "MORAY_TOKEN": world.server.admin_token}
        return subprocess.run([sys.executable, "-m", "moray.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    made = moray("tenant", "create", "cli-made", "--comment", "from the CLI")
    assert made.returncode == 0 and "tenant cli-made created" in made.stdout, made.stderr
    listed = moray("tenant", "list")
    assert listed.returncode == 0 and "cli-made" in listed.stdout
    assert moray("tenant", "create", "cli-made").returncode == 1     # exists already
    file = tmp_path / "shared.yaml"
    file.write_text(policy("cli-shared"))
    out = moray("policy", "distribute", str(file), "--tenants", f"cli-made,{B}")
    assert out.returncode == 0, out.stderr
    assert "cli-made/cli-shared: version 1 (applied)" in out.stdout
    assert f"{B}/cli-shared: version 1 (applied)" in out.stdout
    refused = moray("policy", "distribute", str(file), "--tenants", "cli-made,nowhere")
    assert refused.returncode == 1 and "moray tenant create nowhere" in refused.stderr
    assert moray("tenant", "delete", "cli-made").returncode == 0
    assert "cli-made" not in moray("tenant", "list").stdout


def test_a_gateway_keeps_tenants_apart(world: World, tmp_path: Path) -> None:
    """Agents of two tenants behind one gateway: each gets its tenant's policies only,
    and an event is stored under its agent's tenant whatever its payload says."""
    gw = GatewayProcess(tmp_path / "gw", world.server, "gw-tenants").start()
    clients: dict[str, tuple[ControlPlaneClient, Recorder]] = {}
    try:
        for tenant in (A, B):
            rec = Recorder()
            client = ControlPlaneClient(
                gw.target, tmp_path / tenant, rec, token=world.admin.token(tenant=tenant),
                ca_pem=world.server.ca_pem, enroll_server=gw.enroll_target,
                heartbeat_interval=0.5, max_backoff=0.5)
            client.start()
            clients[tenant] = (client, rec)
        wait_for(lambda: "secret-a" in clients[A][1].versions()
                 and "own-b" in clients[B][1].versions(), timeout=30,
                 what="each tenant's policy through the gateway")
        assert "own-b" not in clients[A][1].versions()
        assert "secret-a" not in clients[B][1].versions()
        agent_a = clients[A][0].identity
        assert agent_a is not None
        assert clients[A][0].send_many([{"type": "exec", "id": "via-gw-1", "tenant": B}]) == 1

        def stored() -> list[dict[str, Any]]:
            return [e for e in world.admin("GET", P + "/events", params={"limit": 10000})
                    if e["id"] == "via-gw-1"]

        wait_for(stored, timeout=30, what="the event through the gateway")
        assert [(e["agent_id"], e["tenant"]) for e in stored()] == [(agent_a.agent_id, A)]
        assert not [e for e in world.b["viewer"]("GET", P + "/events")
                    if e["id"] == "via-gw-1"]
    finally:
        for client, _ in clients.values():
            client.stop()
        gw.stop()


def test_each_tenants_agents_get_its_image_verdict_list(world: World) -> None:
    """Verdicts are shared by digest, lists are not: A's agent's list has A's image and
    not B's, B's agent's has B's and not A's."""
    admin = world.admin
    digest_b = "sha256:" + "b3" * 32
    admin("POST", P + "/scan-jobs", json={"image": "b/img:3", "tenant": B})
    admin("POST", f"{P}/images/{digest_b}/verdicts", expect=200,
          json={"image": "b/img:3", "policy": "b-gate", "passed": True})
    gate = json.dumps({"apiVersion": "moray/v1", "kind": "RuntimePolicy",
                       "metadata": {"name": "gate"},
                       "spec": {"scope": {"containers": {}},
                                "images": {"block": ["non-compliant"]}}})
    admin("POST", P + "/policies/distribute", expect=200,
          json={"tenants": [A, B], "content": gate})

    def listed(agent: SimAgent) -> set[str]:
        doc = agent.documents.get(VERDICTS_NAME)
        return {i["digest"] for i in json.loads(doc)["images"]} if doc else set()

    wait_for(lambda: DIGEST_A in listed(world.agent_a) and digest_b in listed(world.agent_b),
             timeout=30, what="each tenant's image-verdict list")
    assert digest_b not in listed(world.agent_a)
    assert DIGEST_A not in listed(world.agent_b)
