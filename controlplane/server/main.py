"""``moray server`` (= ``moray-server``): start-up as named steps, one asyncio loop for
gRPC and HTTP.

    moray-server                       # SQLite under $MORAY_DATA_DIR (/var/lib/moray)
    moray-server --database-url postgresql://moray@db/moray

Listens on 7443 (agents, mutual TLS), 7444 (enrolment, TLS + one-time token) and 7080
(REST API, /openapi.json, /metrics). On first start it creates the CA and keys under
``<data dir>/pki`` and an admin API token in ``<data dir>/admin.token`` (mode 0600).
A scheduler thread queues scans of the registered registries and images and rescans
after new vulnerability data (controlplane/scanner/service/scheduler.py); ``--scan-workers N``
threads (default 1) scan in the server, and any number of ``moray-scanner-worker``
processes take jobs through the REST API (``--scan-workers 0``: only they do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvicorn

from moray.api.proto import moray_pb2_grpc
from moray.controlplane.scanner.service.scheduler import Scheduler
from moray.controlplane.scanner.workercli import InProcessWorkers
from moray.controlplane.server.agentapi import POLL_SECONDS, AgentServiceImpl, EnrollmentService
from moray.controlplane.server.gatewayapi import GatewayServiceImpl
from moray.controlplane.server.hub import AgentHub
from moray.controlplane.server.metrics import ScanCollector, ServerMetrics
from moray.controlplane.server.pki import Pki
from moray.controlplane.server.policydoc import agent_document
from moray.controlplane.server.rest import create_app
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.scanstore import ScanStore

log = logging.getLogger(__name__)

GRPC_PORT = 7443
ENROLL_PORT = 7444
HTTP_PORT = 7080


@dataclass
class ServerConfig:
    data_dir: Path
    database_url: str | None = None
    host: str = "0.0.0.0"
    grpc_port: int = GRPC_PORT
    enroll_port: int = ENROLL_PORT
    http_port: int = HTTP_PORT
    names: list[str] = field(default_factory=list)
    http_tls: bool = False
    poll_seconds: float = POLL_SECONDS
    scan_poll_seconds: float = 5.0
    scan_workers: int = 1


def bootstrap_admin_token(store: ControlPlaneStore, data_dir: Path) -> None:
    """On a store with no API token, create an admin token and write it where only root
    can read it; the `moray` CLI finds it there."""
    if store.has_api_tokens():
        return
    token = store.create_api_token("bootstrap-admin", "admin", author="moray-server")
    path = data_dir / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("created the first admin API token", extra={"path": str(path)})


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``main`` owns SIGTERM/SIGINT and stops
    gRPC and HTTP together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if len({config.grpc_port, config.enroll_port, config.http_port}) != 3:
        raise SystemExit("moray-server: the gRPC, enrolment and HTTP ports must differ")
    # step: open_store
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = db.make_engine(db.database_url(config.database_url, config.data_dir))
    db.migrate(engine)
    store = ControlPlaneStore(engine, wire_document=agent_document)
    scans = ScanStore(engine)
    # step: load_keys
    pki = Pki.load_or_create(config.data_dir / "pki", config.names)
    bootstrap_admin_token(store, config.data_dir)
    metrics = ServerMetrics()
    hub = AgentHub(loop)
    # step: start_grpc
    server = grpc.aio.server(options=[("grpc.keepalive_time_ms", 20_000),
                                      ("grpc.keepalive_timeout_ms", 10_000),
                                      ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                                      ("grpc.keepalive_permit_without_calls", 1)])
    moray_pb2_grpc.add_EnrollmentServicer_to_server(
        EnrollmentService(store, pki, metrics), server)
    agent_service = AgentServiceImpl(store, pki, hub, metrics, config.poll_seconds)
    moray_pb2_grpc.add_AgentServiceServicer_to_server(agent_service, server)
    # gateways (moray gateway) link on the same mTLS port with a gateway certificate
    moray_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServiceImpl(agent_service),
                                                        server)
    key_pair = [(pki.server_key_pem, pki.server_cert_pem)]
    bound = [server.add_secure_port(f"{config.host}:{config.grpc_port}",
                                    grpc.ssl_server_credentials(
                                        key_pair, root_certificates=pki.ca_pem,
                                        require_client_auth=True)),
             server.add_secure_port(f"{config.host}:{config.enroll_port}",
                                    grpc.ssl_server_credentials(key_pair))]
    if 0 in bound:
        raise SystemExit(f"moray-server: cannot listen on {config.host}:{config.grpc_port} "
                         f"and {config.enroll_port}")
    await server.start()
    # step: start_scheduler
    scheduler = Scheduler(scans, poll_seconds=config.scan_poll_seconds)
    scheduler.start()
    metrics.registry.register(ScanCollector(scans.job_counts, scheduler.stats))
    # step: start_scan_workers
    workers = InProcessWorkers(scans, config.scan_workers, name=f"{socket.gethostname()}:server")
    workers.start()
    # step: start_http
    app = create_app(store, hub, pki, metrics, grpc_port=config.grpc_port,
                     enroll_port=config.enroll_port, scans=scans,
                     on_scan_change=scheduler.wake)
    tls = ({"ssl_certfile": str(pki.directory / "server.pem"),
            "ssl_keyfile": str(pki.directory / "server.key")} if config.http_tls else {})
    http = _HttpServer(uvicorn.Config(app, host=config.host, port=config.http_port,
                                      log_config=None, lifespan="off", access_log=False,
                                      **tls))  # type: ignore[arg-type]
    http_task = asyncio.create_task(http.serve())
    log.info("moray-server ready", extra={
        "grpc": config.grpc_port, "enroll": config.enroll_port, "http": config.http_port,
        "https": config.http_tls,
        "database": engine.url.render_as_string(), "data_dir": str(config.data_dir)})
    # step: serve
    try:
        await asyncio.wait({http_task, asyncio.create_task(stop.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        http.should_exit = True
        await server.stop(grace=2)
        await asyncio.wait_for(http_task, 10)
        await asyncio.to_thread(workers.stop)
        await asyncio.to_thread(scheduler.stop)
        engine.dispose()
        log.info("moray-server stopped")


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``server`` parser (moray.cli)."""
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    p.set_defaults(handler=run_command, daemon=True)
    p.add_argument("--data-dir", default=None,
                   help="state directory (default $MORAY_DATA_DIR or /var/lib/moray)")
    p.add_argument("--database-url", default=argparse.SUPPRESS,
                   help="SQLAlchemy URL (default $MORAY_DATABASE_URL or SQLite in the data dir)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p.add_argument("--enroll-port", type=int, default=ENROLL_PORT)
    p.add_argument("--http-port", type=int, default=HTTP_PORT)
    p.add_argument("--name", action="append", default=[],
                   help="extra DNS name or IP for the server certificate (repeatable)")
    p.add_argument("--http-tls", action="store_true",
                   help="serve the REST API over HTTPS with the server certificate "
                        "(clients verify it with <data dir>/pki/ca.pem: moray --ca)")
    p.add_argument("--scan-poll-seconds", type=float, default=5.0,
                   help="how often the scan scheduler looks for due registries and images "
                        "and for new vulnerability data (default 5)")
    p.add_argument("--scan-workers", type=int, default=1,
                   help="scan worker threads in the server (default 1; 0: only external "
                        "moray-scanner-worker processes scan)")
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="default info")


def run_command(args: argparse.Namespace) -> int:
    """The handler of ``moray server``: serve until SIGTERM or SIGINT."""
    config = ServerConfig(data_dir=db.data_dir(args.data_dir), database_url=args.database_url,
                          host=args.host, grpc_port=args.grpc_port,
                          enroll_port=args.enroll_port, http_port=args.http_port,
                          names=args.name, http_tls=args.http_tls,
                          scan_poll_seconds=args.scan_poll_seconds,
                          scan_workers=args.scan_workers)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    """``moray-server`` (and ``python -m moray.controlplane.server.main``): ``moray server``
    under its own name (moray.cli)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-server")


if __name__ == "__main__":
    sys.exit(main())
