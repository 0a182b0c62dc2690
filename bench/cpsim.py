"""Simulated agents for bench/controlplane.py --fleet: many agents in one asyncio process,
each with its own gRPC channel and real mutual TLS (its own key and certificate, enrolled
with the server), built from moray's protobufs. Cheap per agent so that the client side
does not dominate the measurement: no policy signature check (the agent's Ed25519 verify,
~60 us, is left out), acks sent at once.

    python bench/cpsim.py --dir DIR --count N --enroll HOST:PORT --ca CA --tokens FILE

Per agent: a policy stream (hello with the versions it holds, one APPLIED/REMOVED ack per
message), a heartbeat every ``--heartbeat`` seconds (jittered; default: an idle agent's,
60 s), and on command an event stream. Commands on stdin, one per line; answers on stdout:
    connect EP[,EP...]   agents connect, agent i to EP[i % n] ("connecting N")
    events K B           every agent sends K batches of B events, one batch in flight,
                         each acked ("events-done SENT SECONDS")
    disconnect           close every channel ("disconnected")
    quit
Identities are enrolled once (``enrolled N``) and kept in DIR for later runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from moray.agent.controlplane.client import CHANNEL_OPTIONS, HEARTBEAT_EVERY  # noqa: E402
from moray.api.proto import moray_pb2, moray_pb2_grpc  # noqa: E402

# the agent's channel options, but 20 s for a keepalive ping's answer (the agent: 5 s):
# thousands of simulated agents share one Python loop, which a push keeps busy for
# seconds, and a ping unanswered in time drops the connection
SIM_OPTIONS = [*(o for o in CHANNEL_OPTIONS if o[0] != "grpc.keepalive_timeout_ms"),
               ("grpc.keepalive_timeout_ms", 20_000)]

PAYLOAD = b'{"type":"exec","process":{"pid":1234,"binary":"/usr/bin/true"}}'
CODES: dict[str, int] = {}   # "kind:STATUS" -> failed calls, written to DIR/errors.json
DETAILS: dict[str, float] = {}   # "kind:STATUS: details" -> when first seen (errors.json)


def _code(err: grpc.RpcError) -> str:
    code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
    return code.name if code is not None else type(err).__name__


class SimAgent:
    def __init__(self, agent_id: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes,
                 heartbeat: float) -> None:
        self.agent_id = agent_id
        self.creds = grpc.ssl_channel_credentials(root_certificates=ca_pem,
                                                  private_key=key_pem,
                                                  certificate_chain=cert_pem)
        self.heartbeat = heartbeat
        self.versions: dict[str, int] = {}
        self.channel: grpc.aio.Channel | None = None
        self.tasks: list[asyncio.Task[None]] = []
        # failed calls (retried), by kind: policy stream, heartbeat, event batch
        self.errors = {"policy": 0, "heartbeat": 0, "events": 0}

    async def connect(self, endpoint: str) -> None:
        self.channel = grpc.aio.secure_channel(endpoint, self.creds, options=SIM_OPTIONS)
        stub = moray_pb2_grpc.AgentServiceStub(self.channel)
        self.tasks = [asyncio.create_task(self._policies(stub)),
                      asyncio.create_task(self._heartbeats(stub))]

    async def _policies(self, stub: Any) -> None:
        while True:
            call = stub.PolicyStream()
            try:
                await call.write(moray_pb2.PolicyStreamRequest(
                    hello=moray_pb2.PolicyHello(versions=self.versions)))
                async for msg in call:
                    payload = moray_pb2.PolicyPayload.FromString(msg.policy.payload)
                    if payload.removed:
                        self.versions.pop(payload.name, None)
                        status = moray_pb2.REMOVED
                    else:
                        self.versions[payload.name] = payload.version
                        status = moray_pb2.APPLIED
                    await call.write(moray_pb2.PolicyStreamRequest(ack=moray_pb2.PolicyAck(
                        name=payload.name, version=payload.version, status=status)))
            except grpc.RpcError as err:
                self.errors["policy"] += 1
                CODES[f"policy:{_code(err)}"] = CODES.get(f"policy:{_code(err)}", 0) + 1
                detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else ""
                DETAILS.setdefault(f"policy:{_code(err)}: {detail}"[:200], time.time())
            await asyncio.sleep(1 + random.random())

    async def _heartbeats(self, stub: Any) -> None:
        await asyncio.sleep(random.random() * self.heartbeat)
        while True:
            try:
                await stub.Heartbeat(moray_pb2.HeartbeatRequest(status=moray_pb2.AgentStatus(
                    kernel="6.1.0-sim", agent_version="sim", policy_versions=self.versions)),
                    timeout=30)
            except grpc.RpcError as err:
                self.errors["heartbeat"] += 1
                CODES[f"heartbeat:{_code(err)}"] = CODES.get(f"heartbeat:{_code(err)}", 0) + 1
            await asyncio.sleep(self.heartbeat * (0.9 + 0.2 * random.random()))

    async def events(self, batches: int, size: int) -> int:
        """Send ``batches`` batches one at a time, each acked; a broken stream is opened
        again and the unacked batch resent (same ids: stored once)."""
        assert self.channel is not None
        stub = moray_pb2_grpc.AgentServiceStub(self.channel)
        call = stub.Events()
        sent = 0
        for b in range(batches):
            now = int(time.time() * 1000)
            batch = moray_pb2.EventBatch(batch_id=b + 1, events=[
                moray_pb2.Event(id=uuid.uuid4().hex, time_ms=now, type="exec",
                                payload_json=PAYLOAD) for _ in range(size)])
            for _attempt in range(20):
                try:
                    await call.write(batch)
                    ack = await call.read()
                    if ack is not grpc.aio.EOF and ack.batch_id == b + 1:
                        break
                except grpc.RpcError:
                    pass
                self.errors["events"] += 1
                call.cancel()
                await asyncio.sleep(0.5 + random.random())
                call = stub.Events()
            else:
                raise RuntimeError(f"{self.agent_id}: event stream keeps breaking")
            sent += size
        await call.done_writing()
        return sent

    async def disconnect(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.channel is not None:
            await self.channel.close()
        self.channel = None


async def enroll_one(target: str, token: str, ca_pem: bytes, n: int) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sim{n}")]))
           .sign(key, hashes.SHA256()))
    async with grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(root_certificates=ca_pem)) as channel:
        reply = await moray_pb2_grpc.EnrollmentStub(channel).Enroll(moray_pb2.EnrollRequest(
            token=token, hostname=f"sim{n}",
            csr_pem=csr.public_bytes(serialization.Encoding.PEM)), timeout=120)
    return {"id": reply.agent_id, "cert": reply.certificate_pem.decode(),
            "key": key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--enroll", required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_EVERY,
                   help="seconds between heartbeats (default: an idle agent's, whose status "
                        "does not change)")
    args = p.parse_args()
    ca_pem = args.ca.read_bytes()
    ids_file = args.dir / "identities.json"
    if ids_file.exists():
        idents = json.loads(ids_file.read_text())
    else:
        tokens = args.tokens.read_text().split()
        sem = asyncio.Semaphore(32)

        async def one(n: int) -> dict[str, str]:
            async with sem:
                return await enroll_one(args.enroll, tokens[n], ca_pem, n)
        idents = await asyncio.gather(*(one(n) for n in range(args.count)))
        args.dir.mkdir(parents=True, exist_ok=True)
        ids_file.write_text(json.dumps(idents))
    agents = [SimAgent(i["id"], i["key"].encode(), i["cert"].encode(), ca_pem, args.heartbeat)
              for i in idents]
    print(f"enrolled {len(agents)}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "connect":
            endpoints = line[1].split(",")
            for n, agent in enumerate(agents):
                await agent.connect(endpoints[n % len(endpoints)])
            print(f"connecting {len(agents)}", flush=True)
        elif line[0] == "events":
            start = time.perf_counter()
            sent = await asyncio.gather(*(a.events(int(line[1]), int(line[2]))
                                          for a in agents))
            errors = "/".join(str(sum(a.errors[k] for a in agents))
                              for k in ("policy", "heartbeat", "events"))
            (args.dir / "errors.json").write_text(json.dumps(
                {"codes": CODES, "first_seen": DETAILS}, indent=1))
            print(f"events-done {sum(sent)} {time.perf_counter() - start:.3f} {errors}",
                  flush=True)
        elif line[0] == "disconnect":
            await asyncio.gather(*(a.disconnect() for a in agents))
            print("disconnected", flush=True)
        elif line[0] == "quit":
            break


if __name__ == "__main__":
    asyncio.run(main())
