"""``moray gateway run`` (= ``moray-gateway run``): a stateless tier between agents and the
server; ``moray gateway cert``: its certificate, issued on the server's host.

    # on the server's host (it holds the CA): a key and certificate for gateway gw1
    moray gateway cert --name gw1 --host gw1.example.com --out /etc/moray-gateway/pki
    # on the gateway's host
    moray gateway run --server server.example.com:7443 --pki /etc/moray-gateway/pki
    # agents: --server gw1.example.com:7443,gw2.example.com:7443 (failover in order)

Start-up steps: load_pki, open_spool, build_outputs, link_upstream, start_forwarder,
serve (AgentService for agents on ``--port``, mutual TLS against the server's CA). State
on disk: the event spool only (``<data dir>/spool``); everything else comes from the
server on every link. Design and trust: docs/controlplane.md "Gateways".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.registry import CollectorRegistry

from moray import daemonconfig, sdnotify
from moray.agent.controlplane.client import enroll_target
from moray.agent.controlplane.spool import EventSpool
from moray.agent.output import siem
from moray.agent.output.health import Health, HealthServer
from moray.api.proto import moray_pb2_grpc
from moray.api.wire import SERVER_OPTIONS
from moray.controlplane.gateway import metrics as gateway_metrics
from moray.controlplane.gateway.downstream import GatewayAgentService
from moray.controlplane.gateway.enroll import EnrollmentProxy
from moray.controlplane.gateway.forwarder import Forwarder
from moray.controlplane.gateway.upstream import Upstream, client_credentials
from moray.controlplane.server.limits import (
    ENROLL_PER_SOURCE,
    ENROLL_PER_TOKEN,
    EnrollLimits,
    rate_arg,
)
from moray.daemon import run_until_stopped
from moray.errors import ConfigError

log = logging.getLogger(__name__)

PORT = 7443
ENROLL_PORT = 7444
METRICS_PORT = 9465


@dataclass
class GatewayConfig:
    server: str
    pki_dir: Path
    data_dir: Path
    host: str = "0.0.0.0"
    port: int = PORT
    server_name: str | None = None
    spool_max_bytes: int = 1 << 30
    syslog: tuple[str, ...] = ()
    cef: tuple[str, ...] = ()
    webhook: tuple[str, ...] = ()
    siem_types: frozenset[str] = field(default_factory=lambda: frozenset({"alert"}))
    enroll_port: int = ENROLL_PORT          # 0: no enrolment here
    server_enroll: str | None = None        # the server's enrolment port (default HOST:7444)
    metrics_port: int = METRICS_PORT        # 0: no /metrics, /healthz, /readyz
    metrics_host: str = "127.0.0.1"
    enroll_per_source: str = ENROLL_PER_SOURCE   # RATE[/BURST] per second; "0": no limit
    enroll_per_token: str = ENROLL_PER_TOKEN


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    # step: load_pki
    try:
        key, cert = (config.pki_dir / "gateway.key").read_bytes(), \
            (config.pki_dir / "gateway.pem").read_bytes()
        ca = (config.pki_dir / "ca.pem").read_bytes()
        credentials = client_credentials(config.pki_dir)
    except OSError as err:
        raise ConfigError(f"{config.pki_dir}: gateway.key, gateway.pem and ca.pem are needed "
                          f"(moray gateway cert): {err}") from err
    # step: open_spool
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    spool = EventSpool(config.data_dir / "spool", max_bytes=config.spool_max_bytes)
    # step: build_outputs
    outputs = siem.build(config.syslog, config.cef, config.webhook)
    # step: link_upstream
    upstream = Upstream(config.server, credentials, config.server_name)
    # step: start_forwarder
    forwarder = Forwarder(upstream.channel, spool, outputs, config.siem_types)
    tasks = [asyncio.create_task(upstream.run(), name="upstream"),
             asyncio.create_task(forwarder.run(), name="forwarder")]
    # step: serve
    health = Health()
    http = _http(config, health, gateway_metrics.registry(upstream, forwarder, spool))
    server = grpc.aio.server(options=SERVER_OPTIONS)
    moray_pb2_grpc.add_AgentServiceServicer_to_server(GatewayAgentService(upstream, forwarder),
                                                      server)
    port, enroll = _listen(config, server, (key, cert), ca)
    await server.start()
    log.info("moray-gateway ready", extra={"port": port, "enroll_port": config.enroll_port,
                                           "server": config.server,
                                           "spooled": spool.stats().records})
    health.ready()
    sdnotify.ready(f"serving agents on {config.host}:{port}")  # every port is bound
    tasks.append(asyncio.create_task(_beat(health), name="health"))
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                log.error("gateway task failed", exc_info=task.exception(),
                          extra={"task": task.get_name()})
    finally:
        health.stopping()
        sdnotify.stopping()
        await server.stop(grace=2)
        if enroll is not None:
            await enroll.close()
        if http is not None:
            http.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await forwarder.close()
        await upstream.close()
        spool.close()
        for out in outputs:
            out.close()
        log.info("moray-gateway stopped")


def _http(config: GatewayConfig, health: Health, registry: CollectorRegistry
          ) -> HealthServer | None:
    if not config.metrics_port:
        return None
    try:
        return HealthServer(health, config.metrics_port, config.metrics_host, registry)
    except OSError as err:
        raise SystemExit(f"moray-gateway: cannot serve metrics on {config.metrics_host}:"
                         f"{config.metrics_port}: {err.strerror}") from err


def _listen(config: GatewayConfig, server: grpc.aio.Server, pair: tuple[bytes, bytes],
            ca: bytes) -> tuple[int, EnrollmentProxy | None]:
    """The agent port (mutual TLS against the server's CA) and the enrolment port (TLS,
    no client certificate: the agent has none yet; the agent port's service refuses
    calls without one, as on the server)."""
    port = server.add_secure_port(f"{config.host}:{config.port}", grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=True))
    if port == 0:
        raise SystemExit(f"moray-gateway: cannot listen on {config.host}:{config.port}")
    if not config.enroll_port:
        return port, None
    enroll = EnrollmentProxy(config.server_enroll or enroll_target(config.server), ca,
                             config.server_name,
                             EnrollLimits(config.enroll_per_source, config.enroll_per_token))
    moray_pb2_grpc.add_EnrollmentServicer_to_server(enroll, server)
    if server.add_secure_port(f"{config.host}:{config.enroll_port}",
                              grpc.ssl_server_credentials([pair])) == 0:
        raise SystemExit(f"moray-gateway: cannot listen on {config.host}:{config.enroll_port}")
    return port, enroll


async def _beat(health: Health) -> None:
    """/healthz: the loop turns (it fails when no beat came for 30 s)."""
    while True:
        health.beat()
        await asyncio.sleep(1.0)


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``gateway`` parser (moray.cli)."""
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve agents and link to the server (= moray-gateway run)",
                         description=__doc__.split("\n\n")[0] if __doc__ else None)
    run.set_defaults(handler=run_command, daemon=True)
    daemonconfig.add_option(run)
    run.add_argument("--server", default=None, metavar="HOST:PORT",
                     help="(required, here or in --config) the server's agent port "
                          "(mutual TLS), e.g. server:7443")
    run.add_argument("--server-name", default=None,
                     help="name to verify the server's certificate against (default: HOST)")
    run.add_argument("--pki", type=Path, default=None,
                     help="directory with gateway.key, gateway.pem and ca.pem "
                          "(default <data dir>/pki)")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="state directory: the event spool (default $MORAY_GATEWAY_DIR or "
                          "/var/lib/moray-gateway)")
    run.add_argument("--host", default="0.0.0.0", help="address agents connect to")
    run.add_argument("--port", type=int, default=PORT, help=f"agent port (default {PORT})")
    run.add_argument("--enroll-port", type=int, default=ENROLL_PORT,
                     help=f"enrolment port agents enrol through, passed to the server's "
                          f"(default {ENROLL_PORT}; 0: none)")
    run.add_argument("--server-enroll", default=None, metavar="HOST:PORT",
                     help="the server's enrolment port (default: --server's host, port 7444)")
    run.add_argument("--enroll-rate-per-source", default=ENROLL_PER_SOURCE, type=rate_arg,
                     metavar="RATE[/BURST]",
                     help=f"enrolments a second from one address, and at once (default "
                          f"{ENROLL_PER_SOURCE}; 0: no limit)")
    run.add_argument("--enroll-rate-per-token", default=ENROLL_PER_TOKEN, type=rate_arg,
                     metavar="RATE[/BURST]",
                     help=f"enrolments a second with one token (default {ENROLL_PER_TOKEN}; "
                          "0: no limit)")
    run.add_argument("--metrics-port", type=int, default=METRICS_PORT,
                     help=f"/metrics, /healthz and /readyz over HTTP (default {METRICS_PORT}; "
                          "0: none)")
    run.add_argument("--metrics-host", default="127.0.0.1",
                     help="address of the metrics port (default 127.0.0.1)")
    run.add_argument("--spool-max-bytes", type=int, default=1 << 30,
                     help="events kept while the server is unreachable (default 1 GiB)")
    run.add_argument("--syslog", action="append", default=[], metavar="URL",
                     help="forward alerts as RFC 5424 syslog: udp|tcp|tls://HOST:PORT")
    run.add_argument("--cef", action="append", default=[], metavar="URL",
                     help="forward alerts as CEF over syslog: udp|tcp|tls://HOST:PORT")
    run.add_argument("--webhook", action="append", default=[], metavar="URL",
                     help="POST alerts as JSON to http(s)://... (header from "
                          "$MORAY_WEBHOOK_AUTH)")
    run.add_argument("--siem-types", default="alert",
                     help="event types sent to the SIEM outputs, comma-separated "
                          "(default alert; 'all': every event)")
    run.add_argument("--log-level", default=argparse.SUPPRESS, help="default info")
    cert = sub.add_parser("cert", help="issue a gateway's certificate (on the server's host)")
    cert.set_defaults(handler=cert_command)
    cert.add_argument("--data-dir", default=None,
                      help="the server's state directory (default $MORAY_DATA_DIR or "
                           "/var/lib/moray): its pki/ holds the CA")
    cert.add_argument("--name", required=True, help="the gateway's name (certificate CN)")
    cert.add_argument("--host", action="append", default=[],
                      help="DNS name or IP agents reach the gateway by (repeatable)")
    cert.add_argument("--out", type=Path, required=True,
                      help="directory to write gateway.key (0600), gateway.pem, ca.pem")


def run_command(args: argparse.Namespace) -> int:
    if not args.server:
        raise ConfigError("moray-gateway run: --server HOST:PORT is required (or server: in "
                          "--config)")
    data_dir = args.data_dir or Path(os.environ.get("MORAY_GATEWAY_DIR",
                                                    "/var/lib/moray-gateway"))
    types = frozenset() if args.siem_types.strip() == "all" else frozenset(
        t.strip() for t in args.siem_types.split(",") if t.strip())
    config = GatewayConfig(server=args.server, pki_dir=args.pki or data_dir / "pki",
                           data_dir=data_dir, host=args.host, port=args.port,
                           server_name=args.server_name, spool_max_bytes=args.spool_max_bytes,
                           syslog=tuple(args.syslog), cef=tuple(args.cef),
                           webhook=tuple(args.webhook), siem_types=types,
                           enroll_port=args.enroll_port, server_enroll=args.server_enroll,
                           metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                           enroll_per_source=args.enroll_rate_per_source,
                           enroll_per_token=args.enroll_rate_per_token)
    return run_until_stopped(serve, config)


def cert_command(args: argparse.Namespace) -> int:
    from moray.controlplane.server.pki import Pki
    from moray.controlplane.store import db

    pki_dir = db.data_dir(args.data_dir) / "pki"
    if not (pki_dir / "ca.key").exists():
        raise ConfigError(f"{pki_dir}: no CA here (run on the server's host, --data-dir)")
    pki = Pki.load_or_create(pki_dir)
    key, cert = pki.issue_gateway_cert(args.name, args.host)
    args.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(args.out / "gateway.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    (args.out / "gateway.pem").write_bytes(cert)
    (args.out / "ca.pem").write_bytes(pki.ca_pem)
    print(f"gateway {args.name}: {args.out}/gateway.key, gateway.pem, ca.pem "
          f"(trusted while {pki_dir}/gateways/{args.name}.pem exists)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``moray-gateway`` (and ``python -m moray.controlplane.gateway.main``)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-gateway")


if __name__ == "__main__":
    sys.exit(main())
