"""``moray``: administrative commands for the control plane's data.

``moray vulndb import PATH...`` imports advisory files or directories (OSV, Debian
security tracker, Alpine secdb) into the store under ``$MORAY_DATA_DIR``;
``moray vulndb status`` shows what is there; ``moray malware import FILE...`` installs
YARA rule files and SHA-256 lists that moray-scan then loads by default.
``moray scan enqueue IMAGE...`` queues scans, ``moray scan worker`` runs a worker (start
as many as wanted; the same as ``moray-scanner-worker``), ``moray scan jobs`` lists them,
``moray scan rescan-stale`` queues images whose verdict predates the current
vulnerability data; ``moray scan registry|image add|list|remove`` registers what
moray-server scans on its own schedule (controlplane/scanner/targets_cli.py).

The store is ``--db PATH``, ``--database-url URL`` / ``$MORAY_DATABASE_URL`` (the
server's PostgreSQL), or ``$MORAY_DATA_DIR/moray.db``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from moray.controlplane.scanner import targets_cli, workercli
from moray.controlplane.scanner.engine.malware import MalwareScanner
from moray.controlplane.scanner.engine.registry import list_images
from moray.controlplane.scanner.errors import AccessDenied, ScanError
from moray.controlplane.server import cli_api
from moray.controlplane.store.scanstore import ScanStore, data_dir, default_db_path
from moray.controlplane.vulndb.importer import import_path

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moray", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="store path (default $MORAY_DATA_DIR/moray.db)")
    p.add_argument("--database-url", default=None,
                   help="store URL, e.g. the server's postgresql://... ($MORAY_DATABASE_URL)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="group", required=True)
    vulndb = sub.add_parser("vulndb", help="vulnerability knowledge base")
    vsub = vulndb.add_subparsers(dest="command", required=True)
    imp = vsub.add_parser("import", help="import advisory files or directories")
    imp.add_argument("paths", type=Path, nargs="+")
    targets_cli.server_options(imp)
    st = vsub.add_parser("status", help="what the knowledge base holds")
    st.add_argument("--json", action="store_true")
    malware = sub.add_parser("malware", help="malware rules and hash lists")
    msub = malware.add_subparsers(dest="command", required=True)
    mimp = msub.add_parser("import", help="install .yar/.yara rules or .sha256 lists")
    mimp.add_argument("paths", type=Path, nargs="+")
    scan = sub.add_parser("scan", help="scan jobs and workers")
    ssub = scan.add_subparsers(dest="command", required=True)
    enq = ssub.add_parser("enqueue", help="queue image scans")
    enq.add_argument("images", nargs="+")
    enq.add_argument("--policy", type=Path, help="assurance policy to evaluate")
    wrk = ssub.add_parser("worker", help="take and run scan jobs (= moray-scanner-worker)")
    workercli.add_worker_arguments(wrk, with_db=False)
    reg = ssub.add_parser("enqueue-registry", help="queue every tag of a registry")
    reg.add_argument("registry", help="host[:port]")
    reg.add_argument("--repository", action="append", help="only these repositories")
    reg.add_argument("--policy", type=Path)
    reg.add_argument("--insecure-registry", action="store_true")
    ssub.add_parser("jobs", help="list scan jobs")
    ssub.add_parser("rescan-stale", help="queue rescans after new vulnerability data")
    targets_cli.register(ssub)
    cli_api.register(sub)   # policy, agents, events, audit, tokens: the REST API
    return p


def cmd_scan(store: ScanStore, args: argparse.Namespace) -> int:
    if args.command == "enqueue":
        policy = args.policy.read_text() if args.policy else ""
        for image in args.images:
            sys.stdout.write(f"queued job {store.enqueue_scan(image, policy)} for {image}\n")
        return 0
    if args.command == "enqueue-registry":
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
    if args.command == "rescan-stale":
        sys.stdout.write(f"queued {store.enqueue_stale()} rescans\n")
        return 0
    if args.command in ("registry", "image"):
        return targets_cli.run(targets_cli.LocalTargets(store), args)
    return workercli.run(args, store)


def cmd_vulndb_import(store: ScanStore, paths: list[Path]) -> int:
    failed = 0
    for path in paths:
        report = import_path(path, store)
        formats = ", ".join(f"{k} {v}" for k, v in sorted(report.by_format.items()))
        sys.stdout.write(f"{path}: {report.records} records ({formats}), {report.rows} affected "
                         f"rows, {report.skipped} skipped\n")
        for err in report.errors[:20]:
            sys.stdout.write(f"  skipped {err}\n")
        failed += report.skipped
    return 1 if failed else 0


def cmd_vulndb_status(store: ScanStore, as_json: bool) -> int:
    status = store.status()
    if as_json:
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


def cmd_malware_import(paths: list[Path]) -> int:
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


def _via_server(args: argparse.Namespace) -> int:
    """``moray scan registry|image ...`` and ``moray vulndb import`` with ``--server``."""
    api = cli_api.Api(args.server, cli_api._token(args.token), args.ca)
    try:
        if args.group == "vulndb":
            r = api.call("POST", "/vulndb/import",
                         json={"files": targets_cli.advisory_files(args.paths)})
            sys.stdout.write(f"{args.server}: {r['records']} records, {r['rows']} affected "
                             f"rows, {r['skipped']} skipped, generation {r['generation']}\n")
            for err in r["errors"][:20]:
                sys.stdout.write(f"  skipped {err}\n")
            return 1 if r["skipped"] else 0

        class Remote:
            def call(self, method: str, path: str, body: dict[str, object] | None = None
                     ) -> object:
                return api.call(method, path, json=body)

        return targets_cli.run(Remote(), args)
    except cli_api.ApiError as err:
        sys.stderr.write(f"moray: {err}\n")
        return 1
    except httpx.TransportError as err:
        sys.stderr.write(f"moray: cannot reach the server at {api.http.base_url}: {err}\n")
        return 3


def open_store(args: argparse.Namespace) -> ScanStore:
    url = args.database_url or (None if args.db else os.environ.get("MORAY_DATABASE_URL"))
    return ScanStore(url or args.db or default_db_path())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.group in cli_api.GROUPS:
        return cli_api.run(args)
    try:
        if args.group == "malware":
            return cmd_malware_import(args.paths)
        if getattr(args, "server", None) and (
                args.group == "vulndb" or getattr(args, "command", "") in ("registry", "image")):
            return _via_server(args)
        store = open_store(args)
        try:
            if args.group == "scan":
                return cmd_scan(store, args)
            if args.command == "import":
                return cmd_vulndb_import(store, args.paths)
            return cmd_vulndb_status(store, args.json)
        finally:
            store.close()
    except BrokenPipeError:
        return 2  # the reader went away (``| head``)
    except AccessDenied as err:
        sys.stderr.write(f"moray: refused: {err}\n")
        return 1
    except LookupError as err:
        sys.stderr.write(f"moray: {err}\n")
        return 1
    except (ScanError, OSError) as err:
        sys.stderr.write(f"moray: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
