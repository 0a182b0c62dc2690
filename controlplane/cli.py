"""``moray scan|vulndb|malware``: the scanner and the control plane's data.

``moray vulndb import PATH...`` imports advisory files or directories (OSV, Debian
security tracker, Alpine secdb) into the store under ``$MORAY_DATA_DIR``;
``moray vulndb status`` shows what is there; ``moray malware import FILE...`` installs
YARA rule files and SHA-256 lists that ``moray scan IMAGE`` then loads by default.
``moray scan IMAGE`` scans an image (the same as ``moray-scan``, controlplane/scanner/cli.py);
``moray scan enqueue IMAGE...`` queues scans, ``moray scan worker`` runs a worker (start
as many as wanted; the same as ``moray-scanner-worker``), ``moray scan jobs`` lists them,
``moray scan rescan-stale`` queues images whose verdict predates the current
vulnerability data; ``moray scan registry|image add|list|remove`` registers what
moray-server scans on its own schedule (controlplane/scanner/targets_cli.py).

The store is ``--db PATH``, ``--database-url URL`` / ``$MORAY_DATABASE_URL`` (the
server's PostgreSQL), or ``$MORAY_DATA_DIR/moray.db``. With a server configured
(moray.clientconfig), ``vulndb import`` and ``scan registry|image`` go to its REST API.
The parsers are built from light imports; the store, httpx and the scanner load when a
command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moray import clientconfig
from moray.controlplane.scanner import cli as scan_cli
from moray.controlplane.scanner import targets_cli, workercli
from moray.errors import ScanError
from moray.exitcodes import FAILED, OK

if TYPE_CHECKING:
    from moray.controlplane.store.scanstore import ScanStore

SCAN_HELP = """\
moray scan IMAGE [options]   scan an image (= moray-scan; moray scan IMAGE --help)

An argument after 'scan' that is none of the commands above is the image; write a local
image whose name is a command's as ./NAME."""


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``scan``, ``vulndb`` or ``malware`` parser."""
    {"scan": _add_scan, "vulndb": _add_vulndb, "malware": _add_malware}[name](p)


def _add_vulndb(vulndb: argparse.ArgumentParser) -> None:
    vsub = vulndb.add_subparsers(dest="command", required=True)
    imp = vsub.add_parser("import", help="import advisory files or directories")
    imp.add_argument("paths", type=Path, nargs="+")
    clientconfig.add_client_options(
        imp, server_help="import through moray-server's REST API ($MORAY_SERVER); "
        "default: the local store")
    imp.set_defaults(handler=cmd_vulndb_import)
    st = vsub.add_parser("status", help="what the knowledge base holds")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=cmd_vulndb_status)


def _add_malware(malware: argparse.ArgumentParser) -> None:
    msub = malware.add_subparsers(dest="command", required=True)
    mimp = msub.add_parser("import", help="install .yar/.yara rules or .sha256 lists")
    mimp.add_argument("paths", type=Path, nargs="+")
    mimp.set_defaults(handler=cmd_malware_import)


def _add_scan(scan: argparse.ArgumentParser) -> None:
    from moray.cli import SCAN_IMAGE

    scan.formatter_class = argparse.RawDescriptionHelpFormatter
    scan.epilog = SCAN_HELP
    ssub = scan.add_subparsers(dest="command", required=True,
                               metavar="{enqueue,worker,enqueue-registry,jobs,rescan-stale,"
                                       "registry,image} | IMAGE")
    enq = ssub.add_parser("enqueue", help="queue image scans")
    enq.add_argument("images", nargs="+")
    enq.add_argument("--policy", type=Path, help="assurance policy to evaluate")
    enq.set_defaults(handler=cmd_scan_store)
    wrk = ssub.add_parser("worker", help="take and run scan jobs (= moray-scanner-worker)",
                          description=workercli.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    workercli.add_worker_arguments(wrk)
    wrk.set_defaults(handler=cmd_worker, daemon=True, quiet_loggers=("httpx", "alembic"))
    reg = ssub.add_parser("enqueue-registry", help="queue every tag of a registry")
    reg.add_argument("registry", help="host[:port]")
    reg.add_argument("--repository", action="append", help="only these repositories")
    reg.add_argument("--policy", type=Path)
    reg.add_argument("--insecure-registry", action="store_true")
    reg.set_defaults(handler=cmd_scan_store)
    ssub.add_parser("jobs", help="list scan jobs").set_defaults(handler=cmd_scan_store)
    ssub.add_parser("rescan-stale", help="queue rescans after new vulnerability data"
                    ).set_defaults(handler=cmd_scan_store)
    targets_cli.register(ssub)
    for kind in ("registry", "image"):
        ssub.choices[kind].set_defaults(handler=cmd_targets)
    image = ssub.add_parser(SCAN_IMAGE, prog=scan.prog, description=scan_cli.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    scan_cli.add_arguments(image)
    image.set_defaults(handler=scan_cli.run_command)


def open_store(args: argparse.Namespace) -> ScanStore:
    from moray.controlplane.store.scanstore import ScanStore, default_db_path

    url = args.database_url or (None if args.db else os.environ.get("MORAY_DATABASE_URL"))
    return ScanStore(url or args.db or default_db_path())


def cmd_scan_store(args: argparse.Namespace) -> int:
    """``moray scan enqueue|enqueue-registry|jobs|rescan-stale`` on the store."""
    store = open_store(args)
    try:
        return _scan_store(store, args)
    finally:
        store.close()


def _scan_store(store: ScanStore, args: argparse.Namespace) -> int:
    if args.command == "enqueue":
        policy = args.policy.read_text() if args.policy else ""
        for image in args.images:
            sys.stdout.write(f"queued job {store.enqueue_scan(image, policy)} for {image}\n")
        return 0
    if args.command == "enqueue-registry":
        from moray.controlplane.scanner.engine.registry import list_images

        policy = args.policy.read_text() if args.policy else ""
        images = list_images(args.registry, insecure=args.insecure_registry,
                             username=os.environ.get("MORAY_REGISTRY_USERNAME"),
                             password=os.environ.get("MORAY_REGISTRY_PASSWORD"),
                             repositories=args.repository)
        for image in images:
            store.enqueue_scan(image, policy, insecure=args.insecure_registry)
        sys.stdout.write(f"queued {len(images)} images from {args.registry}\n")
        return 0
    if args.command == "jobs":
        for job in store.jobs():
            sys.stdout.write("{id:>6}  {status:8} {attempts}  {image}  {digest}  {error}\n"
                             .format(**job))
        return 0
    sys.stdout.write(f"queued {store.enqueue_stale()} rescans\n")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``moray scan worker`` (= ``moray-scanner-worker``): the local store is the queue
    without a server, else only the layer cache (none with ``--no-cache``)."""
    config = clientconfig.from_args(args)
    store = open_store(args) if not config.server or not args.no_cache else None
    try:
        return workercli.run(args, config, store)
    finally:
        if store is not None:
            store.close()


class _Remote:
    """targets_cli.Targets on the REST API."""

    def __init__(self, api: clientconfig.Api) -> None:
        self.api = api

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.api.call(method, path, json=body)


def cmd_targets(args: argparse.Namespace) -> int:
    """``moray scan registry|image ...``: on the server if one is configured, else in the
    store."""
    config = clientconfig.from_args(args)
    if config.server:
        return targets_cli.run(_Remote(clientconfig.Api(config, config.api_token())), args)
    store = open_store(args)
    try:
        return targets_cli.run(targets_cli.LocalTargets(store), args)
    finally:
        store.close()


def cmd_vulndb_import(args: argparse.Namespace) -> int:
    config = clientconfig.from_args(args)
    if config.server:
        api = clientconfig.Api(config, config.api_token())
        r = api.call("POST", "/vulndb/import",
                     json={"files": targets_cli.advisory_files(args.paths)})
        sys.stdout.write(f"{config.server}: {r['records']} records, {r['rows']} affected "
                         f"rows, {r['skipped']} skipped, generation {r['generation']}\n")
        for err in r["errors"][:20]:
            sys.stdout.write(f"  skipped {err}\n")
        return FAILED if r["skipped"] else OK
    from moray.controlplane.vulndb.importer import import_path

    store = open_store(args)
    try:
        failed = 0
        for path in args.paths:
            report = import_path(path, store)
            formats = ", ".join(f"{k} {v}" for k, v in sorted(report.by_format.items()))
            sys.stdout.write(f"{path}: {report.records} records ({formats}), {report.rows} "
                             f"affected rows, {report.skipped} skipped\n")
            for err in report.errors[:20]:
                sys.stdout.write(f"  skipped {err}\n")
            failed += report.skipped
        return FAILED if failed else OK
    finally:
        store.close()


def cmd_vulndb_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        status = store.status()
    finally:
        store.close()
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
        return 0
    sys.stdout.write(f"store: {status['path']}\nadvisories: {status['advisories']}\n"
                     f"affected rows: {status['affected_rows']}\n"
                     f"generation: {status['generation']}\n")
    last = status["last_import"]
    if last:
        sys.stdout.write(f"last import: {last['path']}\n")
    for eco, n in status["by_ecosystem"].items():
        sys.stdout.write(f"  {eco:24} {n}\n")
    sys.stdout.write(f"cached layers: {status['cached_layers']}   verdicts: "
                     f"{status['verdicts']}\n")
    return 0


def cmd_malware_import(args: argparse.Namespace) -> int:
    from moray.controlplane.scanner.engine.cache import data_dir
    from moray.controlplane.scanner.engine.malware import MalwareScanner

    paths: list[Path] = args.paths
    target = data_dir() / "malware"
    rules = [p for p in paths if p.suffix in (".yar", ".yara")]
    hashes = [p for p in paths if p.suffix in (".sha256", ".txt")]
    other = set(paths) - set(rules) - set(hashes)
    if other:
        raise ScanError("expected .yar/.yara rule files or .sha256 hash lists",
                        path=", ".join(map(str, sorted(other))))
    MalwareScanner(rules, hashes)  # validate before installing
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in paths:
        shutil.copyfile(p, target / p.name)
        sys.stdout.write(f"installed {p.name} in {target}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``moray`` (``python -m moray.controlplane.cli`` is the same command)."""
    from moray.cli import main as moray

    return moray(argv)


if __name__ == "__main__":
    sys.exit(main())
