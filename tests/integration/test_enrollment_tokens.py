"""Multi-use enrolment tokens against a real moray-server (SQLite and PostgreSQL), real
TLS enrolments (the agent's own ``enroll``), the real ``moray`` CLI, and a real gateway.

Checked: enrolments racing for a token's last uses over gRPC -> exactly the token's uses
win; two processes, each with its own database connections, spending the same tokens at
once -> each use spent once (the conditional UPDATE, not the server's in-process lock);
``moray token create --unlimited --expires``, ``list`` (uses, agents, never the token),
``revoke`` (later enrolments refused, enrolled agents kept), every use in the audit log;
rate limits per source and per token at the server and at the gateway's enrolment proxy
(RESOURCE_EXHAUSTED, and a request the gateway refuses never reaches the server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from moray.agent.controlplane.identity import EnrollmentError, enroll
from tests.helpers.controlplane import ROOT, GatewayProcess, ServerProcess, wait_for

pytestmark = pytest.mark.integration


def _token(server: ServerProcess, **body: Any) -> dict[str, Any]:
    return dict(server.api()("POST", "/api/v1/enrollment-tokens", expect=201,
                             json={"labels": {}, **body}))


def _race(target: str, token: str, ca_pem: bytes, base: Path, n: int) -> list[str]:
    """``n`` enrolments with ``token`` released at the same instant; each one's outcome:
    an agent id, or the gRPC status name of its refusal."""
    barrier = threading.Barrier(n)
    out: list[str] = [""] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = enroll(target, token, ca_pem, base / f"a{i}", hostname=f"node-{i}").agent_id
        except EnrollmentError as err:
            out[i] = str(err).split(": ")[1]        # "enrolment at X failed: CODE: details"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_racing_enrolments_spend_each_use_once(server: ServerProcess, tmp_path: Path) -> None:
    for round_ in range(4):                      # the last use, two nodes at once
        issued = _token(server, uses=1)
        out = _race(server.enroll_target, issued["token"], server.ca_pem,
                    tmp_path / f"r{round_}", 2)
        assert sorted(o == "PERMISSION_DENIED" for o in out) == [False, True], out
    issued = _token(server, uses=5)              # 12 nodes for 5 uses
    out = _race(server.enroll_target, issued["token"], server.ca_pem, tmp_path / "many", 12)
    winners = [o for o in out if o != "PERMISSION_DENIED"]
    assert len(winners) == 5 and len(set(winners)) == 5, out
    (row,) = [r for r in server.api()("GET", "/api/v1/enrollment-tokens",
                                      params={"all": True}) if r["id"] == issued["id"]]
    assert (row["uses"], row["uses_left"], row["agents"], row["state"]) == (5, 0, 5, "used-up")


SPENDER = r'''
import json, sys, time
from pathlib import Path
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore, StoreError
url, tokens, go = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
store = ControlPlaneStore(db.make_engine(url))
store.agents()                                   # connected before the start
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
won = []
for token in tokens:
    try:
        won.append(store.enroll_agent(token, hostname="h", labels={},
                                      issue=lambda a: (f"serial-{a}", "sha")).id)
    except StoreError:
        won.append(None)
print(json.dumps(won), flush=True)
'''


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_spend_each_use_once(backend: str, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    """Two processes (two connection pools, as two server replicas on PostgreSQL) spend
    the same tokens at once: 30 one-time tokens and a 7-use token tried 10 times by each."""
    from moray.controlplane.store import db
    from moray.controlplane.store.cpstore import ControlPlaneStore

    if backend == "postgresql":
        from tests.helpers.postgres import create_database

        url = db.database_url(create_database(request.getfixturevalue("pg_base")))
    else:
        url = db.database_url(data=tmp_path)
    engine = db.make_engine(url)
    db.migrate(engine)
    store = ControlPlaneStore(engine)
    once = [store.create_enrollment_token(tenant="t", labels={}, author="test")
            for _ in range(30)]
    seven = store.create_enrollment_token(tenant="t", labels={}, author="test", uses=7)
    tokens = json.dumps(once + [seven] * 10)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", SPENDER, url, tokens, str(go)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(json.loads(out))
    a, b = results
    for i in range(30):                          # each one-time token: exactly one winner
        assert (a[i] is None) != (b[i] is None), (i, a[i], b[i])
    assert sum(x is not None for x in a[30:] + b[30:]) == 7
    rows = {r.uses for r in store.enrollment_tokens(include_inactive=True)}
    assert rows == {1, 7}
    assert len(store.agents()) == 37
    engine.dispose()


def _cli(server: ServerProcess, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
           "MORAY_TOKEN": server.admin_token, "MORAY_DATA_DIR": str(server.data_dir / "cli")}
    done = subprocess.run([sys.executable, "-m", "moray.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_daemonset_token_lifecycle(server: ServerProcess, tmp_path: Path) -> None:
    created = json.loads(_cli(server, "token", "create", "--unlimited", "--expires", "30d",
                              "--label", "role=node", "--comment", "prod DaemonSet", "--json"))
    token, token_id = created["token"], created["id"]
    assert created["unlimited"] and created["uses_left"] is None
    assert 29.9 * 86400 < created["expires_at"] - created["created_at"] <= 30 * 86400
    ids = {enroll(server.enroll_target, token, server.ca_pem, tmp_path / f"n{i}",
                  hostname=f"node-{i}", labels={"role": "web"}).agent_id for i in range(3)}
    listed = _cli(server, "token", "list")
    assert token not in listed and "prod DaemonSet" in listed and "unlimited" in listed
    (row,) = [r for r in json.loads(_cli(server, "token", "list", "--json"))
              if r["id"] == token_id]
    assert "token" not in row and (row["uses"], row["agents"]) == (3, 3)
    agents = json.loads(_cli(server, "agents", "list", "--enrollment-token", str(token_id),
                             "--json"))
    assert {a["id"] for a in agents} == ids
    assert {a["labels"]["role"] for a in agents} == {"node"}      # the token's labels win
    assert "revoked enrolment token" in _cli(server, "token", "revoke", str(token_id))
    with pytest.raises(EnrollmentError, match=r"PERMISSION_DENIED.*revoked"):
        enroll(server.enroll_target, token, server.ca_pem, tmp_path / "late")
    assert all(r["id"] != token_id for r in json.loads(_cli(server, "token", "list",
                                                            "--json")))
    (row,) = [r for r in json.loads(_cli(server, "token", "list", "--all", "--json"))
              if r["id"] == token_id]
    assert row["state"] == "revoked" and row["agents"] == 3
    assert not any(a["revoked"] for a in server.api()("GET", "/api/v1/agents"))
    audit = server.api()("GET", "/api/v1/audit", params={"limit": 1000})
    uses = [r for r in audit if r["action"] == "agent.enroll"
            and r["detail"].get("token") == token_id]
    assert {r["target"] for r in uses} == ids
    assert [r["target"] for r in audit if r["action"] == "enrollment_token.revoke"] == [
        f"token:{token_id}"]
    assert token not in json.dumps(audit)
    for bad in ({"uses": 0}, {"uses": -1}, {"ttl_seconds": 367 * 86400}, {"ttl_seconds": 0}):
        assert server.api().status("POST", "/api/v1/enrollment-tokens", json=bad) == 422, bad
    # one-time stays the default (`moray agents token` = `moray token create`)
    one = _cli(server, "agents", "token").strip()
    enroll(server.enroll_target, one, server.ca_pem, tmp_path / "one")
    with pytest.raises(EnrollmentError, match="used up"):
        enroll(server.enroll_target, one, server.ca_pem, tmp_path / "two")


def _limited(server: ServerProcess) -> float:
    for line in server.api()("GET", "/metrics").splitlines():
        if line.startswith('moray_enrollments_total{result="limited"}'):
            return float(line.split()[1])
    return 0.0


def _attempts(server: ServerProcess) -> float:
    total = 0.0
    for line in server.api()("GET", "/metrics").splitlines():
        if line.startswith("moray_enrollments_total{"):
            total += float(line.split()[1])
    return total


def test_rate_limit_per_source_at_the_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "s", extra_args=(
        "--enroll-rate-per-source", "0.001/2", "--enroll-rate-per-token", "0")).start()
    try:
        for i in range(2):                       # bad tokens count too
            with pytest.raises(EnrollmentError, match="PERMISSION_DENIED"):
                enroll(server.enroll_target, f"moray-enroll-guess{i}", server.ca_pem,
                       tmp_path / f"g{i}")
        good = _token(server, uses=1)["token"]
        with pytest.raises(EnrollmentError, match=r"RESOURCE_EXHAUSTED.*address"):
            enroll(server.enroll_target, good, server.ca_pem, tmp_path / "a")
        assert _limited(server) == 1
        # the refused request spent nothing: the token has its use left
        (row,) = server.api()("GET", "/api/v1/enrollment-tokens")
        assert row["uses_left"] == 1
    finally:
        server.stop()


def test_rate_limit_per_token_at_the_server_and_per_source_at_the_gateway(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "s", extra_args=(
        "--enroll-rate-per-source", "0", "--enroll-rate-per-token", "0.001/2")).start()
    gateway = GatewayProcess(tmp_path / "gw", server, "gw1", (
        "--enroll-rate-per-source", "0.001/2", "--enroll-rate-per-token", "0"))
    try:
        shared = _token(server, uses=None)["token"]
        for i in range(2):
            enroll(server.enroll_target, shared, server.ca_pem, tmp_path / f"s{i}")
        with pytest.raises(EnrollmentError, match=r"RESOURCE_EXHAUSTED.*token"):
            enroll(server.enroll_target, shared, server.ca_pem, tmp_path / "s2")
        other = _token(server, uses=None)["token"]          # another token goes on
        enroll(server.enroll_target, other, server.ca_pem, tmp_path / "o0")
        assert _limited(server) == 1
        gateway.start()
        fresh = _token(server, uses=None)["token"]
        for i in range(2):
            enroll(gateway.enroll_target, fresh, server.ca_pem, tmp_path / f"g{i}")
        before = _attempts(server)
        with pytest.raises(EnrollmentError, match=r"RESOURCE_EXHAUSTED.*address"):
            enroll(gateway.enroll_target, fresh, server.ca_pem, tmp_path / "g2")
        # refused at the gateway: the server never saw it
        wait_for(lambda: _attempts(server) == before, what="server metrics")
        assert _attempts(server) == before
    finally:
        gateway.stop()
        server.stop()
