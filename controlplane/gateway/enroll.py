"""Enrolment through a gateway, so agents behind it never reach the server directly.

The gateway's enrolment port (``--enroll-port``, server-side TLS with the gateway's own
certificate, which the server's CA issued: an agent that pins the CA trusts it) serves
``Enrollment.Enroll`` by passing each request to the server's enrolment port (TLS,
verified against the same CA) and its answer back unchanged: the server spends the
token, signs the agent's CSR and records the agent; the gateway keeps nothing. A refusal
keeps its status and message; a server the gateway cannot reach is UNAVAILABLE, so the
agent retries (on another gateway of its list). The token and the CSR pass through the
gateway in clear inside its TLS: a gateway is trusted like the server (its certificate
is one the server issued, docs/controlplane.md "Gateways").

Before passing a request on, the gateway applies its own rate limits per source address
and per token (``EnrollLimits``; the server sees only the gateway's address, so the
per-address limit that matters for agents behind a gateway is the gateway's): a request
over either is refused with RESOURCE_EXHAUSTED and never reaches the server.
"""

from __future__ import annotations

import logging

import grpc

from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.controlplane.server.limits import EnrollLimits

log = logging.getLogger(__name__)

TIMEOUT = 30.0


class EnrollmentProxy(moray_pb2_grpc.EnrollmentServicer):  # type: ignore[misc]
    def __init__(self, server: str, ca_pem: bytes, server_name: str | None = None,
                 limits: EnrollLimits | None = None) -> None:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.server = server
        self.limits = limits or EnrollLimits()
        self.channel = grpc.aio.secure_channel(
            server, grpc.ssl_channel_credentials(root_certificates=ca_pem), options=options)
        self.stub = moray_pb2_grpc.EnrollmentStub(self.channel)

    async def Enroll(self, request: moray_pb2.EnrollRequest,
                     context: grpc.aio.ServicerContext) -> moray_pb2.EnrollResponse:
        refused = self.limits.check(context.peer(), request.token)
        if refused is not None:
            log.warning("enrolment rate-limited at the gateway", extra={
                "peer": context.peer(), "hostname": request.hostname[:253],
                "scope": refused.scope})
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused.message())
            raise AssertionError("unreachable")
        try:
            answer: moray_pb2.EnrollResponse = await self.stub.Enroll(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as err:
            log.warning("enrolment through the gateway failed", extra={
                "hostname": request.hostname[:253], "server": self.server,
                "code": err.code().name, "details": err.details()})
            code = err.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                code = grpc.StatusCode.UNAVAILABLE
            await context.abort(code, err.details() or code.name)
            raise AssertionError("unreachable") from err
        log.info("agent enrolled through the gateway", extra={
            "agent_id": answer.agent_id, "hostname": request.hostname[:253]})
        return answer

    async def close(self) -> None:
        await self.channel.close()
