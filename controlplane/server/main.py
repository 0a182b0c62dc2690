"""``moray server`` (= ``moray-server``): start-up as named steps, one asyncio loop for
gRPC and HTTP.

    moray-server                       # SQLite under $MORAY_DATA_DIR (/var/lib/moray)
    moray-server --database-url postgresql://moray@db/moray

Listens on 7443 (agents, mutual TLS) and 7444 (enrolment, TLS + one-time token) on every
address, and on 7080 (REST API, /openapi.json, /metrics, /readyz) on loopback only
unless ``--http-tls`` or ``--insecure-http`` (docs/controlplane.md). On first start it
creates the CA and keys under ``<data dir>/pki``, an admin API token in
``<data dir>/admin.token`` and, on a store with no user, the console user ``admin`` with
a random password in ``<data dir>/admin.password`` (both mode 0600).
A scheduler thread queues scans of the registered registries and images and rescans
after new vulnerability data (controlplane/scanner/service/scheduler.py); ``--scan-workers N``
threads (default 1) scan in the server, and any number of ``moray-scanner-worker``
processes take jobs through the REST API (``--scan-workers 0``: only they do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvicorn
from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError

from moray import daemonconfig, sdnotify
from moray.api.proto import moray_pb2_grpc
from moray.api.wire import SERVER_OPTIONS
from moray.controlplane.scanner.service.scheduler import Scheduler
from moray.controlplane.scanner.workercli import InProcessWorkers
from moray.controlplane.server.agentapi import AgentServiceImpl, EnrollmentService
from moray.controlplane.server.gatewayapi import GatewayServiceImpl
from moray.controlplane.server.hub import AgentHub
from moray.controlplane.server.imagelist import ImageListSource
from moray.controlplane.server.limits import (
    ENROLL_PER_SOURCE,
    ENROLL_PER_TOKEN,
    EnrollLimits,
    rate_arg,
)
from moray.controlplane.server.metrics import GrpcTimer, ScanCollector, ServerMetrics
from moray.controlplane.server.pki import Pki
from moray.controlplane.server.policydoc import agent_document
from moray.controlplane.server.rest import create_app
from moray.controlplane.server.sessions import (
    LOCKOUT_SECONDS,
    MAX_FAILURES,
    SOURCE_FAILURES,
    LoginLimits,
    SessionSettings,
)
from moray.controlplane.server.watch import POLL_SECONDS as WATCH_POLL_SECONDS
from moray.controlplane.server.watch import PolicyWatcher, libpq_url, one_line
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore, StoreError
from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.store.users import IDLE_SECONDS, LIFETIME_SECONDS, UserStore
from moray.daemon import run_until_stopped

log = logging.getLogger(__name__)

GRPC_PORT = 7443
ENROLL_PORT = 7444
HTTP_PORT = 7080


LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
RETENTION_DAYS = 30.0
RETENTION_EVENTS = 10_000_000
RETENTION_INTERVAL = 300.0


@dataclass
class ServerConfig:
    data_dir: Path
    database_url: str | None = None
    host: str = "0.0.0.0"               # gRPC: agents and enrolment (always TLS)
    http_host: str | None = None        # REST: loopback unless TLS or insecure_http
    insecure_http: bool = False
    grpc_port: int = GRPC_PORT
    enroll_port: int = ENROLL_PORT
    http_port: int = HTTP_PORT
    names: list[str] = field(default_factory=list)
    http_tls: bool = False
    watch_poll_seconds: float = WATCH_POLL_SECONDS
    scan_poll_seconds: float = 5.0
    scan_workers: int = 1
    event_max_age: float | None = RETENTION_DAYS * 86400
    event_max_per_tenant: int | None = RETENTION_EVENTS
    retention_interval: float = RETENTION_INTERVAL
    webhook_names: list[str] = field(default_factory=list)
    enroll_per_source: str = ENROLL_PER_SOURCE   # RATE[/BURST] per second; "0": no limit
    enroll_per_token: str = ENROLL_PER_TOKEN
    session_idle: float = IDLE_SECONDS         # a console session ends unused this long
    session_lifetime: float = LIFETIME_SECONDS  # ... and this long after sign-in anyway
    login_max_failures: int = MAX_FAILURES     # failed sign-ins for one user name
    login_source_failures: int = SOURCE_FAILURES  # ... from one address
    login_lockout: float = LOCKOUT_SECONDS     # ... within this, lock it this long

    def rest_host(self) -> str:
        """Where the REST API listens: ``http_host``, else the gRPC host with TLS, else
        loopback. Plain HTTP (bearer tokens in clear) elsewhere than loopback only with
        ``insecure_http``."""
        host = self.http_host or (self.host if self.http_tls else "127.0.0.1")
        if not self.http_tls and not self.insecure_http and not is_loopback(host):
            raise SystemExit(f"moray-server: refusing plain HTTP on {host} (API tokens would "
                             "travel in clear): use --http-tls, or --insecure-http to allow it")
        return host


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only, or take away the others' access to an
    existing one (an older server left moray.db 0644). An existing file is never opened:
    closing a descriptor of a SQLite file drops every POSIX lock this process holds on
    it, and another process (``moray token create``, a second reader) would then take
    itself for the last user, checkpoint and delete the WAL under the server's feet."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def sqlite_private(url: str) -> None:
    """Make the SQLite file (and its WAL and shared-memory files, which SQLite creates
    with the database file's mode) owner-only."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.split("///", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)
        for f in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                if f.stat().st_mode & 0o077:
                    f.chmod(0o600)


def load_keys(config: ServerConfig) -> Pki:
    """The CA, server certificate and policy key; ``webhook_names`` must not name the
    server (loopback aside: a certificate for it stands in for nothing beyond its pod)."""
    pki = Pki.load_or_create(config.data_dir / "pki", config.names)
    shared = {n for n in set(config.webhook_names) & pki.server_names() if not is_loopback(n)}
    if shared:
        raise SystemExit(f"moray-server: --webhook-name {', '.join(sorted(shared))}: the "
                         "server's own name (a webhook certificate for it could stand in "
                         "for the server)")
    return pki


async def open_engine(config: ServerConfig, metrics: ServerMetrics,
                      stop: asyncio.Event) -> Engine:
    """The migrated engine. An unreachable database is logged as one line and retried
    with back-off (0.5 s doubling to 30 s) until it answers or ``stop`` is set."""
    url = db.database_url(config.database_url, config.data_dir)
    sqlite_private(url)
    delay = 0.5
    while True:
        engine = db.make_engine(url)
        try:
            await asyncio.to_thread(db.migrate, engine)
        except (SQLAlchemyError, OSError) as err:
            engine.dispose()
            log.error("database unreachable, retrying", extra={
                "database": engine.url.render_as_string(), "error": one_line(err),
                "retry_in": delay})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise SystemExit("moray-server: stopped while waiting for the database") from None
            delay = min(30.0, delay * 2)
            continue
        sqlite_private(url)      # -wal and -shm exist now
        event.listen(engine, "before_cursor_execute",
                     lambda *_args: metrics.db_statements.inc())
        return engine


async def retention(store: ControlPlaneStore, config: ServerConfig,
                    metrics: ServerMetrics) -> None:
    """Every ``retention_interval`` seconds: drop the events beyond the age and size
    limits (oldest first, per tenant), count them and log one line per tenant."""
    while True:
        await asyncio.sleep(config.retention_interval)
        try:
            dropped = await asyncio.to_thread(
                store.prune_events, max_age=config.event_max_age,
                max_per_tenant=config.event_max_per_tenant)
        except Exception as err:   # the database may be away: next round
            log.warning("event retention failed", extra={"error": one_line(err)})
            continue
        for tenant, (by_age, by_size) in sorted(dropped.items()):
            metrics.events_dropped.labels("age").inc(by_age)
            metrics.events_dropped.labels("size").inc(by_size)
            log.warning("events dropped by retention", extra={
                "tenant": tenant, "age": by_age, "size": by_size})


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


def bootstrap_admin_user(store: ControlPlaneStore, config: ServerConfig) -> UserStore:
    """The users of ``store``. On a store with no user, create the global user ``admin``
    with a random password, written once where only root can read it (``moray user
    passwd admin`` changes it). The first admin API token too (``bootstrap_admin_token``)."""
    bootstrap_admin_token(store, config.data_dir)
    users = UserStore(store, idle=config.session_idle, lifetime=config.session_lifetime)
    if users.has_users():
        return users
    import secrets

    password = secrets.token_urlsafe(18)
    try:
        users.create_user("admin", password, "admin", None, author="moray-server")
    except (StoreError, SQLAlchemyError) as err:
        # another server on the same database made it first (a Conflict, or the unique
        # name refused at commit): its data directory has the password
        if not users.has_users():
            raise
        log.info("the first console user was created by another server",
                 extra={"error": one_line(err)})
        return users
    path = config.data_dir / "admin.password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    log.warning("created the first console user 'admin'; its password is in the file",
                extra={"path": str(path)})
    return users


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``main`` owns SIGTERM/SIGINT and stops
    gRPC and HTTP together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def watch_changes(store: ControlPlaneStore, engine: Engine, config: ServerConfig,
                        metrics: ServerMetrics, scans: ScanStore | None = None,
                        pki: Pki | None = None) -> tuple[PolicyWatcher, AgentHub]:
    """The process's one change watcher, feeding the hub of policy streams (and, with
    ``scans`` and ``pki``, the image-verdict list: imagelist.py)."""
    extra = (ImageListSource(scans, pki.policy_key)
             if scans is not None and pki is not None else None)
    watcher = PolicyWatcher(store, listen_url=libpq_url(engine.url),
                            poll_seconds=config.watch_poll_seconds, extra=extra)
    if scans is not None:
        scans.on_verdict = watcher.poke
    hub = AgentHub(asyncio.get_running_loop(), on_policy_change=watcher.poke)
    watcher.subscribe(hub.policies_changed)
    watcher.subscribe(lambda _snapshot: metrics.policy_snapshots.inc())
    watcher.subscribe_agents(hub.agent_changed)
    metrics.change_listener_up.set_function(lambda: float(watcher.listening))
    await watcher.start()
    return watcher, hub


async def start_grpc(store: ControlPlaneStore, pki: Pki, hub: AgentHub,
                     metrics: ServerMetrics, config: ServerConfig) -> grpc.aio.Server | None:
    """The agent (mutual TLS) and enrolment (TLS) ports, started; None if either port
    cannot be bound."""
    server = grpc.aio.server(interceptors=[GrpcTimer(metrics.grpc_duration)],
                             options=SERVER_OPTIONS)
    moray_pb2_grpc.add_EnrollmentServicer_to_server(
        EnrollmentService(store, pki, metrics,
                          EnrollLimits(config.enroll_per_source, config.enroll_per_token)),
        server)
    agent_service = AgentServiceImpl(store, pki, hub, metrics)
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
        return None
    await server.start()
    return server


def _announce_ready(config: ServerConfig, http_host: str, database: str, listen: bool) -> None:
    """Every port is bound: the log line, and READY=1 to systemd (moray/sdnotify.py)."""
    log.info("moray-server ready", extra={
        "grpc": config.grpc_port, "enroll": config.enroll_port, "http": config.http_port,
        "http_host": http_host, "https": config.http_tls, "database": database,
        "data_dir": str(config.data_dir), "listen": listen})
    sdnotify.ready(f"serving: gRPC :{config.grpc_port}, enrolment :{config.enroll_port}, "
                   f"HTTP :{config.http_port}")


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    if len({config.grpc_port, config.enroll_port, config.http_port}) != 3:
        raise SystemExit("moray-server: the gRPC, enrolment and HTTP ports must differ")
    http_host = config.rest_host()
    metrics = ServerMetrics()
    # step: open_store
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = await open_engine(config, metrics, stop)
    store = ControlPlaneStore(engine, wire_document=agent_document)
    scans = ScanStore(engine)
    # step: load_keys
    pki = load_keys(config)
    users = await asyncio.to_thread(bootstrap_admin_user, store, config)
    # step: watch_changes (before any stream opens: streams push from its snapshot)
    watcher, hub = await watch_changes(store, engine, config, metrics, scans, pki)
    # step: start_grpc
    server = await start_grpc(store, pki, hub, metrics, config)
    if server is None:
        await watcher.stop()
        raise SystemExit(f"moray-server: cannot listen on {config.host}:{config.grpc_port} "
                         f"and {config.enroll_port}")
    # step: start_scheduler
    scheduler = Scheduler(scans, poll_seconds=config.scan_poll_seconds)
    scheduler.start()
    metrics.registry.register(ScanCollector(scans.job_counts, scheduler.stats))
    # step: start_scan_workers
    workers = InProcessWorkers(scans, config.scan_workers, name=f"{socket.gethostname()}:server")
    workers.start()
    # step: start_retention
    retainer = asyncio.create_task(retention(store, config, metrics))
    # step: start_http
    app = create_app(store, hub, pki, metrics, grpc_port=config.grpc_port,
                     enroll_port=config.enroll_port, scans=scans,
                     on_scan_change=scheduler.wake,
                     webhook_names=tuple(config.webhook_names), users=users,
                     login_limits=LoginLimits(
                         config.login_max_failures, config.login_lockout,
                         source_failures=config.login_source_failures),
                     sessions=SessionSettings(secure=config.http_tls))
    tls = ({"ssl_certfile": str(pki.directory / "server.pem"),
            "ssl_keyfile": str(pki.directory / "server.key")} if config.http_tls else {})
    http = _HttpServer(uvicorn.Config(app, host=http_host, port=config.http_port,
                                      log_config=None, lifespan="off", access_log=False,
                                      **tls))  # type: ignore[arg-type]
    http_task = asyncio.create_task(http.serve())
    stopper = asyncio.create_task(stop.wait())
    try:
        # step: ready (every port bound: gRPC's by server.start, HTTP's once uvicorn
        # has started)
        while not http.started and not http_task.done() and not stop.is_set():
            await asyncio.wait({http_task, stopper}, timeout=0.02,
                               return_when=asyncio.FIRST_COMPLETED)
        if http_task.done():
            raise SystemExit(f"moray-server: cannot listen on {http_host}:{config.http_port}")
        app.state.ready = True
        _announce_ready(config, http_host, engine.url.render_as_string(),
                        watcher.listen_url is not None)
        # step: serve
        await asyncio.wait({http_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        app.state.ready = False
        sdnotify.stopping()
        http.should_exit = True
        stopper.cancel()
        retainer.cancel()
        await server.stop(grace=2)
        await watcher.stop()
        if not http_task.done():
            await asyncio.wait_for(http_task, 10)
        await asyncio.to_thread(workers.stop)
        await asyncio.to_thread(scheduler.stop)
        engine.dispose()
        log.info("moray-server stopped")


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``server`` parser (moray.cli)."""
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    p.set_defaults(handler=run_command, daemon=True)
    daemonconfig.add_option(p)
    p.add_argument("--data-dir", default=None,
                   help="state directory (default $MORAY_DATA_DIR or /var/lib/moray)")
    p.add_argument("--database-url", default=argparse.SUPPRESS,
                   help="SQLAlchemy URL (default $MORAY_DATABASE_URL or SQLite in the data dir)")
    p.add_argument("--host", default="0.0.0.0",
                   help="address of the agent and enrolment ports (TLS; default 0.0.0.0)")
    p.add_argument("--http-host", default=None,
                   help="address of the REST API (default: 127.0.0.1, or --host with "
                        "--http-tls); plain HTTP elsewhere than loopback needs "
                        "--insecure-http")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow the REST API over plain HTTP on a non-loopback address "
                        "(bearer tokens travel in clear: only behind a TLS proxy)")
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p.add_argument("--enroll-port", type=int, default=ENROLL_PORT)
    p.add_argument("--http-port", type=int, default=HTTP_PORT)
    p.add_argument("--name", action="append", default=[],
                   help="extra DNS name or IP for the server certificate (repeatable)")
    p.add_argument("--webhook-name", action="append", default=[], metavar="NAME",
                   help="DNS name or IP of the admission webhook (moray kube-enforcer), "
                        "repeatable: admission tokens may get a serving certificate for "
                        "these names from POST /api/v1/admission/serving-cert")
    p.add_argument("--http-tls", action="store_true",
                   help="serve the REST API over HTTPS with the server certificate "
                        "(clients verify it with <data dir>/pki/ca.pem: moray --ca)")
    p.add_argument("--scan-poll-seconds", type=float, default=5.0,
                   help="how often the scan scheduler looks for due registries and images "
                        "and for new vulnerability data (default 5)")
    p.add_argument("--scan-workers", type=int, default=1,
                   help="scan worker threads in the server (default 1; 0: only external "
                        "moray-scanner-worker processes scan)")
    p.add_argument("--watch-poll-seconds", type=float, default=WATCH_POLL_SECONDS,
                   help="safety-net poll of the policy set by the one change watcher "
                        "(default 30; changes arrive by notification, see docs/controlplane.md)")
    p.add_argument("--event-retention-days", type=float, default=RETENTION_DAYS,
                   help="drop events received longer ago (default 30; 0: keep forever)")
    p.add_argument("--event-max-per-tenant", type=int, default=RETENTION_EVENTS,
                   help="keep at most this many events per tenant, dropping the oldest "
                        "(default 10,000,000; 0: no limit)")
    p.add_argument("--retention-interval", type=float, default=RETENTION_INTERVAL,
                   help="seconds between retention sweeps (default 300)")
    p.add_argument("--enroll-rate-per-source", default=ENROLL_PER_SOURCE, type=rate_arg,
                   metavar="RATE[/BURST]",
                   help="enrolments a second from one address, and at once (default "
                        f"{ENROLL_PER_SOURCE}; 0: no limit); behind gateways every "
                        "enrolment comes from a gateway's address")
    p.add_argument("--enroll-rate-per-token", default=ENROLL_PER_TOKEN, type=rate_arg,
                   metavar="RATE[/BURST]",
                   help=f"enrolments a second with one token (default {ENROLL_PER_TOKEN}; "
                        "0: no limit)")
    p.add_argument("--session-idle-timeout", type=float, default=IDLE_SECONDS,
                   metavar="SECONDS", help="a console session unused this long ends "
                   f"(default {IDLE_SECONDS:.0f})")
    p.add_argument("--session-lifetime", type=float, default=LIFETIME_SECONDS,
                   metavar="SECONDS", help="a console session ends this long after sign-in "
                   f"(default {LIFETIME_SECONDS:.0f})")
    p.add_argument("--login-max-failures", type=int, default=MAX_FAILURES,
                   help="failed sign-ins for one user name (known or not) that lock it "
                   f"(default {MAX_FAILURES}; 0: never)")
    p.add_argument("--login-max-failures-per-source", type=int, default=SOURCE_FAILURES,
                   help="failed sign-ins from one address that lock it (default "
                   f"{SOURCE_FAILURES}: behind a proxy every sign-in comes from its "
                   "address; 0: never)")
    p.add_argument("--login-lockout", type=float, default=LOCKOUT_SECONDS, metavar="SECONDS",
                   help="the window those failures are counted in, and how long the lock "
                   f"lasts (default {LOCKOUT_SECONDS:.0f})")
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="default info")


def run_command(args: argparse.Namespace) -> int:
    """The handler of ``moray server``: serve until SIGTERM or SIGINT."""
    config = ServerConfig(data_dir=db.data_dir(args.data_dir), database_url=args.database_url,
                          host=args.host, http_host=args.http_host,
                          insecure_http=args.insecure_http, grpc_port=args.grpc_port,
                          enroll_port=args.enroll_port, http_port=args.http_port,
                          names=args.name, http_tls=args.http_tls,
                          watch_poll_seconds=args.watch_poll_seconds,
                          scan_poll_seconds=args.scan_poll_seconds,
                          scan_workers=args.scan_workers,
                          event_max_age=args.event_retention_days * 86400 or None,
                          event_max_per_tenant=args.event_max_per_tenant or None,
                          retention_interval=args.retention_interval,
                          webhook_names=args.webhook_name,
                          enroll_per_source=args.enroll_rate_per_source,
                          enroll_per_token=args.enroll_rate_per_token,
                          session_idle=args.session_idle_timeout,
                          session_lifetime=args.session_lifetime,
                          login_max_failures=args.login_max_failures,
                          login_source_failures=args.login_max_failures_per_source,
                          login_lockout=args.login_lockout)
    return run_until_stopped(serve, config)


def main(argv: list[str] | None = None) -> int:
    """``moray-server`` (and ``python -m moray.controlplane.server.main``): ``moray server``
    under its own name (moray.cli)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-server")


if __name__ == "__main__":
    sys.exit(main())
