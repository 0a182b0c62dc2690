"""The REST API and the `moray` CLI against a real moray-server: every role against every
endpoint, malformed policies refused with file/line/field and nothing stored, policy
apply/list/history/rollback, agents list, events query/follow, OpenAPI and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy
from moray.controlplane.server.rest import ACCESS
from tests.helpers.controlplane import ROOT, ServerProcess, policy_yaml, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(module_server: ServerProcess) -> ServerProcess:
    """One server per module and store (conftest.py): the tests share it."""
    return module_server


def moray(server: ServerProcess, *args: str, token: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
           "MORAY_TOKEN": token or server.admin_token}
    return subprocess.run([sys.executable, "-m", "moray.controlplane.cli", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def _request(method: str, path: str, agent_id: str) -> tuple[str, dict[str, Any]]:
    concrete = path.replace("{name}", "matrix").replace("{agent_id}", agent_id) \
        .replace("{token_id}", "999999")
    body: dict[str, Any] = {}
    if (method, path) == ("POST", "/api/v1/policies"):
        body = {"json": {"content": policy_yaml("matrix"), "source": "m.yaml"}}
    elif path.endswith("/rollback"):
        body = {"json": {"version": 1}}
    elif path.endswith("/labels"):
        body = {"json": {"labels": {"zone": "m"}}}
    elif path.endswith("enrollment-tokens"):
        body = {"json": {}}
    elif path.endswith("/tokens"):
        body = {"json": {"name": "m", "role": "viewer"}}
    return concrete, body


def test_every_role_against_every_endpoint(server: ServerProcess) -> None:
    admin = server.api()
    admin.apply(policy_yaml("matrix"))
    tokens = {role: admin("POST", "/api/v1/tokens", expect=201,
                          json={"name": f"t-{role}", "role": role})["token"]
              for role in ("admin", "operator", "auditor", "viewer", "admission")}
    agent_id = "0" * 32
    denied, allowed = 0, 0
    for (method, path), roles in ACCESS.items():
        if path.endswith("/revoke") or method == "DELETE":
            continue        # checked below, once the rest has run
        concrete, body = _request(method, path, agent_id)
        assert server.api("nope").status(method, concrete, **body) == 401, (method, path)
        assert server.api(None).http.request(method, concrete, headers={
            "Authorization": ""}, **body).status_code == 401
        for role, token in tokens.items():
            status = server.api(token).status(method, concrete, **body)
            if role in roles:
                allowed += 1
                assert status not in (401, 403), (role, method, path, status)
            else:
                denied += 1
                assert status == 403, (role, method, path, status)
    for method, path in (("POST", "/api/v1/agents/{agent_id}/revoke"),
                         ("POST", "/api/v1/enrollment-tokens/{token_id}/revoke"),
                         ("POST", "/api/v1/tokens/{token_id}/revoke"),
                         ("DELETE", "/api/v1/users/{name}"),
                         ("DELETE", "/api/v1/policies/{name}")):
        concrete, _ = _request(method, path, agent_id)
        for role in ("viewer", "auditor", "operator", "admin"):
            status = server.api(tokens[role]).status(method, concrete)
            if role in ACCESS[(method, path)]:
                assert status in (200, 404), (role, method, path, status)
                break
            assert status == 403, (role, method, path, status)
    assert allowed > 30 and denied > 10
    # every change was audited with its author
    audit = admin("GET", "/api/v1/audit", params={"limit": 10000})
    actors = {(a["actor"], a["action"]) for a in audit}
    assert ("operator:t-operator", "policy.rollback") in actors
    assert ("admin:bootstrap-admin", "api_token.create") in actors


def test_openapi_and_metrics_need_no_token(server: ServerProcess) -> None:
    anon = server.api("x")
    spec = json.loads(anon.http.get("/openapi.json").text)
    assert {path for _, path in ACCESS} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    metrics = anon.http.get("/metrics").text
    for name in ("moray_agents_connected", "moray_policy_push_latency_seconds",
                 "moray_events_ingested_total", "moray_event_batches_inflight",
                 "moray_policy_pushes_pending"):
        assert name in metrics


def test_malformed_policy_is_refused_and_nothing_stored(server: ServerProcess,
                                                        tmp_path: Path) -> None:
    bad = tmp_path / "web.yaml"
    bad.write_text(policy_yaml("web-bad").replace("mode: enforce", "mode: enforcing"))
    before = server.api()("GET", "/api/v1/audit", params={"limit": 10000})
    result = moray(server, "policy", "apply", str(bad))
    assert result.returncode == 1
    assert f"{bad}:6: spec.mode: must be enforce or monitor" in result.stderr
    r = server.api().http.post("/api/v1/policies", json={"content": "spec: [", "source": "x.yaml"})
    assert r.status_code == 422 and r.json()["file"] == "x.yaml"
    r = server.api().http.post("/api/v1/policies", json={
        "content": policy_yaml("web-bad").replace("deny: [/bin/sh]", "deny: [sh]"),
        "source": "y.yaml"})
    assert r.status_code == 422
    assert r.json()["field"] == "spec.exec.deny[0]" and r.json()["line"] == 7
    assert server.api().status("GET", "/api/v1/policies/web-bad") == 404
    assert server.api()("GET", "/api/v1/audit", params={"limit": 10000}) == before


def test_cli_policy_lifecycle_agents_and_events(server: ServerProcess, tmp_path: Path) -> None:
    applied: list[VerifiedPolicy] = []

    def on_policy(policy: VerifiedPolicy) -> ApplyResult:
        applied.append(policy)
        return ApplyResult(ok=True)

    token = moray(server, "agents", "token", "--label", "role=web").stdout.strip()
    assert token.startswith("moray-enroll-")
    client = ControlPlaneClient(server.grpc_target, tmp_path / "agent", on_policy, token=token,
                                ca_pem=server.ca_pem, enroll_server=server.enroll_target,
                                heartbeat_interval=0.3)
    client.start()
    try:
        wait_for(lambda: client.identity is not None)
        path = tmp_path / "cli-web.yaml"
        path.write_text(policy_yaml("cli-web", labels={"role": "web"}))
        out = moray(server, "policy", "apply", str(path))
        assert out.returncode == 0 and "default/cli-web: version 1 (applied)" in out.stdout
        assert "unchanged" in moray(server, "policy", "apply", str(path)).stdout
        path.write_text(policy_yaml("cli-web", labels={"role": "web"}, deny="/usr/bin/nc"))
        assert "version 2" in moray(server, "policy", "apply", str(path)).stdout
        wait_for(lambda: applied and applied[-1].version == 2, timeout=2)
        listing = moray(server, "policy", "list").stdout
        assert "cli-web" in listing
        history = moray(server, "policy", "history", "cli-web").stdout.splitlines()
        assert [line.split()[0] for line in history] == ["v1", "v2"]
        assert "version 3" in moray(server, "policy", "rollback", "cli-web", "1").stdout
        wait_for(lambda: applied[-1].version == 3
                 and applied[-1].document["spec"]["exec"]["deny"] == ["/bin/sh"], timeout=2)
        agents = json.loads(moray(server, "agents", "list", "--json").stdout)
        mine = next(a for a in agents if a["id"] == client.identity.agent_id)
        assert mine["labels"] == {"role": "web"} and mine["connected"]
        assert "online" in moray(server, "agents", "list").stdout

        client.send_many([{"type": "exec", "id": f"cli-{i}", "n": i} for i in range(5)])
        wait_for(lambda: client.spool.stats().records == 0)
        rows = [json.loads(line) for line in moray(
            server, "events", "query", "--agent", client.identity.agent_id, "--json"
        ).stdout.splitlines()]
        assert [r["id"] for r in rows] == [f"cli-{i}" for i in range(5)]
        last = rows[-1]["seq"]
        follower = subprocess.Popen(
            [sys.executable, "-m", "moray.controlplane.cli", "events", "follow", "--json",
             "--after", str(last), "--max", "3", "--interval", "0.1", "--timeout", "20"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
                 "MORAY_TOKEN": server.admin_token})
        client.send_many([{"type": "exit", "id": f"cli-f{i}"} for i in range(3)])
        followed, _ = follower.communicate(timeout=30)
        assert [json.loads(x)["id"] for x in followed.splitlines()] == [
            "cli-f0", "cli-f1", "cli-f2"]
        viewer = moray(server, "tokens", "create", "v", "viewer").stdout.strip()
        refused = moray(server, "policy", "apply", str(path), token=viewer)
        assert refused.returncode == 1 and "403" in refused.stderr
        assert "policy.rollback" in moray(server, "audit").stdout
        assert moray(server, "policy", "delete", "cli-web").returncode == 0
        wait_for(lambda: applied[-1].removed, timeout=2)
    finally:
        client.stop()


def test_rest_over_https_with_the_server_ca(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "tls", http_tls=True).start()
    try:
        assert srv.url.startswith("https://")
        assert srv.api()("GET", "/api/v1/whoami", expect=200)["role"] == "admin"
        ca = str(srv.data_dir / "pki" / "ca.pem")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": srv.url,
               "MORAY_TOKEN": srv.admin_token}
        run = [sys.executable, "-m", "moray.controlplane.cli", "policy", "list"]
        ok = subprocess.run([*run, "--ca", ca], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stderr
        unverified = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=60, check=False)
        assert unverified.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    finally:
        srv.stop()
