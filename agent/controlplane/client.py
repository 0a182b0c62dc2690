"""The agent's connection to the control plane.

    client = ControlPlaneClient("server:7443", "/var/lib/moray-agent", on_policy,
                                token="moray-enroll-...", ca_pem=Path("ca.pem").read_bytes())
    # or, instead of ca_pem, the fingerprint `moray agents token --json` prints:
    #   ca_sha256="ab12...", ca_url="http://server:7080/ca.pem" (the default)
    client.start()          # re-applies the last verified policies, then connects
    client.send(event)      # durable in the spool when it returns True
    client.stop()

``server`` may be a comma-separated list of endpoints (servers or gateways, which speak
the same protocol): a policy or event stream that breaks (not a refusal) moves the
client to the next one. Enrolment and the CA's URL default to the first endpoint's host;
behind gateways give ``enroll_server`` (the server's enrolment port).

Threads (all started by ``start``, all ended by ``stop``):
- ``cp-policy``: enrols if there is no identity yet, then holds the policy stream open:
  sends a hello with the versions held, verifies each pushed policy (signature, then
  version floor), calls ``on_policy``, records it on disk, acknowledges it. Reconnects
  with capped backoff; a refusal (unknown or revoked certificate) is logged as an error.
  With ``sync_marker`` the hello asks the server to say when the policies selecting the
  client at the stream's opening were all sent; ``synced`` is set then.
- ``cp-events``: sends spooled events in order, one batch in flight, and commits the
  spool only after the server's ack (so a cut connection resends, never skips).

An event is encoded once per format: its JSON once (by the pipeline's router, the line
the JSON sink wrote; by ``send_many`` for events handed over as dicts), with ``"id"``
added on the spool writer's thread; msgpack once, a spool record carrying those bytes
(agent/controlplane/spool.py); the sender puts them in ``payload_json`` as they are.
- ``cp-heartbeat``: agent status, looked at every ``heartbeat_interval`` seconds and sent
  when it changed, else every ``HEARTBEAT_EVERY`` seconds (the server's "last seen"): an
  idle fleet's unchanged heartbeats were most of an idle server's work, and whether the
  agent is connected is its policy stream, not its heartbeats.

``on_policy`` runs on the policy thread; it must apply the policy (or the removal, when
``policy.removed``) through the enforcement pipeline and return an ``ApplyResult``. It is
also called at ``start`` for each cached policy, before any connection.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import orjson

from moray import __version__
from moray.agent.controlplane.identity import (
    EnrollmentError,
    Identity,
    enroll,
    fetch_ca,
    load_identity,
)
from moray.agent.controlplane.policies import (
    ApplyResult,
    PolicyCache,
    PolicyRejected,
    PolicyVerifier,
    VerifiedPolicy,
)
from moray.agent.controlplane.spool import EventSpool, SpoolWriter
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.api.wire import BATCH_BYTES, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

OnPolicy = Callable[[VerifiedPolicy], ApplyResult]
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
HEARTBEAT_EVERY = 60.0    # an unchanged status is sent at most this often
# every agent channel (simulated agents in tests and benchmarks use the same)
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
                    ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2_000)]


def enroll_target(server: str, port: int = 7444) -> str:
    host = server.rsplit(":", 1)[0] if ":" in server else server
    return f"{host}:{port}"


class ControlPlaneClient:
    def __init__(self, server: str, data_dir: str | os.PathLike[str], on_policy: OnPolicy, *,
                 token: str | None = None, ca_pem: bytes | None = None,
                 ca_sha256: str | None = None, ca_url: str | None = None,
                 enroll_server: str | None = None, labels: Mapping[str, str] | None = None,
                 hostname: str | None = None, server_name: str | None = None,
                 status: Callable[[], Mapping[str, Any]] | None = None,
                 spool_max_bytes: int = 256 << 20, batch_size: int = 500,
                 heartbeat_interval: float = 10.0, max_backoff: float = 2.0,
                 kind: str = "agent", sync_marker: bool = False) -> None:
        # "gw1:7443,gw2:7443": endpoints tried in turn (a stream that fails moves every
        # call to the next one); the first one also names the enrolment and CA defaults
        self.servers = [s.strip() for s in server.split(",") if s.strip()] or [server]
        self.server = self.servers[0]
        self._endpoint = 0
        self.data_dir = Path(data_dir)
        self.on_policy = on_policy
        self.token, self.ca_pem = token, ca_pem
        self.ca_sha256 = ca_sha256
        # the CA comes from the server that enrols (gateways serve neither)
        ca_host = (enroll_server or self.server).rsplit(":", 1)[0]
        self.ca_url = ca_url or f"http://{ca_host}:7080/ca.pem"
        self.enroll_server = enroll_server or enroll_target(self.server)
        self.labels = dict(labels or {})
        self.kind = kind                    # EnrollRequest.kind: agent, micro ...
        # ask for the end-of-initial-sync marker: ``synced`` is set once every policy
        # selecting this client when a stream opened was handled (moray micro waits on it)
        self.sync_marker = sync_marker
        self.synced = threading.Event()
        self.hostname, self.server_name = hostname, server_name
        self.status_provider = status
        self.batch_size = batch_size
        self.heartbeat_interval = heartbeat_interval
        self.max_backoff = max_backoff
        self.spool = EventSpool(self.data_dir / "spool", max_bytes=spool_max_bytes)
        # submit(): records built, encoded and fsync'd off the caller's thread
        self.writer: SpoolWriter[tuple[list[Mapping[str, Any]], bytearray]] = SpoolWriter(
            self.spool, self._line_records)
        self.cache = PolicyCache(self.data_dir / "policies")
        self.identity: Identity | None = load_identity(self.data_dir / "identity")
        self.verifier: PolicyVerifier | None = None
        self.rejected = 0                   # policies refused (signature or replay)
        self.refused: str | None = None     # set while the server refuses this agent
        self.tiers: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._calls: set[grpc.Call] = set()
        self._lock = threading.Lock()
        self._policy_lock = threading.Lock()   # one policy verified + applied at a time
        self._threads: list[threading.Thread] = []
        self._channel: grpc.Channel | None = None
        self._batch_id = 0

    # -- public API ----------------------------------------------------------------------

    def start(self) -> None:
        """Apply the cached verified policies, then connect in the background."""
        if self.identity is not None:
            self._use_identity(self.identity)
            for policy in self.cache.load(self._verifier()):
                result = self._apply(policy)
                log.info("re-applied cached policy", extra={
                    "policy": policy.name, "version": policy.version, "ok": result.ok})
        for name, target in (("cp-policy", self._policy_loop), ("cp-events", self._event_loop),
                             ("cp-heartbeat", self._heartbeat_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            for call in list(self._calls):
                call.cancel()
        for thread in self._threads:
            thread.join(timeout)
        if self._channel is not None:
            self._channel.close()
        self.writer.close()
        self.spool.close()

    def send(self, event: Mapping[str, Any]) -> bool:
        """Spool one event (fsync'd); False when the spool is full (counted, logged)."""
        return self.send_many([event]) == 1

    def send_many(self, events: list[Mapping[str, Any]]) -> int:
        """Spool events with one fsync; returns how many were accepted. Each event gets an
        ``id`` (kept when it has one): the server stores each id once."""
        return self.spool.append(self._records(events))

    def submit(self, events: list[Mapping[str, Any]], lines: bytearray) -> None:
        """Spool events as send_many does, on the spool writer's thread (the agent's
        pipeline: it goes on while the batch is written and fsync'd). ``lines`` is the
        events already encoded, their JSON lines as the JSON sink got them (line i is
        ``events[i]``'s; agent/pipeline/route.py), each sent as its event's payload with
        the id added. A full spool's refusals are counted by the spool (heartbeat
        ``spool_full``)."""
        if events:
            self.writer.submit((events, lines))

    @staticmethod
    def _line_records(batch: tuple[list[Mapping[str, Any]], bytearray]
                      ) -> list[dict[str, Any]]:
        events, lines = batch
        return ControlPlaneClient._records(events, bytes(lines))

    @staticmethod
    def _records(events: list[Mapping[str, Any]], lines: bytes | None = None
                 ) -> list[dict[str, Any]]:
        """The spool's records (see agent/controlplane/spool.py) of ``events``, encoded
        from the dicts or, given ``lines`` (their JSON lines), from those. ``json`` is what
        the server stores, the event's JSON with its ``id`` (the event's own when it has
        one, else a new one, placed last as ``{**event, "id": id}`` places it)."""
        now_ms = int(time.time() * 1000)
        split = lines.split(b"\n") if lines is not None else []
        if len(split) != len(events) + 1:   # no lines, or not one per event: from dicts
            if lines is not None:
                log.error("event spool: %d JSON lines for %d events; encoding the events",
                          len(split) - 1, len(events))
            split = [b""] * len(events)
        records = []
        for event, line in zip(events, split, strict=False):
            given = event.get("id")
            event_id = str(given or uuid.uuid4().hex)
            if "id" not in event and len(line) > 2 and line.endswith(b"}"):
                payload = b"".join((memoryview(line)[:-1], b',"id":', orjson.dumps(event_id),
                                    b"}"))
            elif type(given) is str and given and line:
                payload = line              # it carries its id already
            else:                           # handed over as a dict (send_many), or odd
                payload = orjson.dumps({**event, "id": event_id}, default=str,
                                       option=orjson.OPT_NON_STR_KEYS)
            records.append({"id": event_id, "t": now_ms, "type": str(event.get("type", "")),
                            "json": payload})
        return records

    def wait_connected(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- identity and channel ------------------------------------------------------------

    def _use_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.verifier = PolicyVerifier(identity.policy_public_key, identity.agent_id)
        self._channel = self._connect(identity)

    def _connect(self, identity: Identity) -> grpc.Channel:
        # the image-verdict list grows with the images scanned (~300 bytes each): accept
        # what servers and gateways accept, not gRPC's default 4 MiB
        options: list[tuple[str, Any]] = [*CHANNEL_OPTIONS,
                                          ("grpc.max_receive_message_length",
                                           MAX_MESSAGE_BYTES)]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(self.servers[self._endpoint],
                                   identity.channel_credentials(), options=options)

    def _failover(self, failed: grpc.Channel | None) -> None:
        """After a stream on ``failed`` broke: move to the next endpoint (once, whichever
        of the three loops saw it first); the others' calls on the old channel end and
        reconnect to the new one."""
        if (failed is None or len(self.servers) < 2 or self.identity is None
                or self._stop.is_set()):
            return
        old: grpc.Channel = failed
        with self._lock:
            if id(self._channel) != id(old):     # another loop moved on already
                return
            self._endpoint = (self._endpoint + 1) % len(self.servers)
            self._channel = self._connect(self.identity)
        log.info("control plane: trying the next endpoint",
                 extra={"endpoint": self.servers[self._endpoint]})
        old.close()

    def _verifier(self) -> PolicyVerifier:
        assert self.verifier is not None
        return self.verifier

    def _ensure_identity(self) -> bool:
        if self.identity is not None:
            return True
        if not self.token or not (self.ca_pem or self.ca_sha256):
            log.error("no identity and no enrolment token/CA: cannot connect",
                      extra={"data_dir": str(self.data_dir)})
            self._stop.wait(self.max_backoff)
            return False
        try:
            ca_pem = self.ca_pem
            if ca_pem is None and self.ca_sha256:
                ca_pem = self.ca_pem = fetch_ca(self.ca_url, self.ca_sha256)
            assert ca_pem is not None
            identity = enroll(self.enroll_server, self.token, ca_pem,
                              self.data_dir / "identity", labels=self.labels,
                              hostname=self.hostname, server_name=self.server_name,
                              kind=self.kind)
        except EnrollmentError as err:
            log.warning("enrolment failed; retrying", extra={"error": str(err)})
            self._stop.wait(self.max_backoff)
            return False
        self._use_identity(identity)
        return True

    def _wait_identity(self) -> bool:
        while not self._stop.is_set():
            if self._channel is not None:
                return True
            self._stop.wait(0.1)
        return False

    def _backoff(self, attempt: int) -> None:
        self._stop.wait(min(self.max_backoff, 0.1 * (2 ** min(attempt, 6))))

    def _note_error(self, where: str, err: grpc.RpcError) -> None:
        code = err.code() if hasattr(err, "code") else None
        if code in _REFUSED:
            if self.refused is None:
                log.error("control plane refused this agent", extra={
                    "where": where, "code": code.name if code else "", "details": err.details()})
            self.refused = f"{code.name if code else ''}: {err.details()}"
        elif code != grpc.StatusCode.CANCELLED or not self._stop.is_set():
            log.info("control plane stream ended", extra={
                "where": where, "code": code.name if code else str(err)})

    def _track(self, call: Any) -> None:
        with self._lock:
            self._calls.add(call)
        if self._stop.is_set():
            call.cancel()

    def _untrack(self, call: Any) -> None:
        with self._lock:
            self._calls.discard(call)

    # -- policies ------------------------------------------------------------------------

    def _apply(self, policy: VerifiedPolicy) -> ApplyResult:
        try:
            result = self.on_policy(policy)
        except Exception as err:   # the pipeline's failure is reported, not fatal here
            log.exception("on_policy raised", extra={"policy": policy.name})
            return ApplyResult(ok=False, error=f"{type(err).__name__}: {err}")
        if result.ok:
            self.tiers[policy.name] = dict(result.tiers)
        return result

    def _report_rejection(self, err: PolicyRejected) -> None:
        self.rejected += 1
        status = moray_pb2.ApplyStatus.Name(err.status)
        log.error("rejected a policy from the control plane", extra={
            "policy": err.name, "version": err.version, "status": status, "reason": err.reason})
        self.send({"type": "policy_rejected", "policy": err.name, "version": err.version,
                   "status": status, "reason": err.reason})

    def handle_policy(self, signed: moray_pb2.SignedPolicy) -> moray_pb2.PolicyAck:
        """Verify, apply and record one pushed policy; returns the acknowledgement."""
        with self._policy_lock:
            return self._handle_policy(signed)

    def _handle_policy(self, signed: moray_pb2.SignedPolicy) -> moray_pb2.PolicyAck:
        try:
            policy = self._verifier().verify(signed.SerializeToString())
            fresh = self.cache.check(policy)
        except PolicyRejected as err:
            self._report_rejection(err)
            return moray_pb2.PolicyAck(name=err.name, version=err.version, status=err.status,
                                       error=err.reason)
        done = moray_pb2.REMOVED if policy.removed else moray_pb2.APPLIED
        if fresh:
            result = self._apply(policy)
            if not result.ok:
                log.error("enforcement pipeline refused a verified policy", extra={
                    "policy": policy.name, "version": policy.version, "error": result.error})
                return moray_pb2.PolicyAck(name=policy.name, version=policy.version,
                                           status=moray_pb2.FAILED, error=result.error)
            self.cache.accept(policy)
            log.info("policy applied", extra={"policy": policy.name, "version": policy.version,
                                              "removed": policy.removed})
        tiers = {} if policy.removed else self.tiers.get(policy.name, {})
        return moray_pb2.PolicyAck(name=policy.name, version=policy.version, status=done,
                                   tiers=[moray_pb2.RuleTier(rule=r, tier=t)
                                          for r, t in sorted(tiers.items())])

    def _policy_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if not self._ensure_identity():
                continue
            channel = self._channel
            stub = moray_pb2_grpc.AgentServiceStub(channel)
            requests: queue.Queue[moray_pb2.PolicyStreamRequest | None] = queue.Queue()
            requests.put(moray_pb2.PolicyStreamRequest(
                hello=moray_pb2.PolicyHello(versions=self.cache.versions(),
                                            sync_marker=self.sync_marker)))
            call = stub.PolicyStream(iter(requests.get, None))
            self._track(call)
            try:
                for response in call:
                    attempt = 0
                    self.refused = None
                    if response.synced and not response.HasField("policy"):
                        self.synced.set()       # a marker, not acknowledged
                        continue
                    requests.put(moray_pb2.PolicyStreamRequest(
                        ack=self.handle_policy(response.policy)))
                    self._ready.set()
            except grpc.RpcError as err:
                self._note_error("policy", err)
                if getattr(err, "code", lambda: None)() not in _REFUSED:
                    self._failover(channel)
            finally:
                requests.put(None)
                self._untrack(call)
            attempt += 1
            self._backoff(attempt)

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def _to_proto(record: Mapping[str, Any]) -> moray_pb2.Event:
        payload = record.get("json")
        if payload is None:   # spooled by an agent before 2026-12: {"event": <dict>}
            payload = json.dumps(record["event"], default=str, separators=(",", ":")).encode()
        return moray_pb2.Event(id=record["id"], time_ms=int(record.get("t", 0)),
                               type=record.get("type", ""), payload_json=payload)

    def _event_loop(self) -> None:
        if not self._wait_identity():
            return
        attempt = 0
        while not self._stop.is_set():
            if not self.spool.wait(0.5):
                continue
            channel = self._channel
            stub = moray_pb2_grpc.AgentServiceStub(channel)
            requests: queue.Queue[moray_pb2.EventBatch | None] = queue.Queue()
            call = stub.Events(iter(requests.get, None))
            self._track(call)
            acks: Iterator[moray_pb2.EventAck] = iter(call)
            try:
                while not self._stop.is_set():
                    records, end = self.spool.read(self.batch_size, max_bytes=BATCH_BYTES)
                    if not records:
                        self.spool.wait(0.5)
                        continue
                    self._batch_id += 1
                    requests.put(moray_pb2.EventBatch(
                        batch_id=self._batch_id, events=[self._to_proto(r) for r in records]))
                    ack = next(acks)
                    if ack.batch_id != self._batch_id:
                        log.error("event ack for the wrong batch; resending", extra={
                            "sent": self._batch_id, "acked": ack.batch_id})
                        break
                    self.spool.commit(end, len(records))
                    attempt = 0
            except grpc.RpcError as err:
                self._note_error("events", err)
                if getattr(err, "code", lambda: None)() not in _REFUSED:
                    self._failover(channel)
            except StopIteration:
                log.info("event stream closed by the server")
            finally:
                requests.put(None)
                call.cancel()
                self._untrack(call)
            attempt += 1
            self._backoff(attempt)

    # -- heartbeats ----------------------------------------------------------------------

    def status(self) -> moray_pb2.AgentStatus:
        extra = dict(self.status_provider() if self.status_provider else {})
        spool = self.spool.stats()
        drops = {"spool_full": spool.dropped, "spool_torn": spool.torn,
                 "policy_rejected": self.rejected,
                 **{k: int(v) for k, v in dict(extra.get("drops", {})).items()}}
        return moray_pb2.AgentStatus(
            kernel=str(extra.get("kernel") or os.uname().release),
            agent_version=str(extra.get("agent_version") or __version__),
            features={k: bool(v) for k, v in dict(extra.get("features", {})).items()},
            tiers={k: str(v) for k, v in dict(extra.get("tiers", {})).items()},
            policy_versions=self.cache.versions(), drops=drops,
            spool_bytes=spool.bytes, spool_records=spool.records)

    def _heartbeat_loop(self) -> None:
        if not self._wait_identity():
            return
        sent: tuple[bytes, float] | None = None     # the status last sent, and when
        while not self._stop.is_set():
            status = self.status()
            raw = status.SerializeToString(deterministic=True)
            now = time.monotonic()
            if sent is None or sent[0] != raw or now - sent[1] >= HEARTBEAT_EVERY:
                stub = moray_pb2_grpc.AgentServiceStub(self._channel)
                try:
                    stub.Heartbeat(moray_pb2.HeartbeatRequest(status=status),
                                   timeout=max(1.0, self.heartbeat_interval))
                    sent = (raw, now)
                except grpc.RpcError as err:
                    self._note_error("heartbeat", err)
            self._stop.wait(self.heartbeat_interval)
