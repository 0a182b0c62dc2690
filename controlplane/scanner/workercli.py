"""``moray scan worker`` (= ``moray-scanner-worker``): take scan jobs from moray-server (or
a local store), run them.

    moray-scanner-worker --server https://moray.example:7080 --token TOKEN --ca ca.pem
    moray-scanner-worker --db /var/lib/moray/moray.db      # jobs from a store on this host

Start any number, on any host. With a server (``--server``, ``$MORAY_SERVER`` or the
config file: moray.clientconfig) jobs are leased
and verdicts reported through the REST API, and vulnerabilities are matched against the
server's knowledge base (only package coordinates are sent), so a worker host needs no
advisories; the local store under ``$MORAY_DATA_DIR`` (or ``--db``) only holds the
per-layer cache (``--no-cache``: none). Without ``--server`` the local store is the queue.

SIGTERM or SIGINT: the running scan gets ``--grace`` seconds to finish, then its job is
given back to the queue; a second signal gives it back at once. A worker that is killed
outright stops extending its lease, and the job is claimed again when the lease expires.
Exit codes: 0 stopped, 2 refused (bad token or role, bad arguments).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from moray.clientconfig import ClientConfig, add_client_options
from moray.controlplane.scanner.engine.model import ScanResult
from moray.controlplane.scanner.errors import ScanError
from moray.controlplane.scanner.service import credentials

if TYPE_CHECKING:
    from moray.controlplane.store.scanstore import ScanJob, ScanStore

DEFAULT_LEASE = 600.0


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``moray scan worker`` (= ``moray-scanner-worker``)."""
    add_client_options(p, server_help="take jobs from moray-server's REST API "
                       "($MORAY_SERVER); the token needs role operator or admin")
    p.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                   help="local store: the queue without --server, else the layer cache "
                        "(default $MORAY_DATA_DIR/moray.db)")
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="default info")
    p.add_argument("--no-cache", action="store_true", help="no per-layer cache")
    p.add_argument("--name", default=f"{socket.gethostname()}:{os.getpid()}",
                   help="worker name in the job list (default host:pid)")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.add_argument("--insecure-registry", action="store_true",
                   help="plain HTTP to loopback registries for every job (a job registered "
                        "as insecure asks for it by itself)")
    p.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE,
                   help="lease per job, extended every third of it while scanning "
                        "(default 600)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds a running scan may take after SIGTERM before its job is "
                        "given back (default 30)")
    p.add_argument("--idle-wait", type=float, default=1.0,
                   help="seconds between polls of an empty queue (default 1)")


def job_scanner(options: Any, *, allow_paths: bool, insecure: bool
                ) -> Callable[[ScanJob], ScanResult]:
    """Scan one job's image with ``options`` (a ``ScanOptions``). A job from a server is
    always a registry reference: a path on the worker's host is never opened for it."""
    from moray.controlplane.scanner.engine.registry import RegistrySource, parse_reference
    from moray.controlplane.scanner.engine.scan import scan_image
    from moray.controlplane.scanner.engine.source import ImageSource, open_source

    def scan(job: ScanJob) -> ScanResult:
        _require_vulndata(options)
        path = Path(job.image)
        if allow_paths and path.exists():
            source: ImageSource = open_source(path)
        else:
            username, password = credentials.resolve(job.credentials)
            source = RegistrySource(parse_reference(job.image),
                                    insecure=job.insecure or insecure,
                                    username=username, password=password)
        return scan_image(source, options, image_name=job.image)

    return scan


def _require_vulndata(options: Any) -> None:
    """A job matched against a knowledge base that never received an advisory fails
    (no verdict is recorded): a policy gate must not pass because the data was missing.
    The generation (bumped by every import that adds records) is one small query."""
    matcher = getattr(options, "matcher", None)
    if matcher is None:
        return
    store = getattr(matcher, "store", None)
    generation = store.generation() if store is not None else matcher.generation()
    if generation == 0:
        from moray.controlplane.scanner.errors import VulnDataError

        raise VulnDataError("no vulnerability data to match against: import advisories "
                            "with 'moray vulndb import PATH' (docs/scanner.md); no verdict "
                            "recorded")


class InProcessWorkers:
    """``n`` worker threads on a store (moray-server's own, ``--scan-workers``): the same
    loop as a worker process, with the store as queue, verdict sink and knowledge base.
    ``stop()`` gives running jobs ``grace`` seconds, then gives them back."""

    def __init__(self, store: ScanStore, n: int, *, name: str, grace: float = 5.0,
                 lease_seconds: float = DEFAULT_LEASE) -> None:
        self.store, self.n, self.name = store, n, name
        self.grace, self.lease_seconds = grace, lease_seconds
        self._stop, self._abort = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.n <= 0:
            return
        from moray.controlplane.scanner.engine.cache import StoreLayerCache, data_dir
        from moray.controlplane.scanner.engine.malware import MalwareScanner, discover
        from moray.controlplane.scanner.engine.scan import ScanOptions
        from moray.controlplane.scanner.engine.secrets import SecretScanner
        from moray.controlplane.scanner.service.worker import run_worker
        from moray.controlplane.vulndb.matcher import Matcher

        for i in range(self.n):
            # one ScanOptions per thread: the matcher and the scanners keep per-scan state
            options = ScanOptions(secrets=SecretScanner(),
                                  malware=MalwareScanner(*discover(data_dir())),
                                  cache=StoreLayerCache(self.store), matcher=Matcher(self.store))
            scan = job_scanner(options, allow_paths=False, insecure=False)
            kwargs = {"name": f"{self.name}-{i}", "verdicts": self.store, "stop": self._stop,
                      "abort": self._abort, "lease_seconds": self.lease_seconds,
                      "grace": self.grace, "generation": self.store.generation}
            thread = threading.Thread(target=run_worker, args=(self.store, scan),
                                      kwargs=kwargs, name=f"scan-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)


def _signals(stop: threading.Event, abort: threading.Event) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            abort.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def run(args: argparse.Namespace, config: ClientConfig, store: ScanStore | None) -> int:
    """Run one worker until stopped. ``store``: the open local store, the queue without a
    server, else the layer cache (None: no cache)."""
    from moray.controlplane.scanner.engine.cache import StoreLayerCache, data_dir
    from moray.controlplane.scanner.engine.malware import MalwareScanner, discover
    from moray.controlplane.scanner.engine.scan import ScanOptions
    from moray.controlplane.scanner.engine.secrets import SecretScanner
    from moray.controlplane.scanner.service.remote import HttpJobQueue, RemoteMatcher
    from moray.controlplane.scanner.service.worker import run_worker
    from moray.controlplane.vulndb.matcher import Matcher

    matcher: Any
    if config.server:
        if not config.token:
            raise ScanError("--server needs --token or $MORAY_TOKEN")
        queue: Any = HttpJobQueue(config.server, config.token, client=config.http_client())
        matcher = RemoteMatcher(config.server, config.token, client=config.http_client())
        generation = queue.generation
    else:
        assert store is not None
        queue, matcher, generation = store, Matcher(store), store.generation
    cache = StoreLayerCache(store) if store is not None and not args.no_cache else None
    options = ScanOptions(secrets=SecretScanner(), malware=MalwareScanner(*discover(data_dir())),
                          cache=cache, matcher=matcher)
    scan = job_scanner(options, allow_paths=not config.server,
                       insecure=args.insecure_registry)
    stop, abort = threading.Event(), threading.Event()
    _signals(stop, abort)
    stats = run_worker(queue, scan, name=args.name, verdicts=queue, stop=stop, abort=abort,
                       once=args.once, lease_seconds=args.lease_seconds, grace=args.grace,
                       idle_wait=args.idle_wait, generation=generation)
    sys.stdout.write(f"done {stats.done}, failed {stats.failed}, lost {stats.lost}, "
                     f"released {stats.released}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``moray-scanner-worker``: ``moray scan worker`` under its own name (moray.cli)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-scanner-worker")


if __name__ == "__main__":
    sys.exit(main())
