"""Hostile clients against a real moray-server (real sockets, real mTLS, SQLite and a
real PostgreSQL where the store matters): each hostile input gets a clear 4xx or gRPC
status, and a well-behaved client is served meanwhile (/healthz answers, another agent's
events and acknowledgements are stored).

Covered (issue 14, "hostile clients"): a billion-laughs or too deep YAML policy; bodies
over the limit (Content-Length and chunked) and bodies behind a missing, wrong or
under-privileged token (refused before a byte of the body is read); event payloads that
are not JSON; event ids another agent also uses; revocation during an open event stream;
acknowledgements for made-up policies and impossible versions; 64-bit parameters out of
range."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from moray.agent.controlplane.identity import enroll
from moray.api.policy import load
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.controlplane.server.limits import MAX_BODY
from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for

pytestmark = pytest.mark.integration

INT64 = 2**63


class SimAgent:
    """An enrolled agent speaking the gRPC contract directly (its own mTLS channel), so a
    test can send what a real agent never would."""

    def __init__(self, server: ServerProcess, directory: Path) -> None:
        self.server = server
        identity = enroll(server.enroll_target, server.api().token(), server.ca_pem, directory)
        self.id = identity.agent_id
        self.channel = grpc.secure_channel(server.grpc_target, identity.channel_credentials())
        self.stub = moray_pb2_grpc.AgentServiceStub(self.channel)

    def events(self, *batches: list[moray_pb2.Event]) -> list[moray_pb2.EventAck]:
        requests = [moray_pb2.EventBatch(batch_id=i + 1, events=b) for i, b in enumerate(batches)]
        return list(self.stub.Events(iter(requests), timeout=30))

    def heartbeat(self) -> grpc.StatusCode:
        try:
            self.stub.Heartbeat(moray_pb2.HeartbeatRequest(), timeout=10)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def close(self) -> None:
        self.channel.close()


class Stream:
    """A bidirectional stream fed from a queue (None ends it)."""

    def __init__(self, call: Any, first: Any = None) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        if first is not None:
            self.requests.put(first)
        self.responses = call(iter(self.requests.get, None), timeout=60)

    def send(self, message: Any) -> None:
        self.requests.put(message)

    def close(self) -> None:
        self.requests.put(None)


def event(event_id: str, payload: bytes = b'{"ok": true}') -> moray_pb2.Event:
    return moray_pb2.Event(id=event_id, time_ms=1, type="exec", payload_json=payload)


def stored(server: ServerProcess, agent_id: str) -> list[dict[str, Any]]:
    return list(server.api()("GET", "/api/v1/events",
                             params={"agent": agent_id, "limit": 10000}, expect=200))


def healthy(server: ServerProcess) -> bool:
    return httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def raw_request(server: ServerProcess, head: str, body: bytes = b"",
                chunks: Iterable[bytes] = ()) -> tuple[int, str]:
    """Send ``head`` (request line and headers), ``body`` and then ``chunks`` as a chunked
    body without its terminating chunk, and read the answer: the status and the body."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        for chunk in chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line, _, rest = answer.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), rest.split("\r\n\r\n", 1)[-1]


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("hostile") / "server").start()
    yield srv
    srv.stop()


# -- REST -----------------------------------------------------------------------------


def billion_laughs() -> str:
    lines = ["    a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"    {cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    return ("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata:\n  name: lol\n  labels:\n"
            + "\n".join(lines) + "\nspec: {scope: {host: true}, exec: {deny: [/bin/sh]}}\n")


def test_yaml_bombs_get_422_naming_file_line_field(sqlite_server: ServerProcess) -> None:
    server, api = sqlite_server, sqlite_server.api()
    operator = api("POST", "/api/v1/tokens", json={"name": "op", "role": "operator"},
                   expect=201)["token"]
    answers: dict[str, Any] = {}

    def post(name: str, text: str) -> None:
        r = httpx.post(server.url + "/api/v1/policies", timeout=60, json={
            "content": text, "source": f"{name}.yaml"},
            headers={"Authorization": f"Bearer {operator}"})
        answers[name] = (r.status_code, r.json())

    bombs = {"lol": billion_laughs(),
             "deep": "apiVersion: moray/v1\nkind: RuntimePolicy\nspec: " + "[" * 100_000,
             "big": "# " + "x" * (load.MAX_POLICY_BYTES + 1)}
    threads = [threading.Thread(target=post, args=item) for item in bombs.items()]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):       # the server serves others meanwhile
        assert healthy(server)
        assert api.apply(policy_yaml("bystander"))["name"] == "bystander"
    for t in threads:
        t.join()
    status, body = answers["lol"]
    assert status == 422, body
    assert body["file"] == "lol.yaml" and body["line"] > 5 and body["field"].startswith(
        "metadata.labels."), body
    assert f"more than {load.MAX_YAML_NODES} nodes" in body["message"]
    status, body = answers["deep"]
    assert (status, body["file"], body["line"]) == (422, "deep.yaml", 3), body
    assert body["field"].startswith("spec[0][0]") and "nested deeper" in body["message"]
    status, body = answers["big"]
    assert status == 422 and "larger than" in body["message"], body
    assert "lol" not in [p["name"] for p in api("GET", "/api/v1/policies")]


def test_bodies_refused_before_they_are_read(sqlite_server: ServerProcess) -> None:
    server, api = sqlite_server, sqlite_server.api()
    viewer = api("POST", "/api/v1/tokens", json={"name": "v", "role": "viewer"},
                 expect=201)["token"]
    admin = server.admin_token

    def head(token: str | None, length: str = "300000000",
             path: str = "/api/v1/policies") -> str:
        auth = f"Authorization: Bearer {token}\n" if token else ""
        size = ("Transfer-Encoding: chunked\n" if length == "chunked"
                else f"Content-Length: {length}\n")
        return (f"POST {path} HTTP/1.1\nHost: x\nConnection: close\n{auth}"
                f"Content-Type: application/json\n{size}\n")

    # 300 MB announced, not one byte sent: answered from the headers alone
    assert raw_request(server, head(None))[0] == 401
    assert raw_request(server, head("moray-admin-wrong"))[0] == 401
    assert raw_request(server, head(viewer))[0] == 403
    status, body = raw_request(server, head(admin))
    assert status == 413 and f"larger than {MAX_BODY} bytes" in body
    # the same with a chunked body: the token is checked before the first chunk
    assert raw_request(server, head("moray-admin-wrong", "chunked"))[0] == 401
    # a chunked body with a good token is counted as it streams: 413 past the limit
    mib = b" " * (1 << 20)
    status, body = raw_request(server, head(admin, "chunked"),
                               chunks=[*[mib] * (MAX_BODY >> 20), b"{"])
    assert status == 413, body
    # routes outside the access matrix and bodies within the limit behave as before
    assert raw_request(server, head(None, "2", "/nowhere"), b"{}")[0] == 404
    assert api.apply(policy_yaml("after-bodies"))["name"] == "after-bodies"
    assert healthy(server)


def test_64_bit_parameters_out_of_range_get_422(sqlite_server: ServerProcess) -> None:
    api = sqlite_server.api()
    for path, params in [("/api/v1/events", {"after": INT64}),
                         ("/api/v1/events", {"since_ms": INT64}),
                         ("/api/v1/events", {"since_ms": -INT64 - 1}),
                         ("/api/v1/audit", {"after": INT64})]:
        assert api.status("GET", path, params=params) == 422, (path, params)
    assert api.status("GET", "/api/v1/events", params={"after": INT64 - 1}) == 200
    assert api.status("POST", f"/api/v1/scan-jobs/{2**64}/extend",
                      json={"worker": "w"}) == 422
    api.apply(policy_yaml("ranged"))
    assert api.status("POST", "/api/v1/policies/ranged/rollback",
                      json={"version": INT64}) == 422


# -- agents (SQLite and PostgreSQL) -------------------------------------------------------


def test_bad_events_and_shared_ids_hurt_no_one(server: ServerProcess, tmp_path: Path) -> None:
    good, bad = SimAgent(server, tmp_path / "good"), SimAgent(server, tmp_path / "bad")
    try:
        acks = bad.events([event("b-1"), event("b-2", b"not json {"), event("b-3", b"[1]"),
                           event("b-4", b'{"x": "' + b"y" * (300 << 10) + b'"}'),
                           event("b-5", b"\xff\xfe"), event("shared-1")])
        assert [(a.stored, a.duplicates, a.rejected) for a in acks] == [(2, 0, 4)]
        # the same ids from another agent are its own events, not duplicates
        acks = good.events([event("shared-1"), event("b-1")], [event("g-1")])
        assert [(a.stored, a.duplicates, a.rejected) for a in acks] == [(2, 0, 0), (1, 0, 0)]
        assert sorted(e["id"] for e in stored(server, good.id)) == ["b-1", "g-1", "shared-1"]
        assert sorted(e["id"] for e in stored(server, bad.id)) == ["b-1", "shared-1"]
        # an agent clock at the end of time, and a heartbeat with a huge status
        far = moray_pb2.Event(id="far", time_ms=INT64 - 1, type="exec", payload_json=b"{}")
        assert [a.stored for a in bad.events([far])] == [1]
        bad.stub.Heartbeat(moray_pb2.HeartbeatRequest(status=moray_pb2.AgentStatus(
            kernel="k" * 100_000, features={f"f{i}": True for i in range(20_000)})),
            timeout=30)
        # heartbeats are written in batches (controlplane/server/heartbeats.py)
        status = wait_for(lambda: "features" in (st := server.api()(
            "GET", f"/api/v1/agents/{bad.id}", expect=200)["status"]) and st,
            what="the heartbeat's status stored")
        assert len(status["features"]) == 256 and len(status["kernel"]) == 256
        rows = server.api()("GET", "/api/v1/events", params={"limit": 10000}, expect=200)
        assert all(isinstance(r["event"], dict) for r in rows)
        metrics = server.api()("GET", "/metrics")
        assert 'moray_events_rejected_total{reason="payload_not_json"} 3.0' in metrics
        assert 'moray_events_rejected_total{reason="payload_too_large"} 1.0' in metrics
        # ids beyond the database's range: the client's error, on either backend
        assert server.api().status("POST", f"/api/v1/scan-jobs/{INT64}/extend",
                                   json={"worker": "w"}) == 422
    finally:
        good.close()
        bad.close()


def test_bad_acks_do_not_drop_good_ones(server: ServerProcess, tmp_path: Path) -> None:
    server.api().apply(policy_yaml("web"))
    good, bad = SimAgent(server, tmp_path / "good"), SimAgent(server, tmp_path / "bad")
    hello = moray_pb2.PolicyStreamRequest(hello=moray_pb2.PolicyHello())
    streams = [Stream(good.stub.PolicyStream, hello), Stream(bad.stub.PolicyStream, hello)]
    try:
        pushed = [moray_pb2.PolicyPayload.FromString(next(s.responses).policy.payload)
                  for s in streams]
        assert [(p.name, p.version) for p in pushed] == [("web", 1), ("web", 1)]

        def ack(name: str, version: int) -> moray_pb2.PolicyStreamRequest:
            return moray_pb2.PolicyStreamRequest(ack=moray_pb2.PolicyAck(
                name=name, version=version, status=moray_pb2.APPLIED))

        # the hostile acks first and in a burst, so they share the ack writer's batches
        for i in range(300):
            streams[1].send(ack(f"made-up-{i}", 1))
        streams[1].send(ack("web", 2**64 - 1))
        streams[1].send(ack("web", INT64))
        streams[1].send(moray_pb2.PolicyStreamRequest(ack=moray_pb2.PolicyAck(
            name="web", version=1, status=12345)))     # no such status: not the stream's end
        streams[0].send(ack("web", 1))

        def acked(agent_id: str) -> dict[str, Any]:
            return dict(server.api()("GET", f"/api/v1/agents/{agent_id}")["policies"])

        wait_for(lambda: acked(good.id).get("web", {}).get("version") == 1,
                 what="the good agent's ack stored")
        metric = "moray_policy_acks_refused_total "
        wait_for(lambda: any(line.startswith(metric) and float(line.split()[1]) >= 303
                             for line in server.api()("GET", "/metrics").splitlines()),
                 what="the hostile acks refused")
        assert acked(bad.id) == {}
        streams[1].send(ack("web", 1))                  # the bad agent's stream still works
        wait_for(lambda: acked(bad.id).get("web", {}).get("version") == 1,
                 what="a good ack after the bad ones")
        assert good.heartbeat() == grpc.StatusCode.OK and healthy(server)
    finally:
        for s in streams:
            s.close()
        good.close()
        bad.close()


def test_revocation_ends_the_event_stream(server: ServerProcess, tmp_path: Path) -> None:
    agent, other = SimAgent(server, tmp_path / "a"), SimAgent(server, tmp_path / "b")
    stream = Stream(agent.stub.Events, moray_pb2.EventBatch(batch_id=1,
                                                            events=[event("before")]))
    try:
        assert next(stream.responses).stored == 1
        server.api()("POST", f"/api/v1/agents/{agent.id}/revoke", expect=200)
        # the open, idle stream ends: nothing more it sends can be stored
        with pytest.raises(grpc.RpcError) as err:
            next(stream.responses)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            agent.events([event("after")])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert agent.heartbeat() == grpc.StatusCode.PERMISSION_DENIED
        assert [e["id"] for e in stored(server, agent.id)] == ["before"]
        assert [a.stored for a in other.events([event("other")])] == [1]
        assert other.heartbeat() == grpc.StatusCode.OK
    finally:
        stream.close()
        agent.close()
        other.close()
