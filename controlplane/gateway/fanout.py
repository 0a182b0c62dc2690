"""What a gateway knows about its agents and their tenants' policies, and the per-agent
policy diff that fans one signed policy set out to many agent streams.

State owned here (in memory, one gateway process; rebuilt from the server after a restart
or a new link):
- ``agents``: agent id -> ``AgentState``: the certificate it connected with, the server's
  answer to its attach (tenant and labels, or a refusal), its open streams. Added when its
  first stream opens (the attach goes upstream), removed when its last stream ends (a
  detach goes upstream).
- ``tenants``: tenant -> {policy name -> ``GatewayPolicy``}: the tenant's current policies as
  the server last sent them (whole set per message). A new set wakes the policy streams of
  that tenant's agents.
- ``removals``: (agent id, policy, version) -> future of the server's signed removal.
Changes: ``on_policies`` / ``on_agent`` / ``on_removal`` (from the upstream link);
``link_lost`` (pending removals fail; attaches are sent again by the next link); a refusal
(unknown, other certificate, revoked) ends every stream of that agent on this gateway.

``PolicySession.push`` is the server's per-agent diff (server/agentapi.py ``_PolicySession``)
run at the gateway: the signed bytes go to the agent unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from moray.api.proto import moray_pb2

log = logging.getLogger(__name__)

REMOVAL_TIMEOUT = 10.0
Send = Callable[[moray_pb2.GatewayUp], None]


@dataclass(eq=False)
class AgentState:
    agent_id: str
    cert_sha256: str
    info: moray_pb2.GatewayAgent | None = None      # the server's answer to the attach
    known: asyncio.Event = field(default_factory=asyncio.Event)     # info arrived
    refused: asyncio.Event = field(default_factory=asyncio.Event)   # end every stream
    streams: int = 0
    wakes: set[asyncio.Event] = field(default_factory=set)          # its policy sessions

    def wake(self) -> None:
        for event in self.wakes:
            event.set()


class Fanout:
    def __init__(self, send: Send) -> None:
        self.send = send
        self.agents: dict[str, AgentState] = {}
        self.tenants: dict[str, dict[str, moray_pb2.GatewayPolicy]] = {}
        self.removals: dict[tuple[str, str, int], asyncio.Future[moray_pb2.GatewayRemoval]] = {}

    # -- agents (downstream) -------------------------------------------------------------

    def open(self, agent_id: str, cert_sha256: str) -> AgentState:
        """A stream of this agent opened (its certificate verified by TLS against the CA)."""
        state = self.agents.get(agent_id)
        if state is not None and state.cert_sha256 != cert_sha256:
            # a new certificate for the same id (re-enrolled): ask the server again
            state.refused.set()
            state.wake()
            state = None
        if state is None:
            state = self.agents[agent_id] = AgentState(agent_id, cert_sha256)
            self.send(self.attach_message(state))
        state.streams += 1
        return state

    def close(self, state: AgentState) -> None:
        state.streams -= 1
        if state.streams <= 0 and self.agents.get(state.agent_id) is state:
            del self.agents[state.agent_id]
            self.send(moray_pb2.GatewayUp(detach=state.agent_id))

    @staticmethod
    def attach_message(state: AgentState) -> moray_pb2.GatewayUp:
        return moray_pb2.GatewayUp(attach=moray_pb2.GatewayAttach(
            agent_id=state.agent_id, cert_sha256=state.cert_sha256))

    # -- from the server (upstream) ------------------------------------------------------

    def on_policies(self, msg: moray_pb2.GatewayPolicySet) -> None:
        self.tenants[msg.tenant] = {p.name: p for p in msg.policies}
        for state in self.agents.values():
            if state.info is not None and state.info.tenant == msg.tenant:
                state.wake()

    def on_agent(self, msg: moray_pb2.GatewayAgent) -> None:
        state = self.agents.get(msg.agent_id)
        if state is None:
            return
        state.info = msg
        state.known.set()
        if msg.refused:
            log.warning("server refused an agent: ending its streams", extra={
                "agent_id": msg.agent_id, "reason": msg.error})
            state.refused.set()
            del self.agents[msg.agent_id]
        state.wake()

    def on_removal(self, msg: moray_pb2.GatewayRemoval) -> None:
        for key in [k for k in self.removals if k[0] == msg.agent_id and k[1] == msg.name]:
            future = self.removals.pop(key)
            if not future.done():
                future.set_result(msg)

    def link_lost(self) -> None:
        for future in self.removals.values():
            if not future.done():
                future.set_exception(ConnectionError("server link lost"))
        self.removals.clear()

    async def removal(self, agent_id: str, name: str, version: int
                      ) -> moray_pb2.SignedPolicy | None:
        """The server's removal of ``name`` signed for ``agent_id`` (None: refused, or no
        answer in time: the session tries again on its next wake)."""
        key = (agent_id, name, version)
        future = self.removals.get(key)
        if future is None:
            future = self.removals[key] = asyncio.get_running_loop().create_future()
            self.send(moray_pb2.GatewayUp(removal=moray_pb2.GatewayRemoval(
                agent_id=agent_id, name=name, version=version)))
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), REMOVAL_TIMEOUT)
        except (TimeoutError, ConnectionError):
            self.removals.pop(key, None)
            return None
        if answer.error:
            log.warning("server refused a removal", extra={
                "agent_id": agent_id, "policy": name, "reason": answer.error})
            return None
        return answer.policy


def selected(entry: moray_pb2.GatewayPolicy, labels: dict[str, str]) -> bool:
    return not entry.removed and all(labels.get(k) == v for k, v in entry.selector.items())


class PolicySession:
    """One agent policy stream at the gateway: what the agent enforces (``known``: its
    hello, then what was sent), acks passed upstream as they come."""

    def __init__(self, fanout: Fanout, state: AgentState, context: grpc.aio.ServicerContext,
                 known: dict[str, int], marker: bool = False) -> None:
        self.fanout, self.state, self.context = fanout, state, context
        self.known = known
        self.wake = asyncio.Event()
        # the hello asked for the end-of-initial-sync marker (moray micro): sent after the
        # first push made from the server's answer to the attach and the tenant's set,
        # as the server sends it after its first push (server/agentapi.py)
        self.marker = marker

    async def push(self) -> None:
        info = self.state.info
        if info is None or info.refused:
            return
        policies = self.fanout.tenants.get(info.tenant)
        if policies is None:
            return
        labels = dict(info.labels)
        for name, entry in list(policies.items()):
            if selected(entry, labels):
                if self.known.get(name) != entry.version:
                    self.known[name] = entry.version
                    await self.context.write(moray_pb2.PolicyStreamResponse(policy=entry.policy))
            elif name in self.known:
                await self._remove(name, max(entry.version, self.known[name]))
        for name in [n for n in self.known if n not in policies]:
            await self._remove(name, self.known[name])
        if self.marker:
            self.marker = False
            await self.context.write(moray_pb2.PolicyStreamResponse(synced=True))

    async def _remove(self, name: str, version: int) -> None:
        signed = await self.fanout.removal(self.state.agent_id, name, version)
        if signed is not None:
            self.known.pop(name, None)
            await self.context.write(moray_pb2.PolicyStreamResponse(policy=signed))

    async def read_acks(self) -> None:
        while True:
            msg = await self.context.read()
            if msg is grpc.aio.EOF:
                return
            if msg.HasField("ack"):
                self.fanout.send(moray_pb2.GatewayUp(ack=moray_pb2.GatewayPolicyAck(
                    agent_id=self.state.agent_id, ack=msg.ack)))
