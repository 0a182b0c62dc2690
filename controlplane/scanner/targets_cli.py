"""``moray scan registry|image ...`` and ``moray vulndb import --server``: what
moray-server scans on its schedule, registered through its REST API (when a server is
configured: ``--server``, ``$MORAY_SERVER`` or the config file, see moray.clientconfig) or
straight in a store the server uses (``--db`` / ``--database-url``).

    moray scan registry add 127.0.0.1:5000 --repository team/app --insecure-registry \\
        --interval 3600 --policy prod.yaml --credentials env:REGISTRY
    moray scan registry list | run ID | remove ID
    moray scan image add registry.example.com/team/app:1.0 --interval 86400
    moray scan image list | remove ID

Credentials are a reference (``env:NAME`` -> ``$NAME_USERNAME``/``$NAME_PASSWORD``,
``file:/path``) that the server resolves when it lists and each worker when it pulls.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moray.api.tenants import DEFAULT_TENANT
from moray.clientconfig import add_client_options
from moray.errors import ControlPlaneError

if TYPE_CHECKING:
    from moray.controlplane.store.scanstore import ScanStore


class TargetNotFound(ControlPlaneError, LookupError):
    """No registered registry or image has this id."""


class AlreadyRegistered(ControlPlaneError):
    """The same registry and repositories (or the same image) are registered already."""


class Targets(Protocol):
    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...


def register(ssub: Any) -> None:
    """Add ``registry`` and ``image`` to ``moray scan``'s subcommands."""
    for kind, kinds in (("registry", "registries"), ("image", "images")):
        p = ssub.add_parser(kind, help=f"{kinds} moray-server scans on a schedule")
        sub = p.add_subparsers(dest="target_command", required=True)
        add = sub.add_parser("add", help=f"register a {kind}")
        if kind == "registry":
            add.add_argument("target", metavar="HOST[:PORT]")
            add.add_argument("--repository", action="append", default=[],
                             help="only this repository (repeatable; default: the catalog)")
            add.add_argument("--interval", type=float, default=3600.0,
                             help="seconds between listings (default 3600)")
        else:
            add.add_argument("target", metavar="IMAGE")
            add.add_argument("--interval", type=float, default=86400.0,
                             help="seconds between scans (default 86400)")
        add.add_argument("--credentials", default="",
                         help="env:NAME or file:/path, resolved where it is used")
        add.add_argument("--insecure-registry", action="store_true",
                         help="plain HTTP (loopback registries only)")
        add.add_argument("--policy", type=Path, help="ImageAssurancePolicy for the verdicts")
        add.add_argument("--tenant", default=None,
                         help="whose it is (its images are that tenant's; default: the API "
                         "token's tenant, else 'default')")
        ls = sub.add_parser("list", help=f"registered {kinds}")
        ls.add_argument("--json", action="store_true")
        rm = sub.add_parser("remove", help=f"unregister a {kind}")
        rm.add_argument("id", type=int)
        commands = [add, ls, rm]
        if kind == "registry":
            run = sub.add_parser("run", help="list the registry at the next scheduler tick")
            run.add_argument("id", type=int)
            commands.append(run)
        for c in commands:
            server_options(c)


def server_options(p: argparse.ArgumentParser) -> None:
    add_client_options(p, server_help="moray-server's REST API ($MORAY_SERVER); default: "
                       "the local store")


class LocalTargets:
    """The REST endpoints' behaviour on a local store (the same checks, the same shapes,
    audited as ``local:<user>``; the server's scheduler sees the change at its next tick)."""

    def __init__(self, store: ScanStore) -> None:
        self.store = store
        self.actor = f"local:{getpass.getuser()}"

    def _audit(self, action: str, target: str, detail: dict[str, Any]) -> None:
        from moray.controlplane.store.cpstore import ControlPlaneStore

        ControlPlaneStore(self.store.engine).record_audit(self.actor, action, target, detail,
                                                          tenant=detail.get("tenant"))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        from moray.controlplane.scanner.service.scheduler import (
            already_registered,
            check_image,
            check_registry,
        )

        s, b = self.store, body or {}
        kind, _, rest = path.strip("/").partition("/")
        if (method, kind) == ("POST", "scan-registries") and not rest:
            check_registry(b["registry"], b["insecure"])
            tenant = b.get("tenant") or DEFAULT_TENANT
            same = already_registered(s, b["registry"], b["repositories"], tenant=tenant)
            if same is not None:
                raise AlreadyRegistered(f"{b['registry']} with these repositories is "
                                        f"registered already (id {same})")
            row = s.add_registry(b["registry"], repositories=b["repositories"],
                                 credentials=b["credentials"], insecure=b["insecure"],
                                 interval_seconds=b["interval_seconds"],
                                 policy=b["policy"], tenant=tenant).as_dict()
            self._audit("scan_registry.add", b["registry"], row)
            return row
        if (method, kind) == ("POST", "scan-images"):
            check_image(b["image"], b["insecure"])
            tenant = b.get("tenant") or DEFAULT_TENANT
            same = already_registered(s, image=b["image"], tenant=tenant)
            if same is not None:
                raise AlreadyRegistered(f"{b['image']} is registered already (id {same})")
            row = s.add_image(b["image"], credentials=b["credentials"],
                              insecure=b["insecure"], interval_seconds=b["interval_seconds"],
                              policy=b["policy"], tenant=tenant).as_dict()
            self._audit("scan_image.add", b["image"], row)
            return row
        if method == "GET":
            rows = s.registries() if kind == "scan-registries" else s.images()
            return [r.as_dict() for r in rows]
        row_id = int(rest.split("/")[0])
        registry = kind == "scan-registries"
        if method == "DELETE":
            ok = s.remove_registry(row_id) if registry else s.remove_image(row_id)
            action = "scan_registry.remove" if registry else "scan_image.remove"
        else:
            ok, action = s.run_registry_now(row_id), "scan_registry.run"
        if not ok:
            raise TargetNotFound(f"no {'registry' if registry else 'image'} {row_id}")
        self._audit(action, str(row_id), {})
        return {"ok": True}


def run(targets: Targets, args: argparse.Namespace) -> int:
    base = "/scan-registries" if args.command == "registry" else "/scan-images"
    cmd = args.target_command
    if cmd == "add":
        from moray.controlplane.scanner.service import credentials
        from moray.controlplane.scanner.service.scheduler import check_policy

        policy = check_policy(args.policy.read_text()) if args.policy else ""
        credentials.check_reference(args.credentials)
        body: dict[str, Any] = {"credentials": args.credentials,
                                "insecure": args.insecure_registry,
                                "interval_seconds": args.interval, "policy": policy}
        if args.tenant:
            body["tenant"] = args.tenant
        if args.command == "registry":
            body |= {"registry": args.target, "repositories": args.repository}
        else:
            body |= {"image": args.target}
        row = targets.call("POST", base, body)
        sys.stdout.write(f"registered {args.command} {row['id']}: {args.target}\n")
        return 0
    if cmd == "list":
        rows = targets.call("GET", base)
        if args.json:
            sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
            return 0
        for r in rows:
            name = r.get("registry") or r.get("image")
            extra = (f" repositories={','.join(r['repositories']) or '*'} "
                     f"images={r['last_images']}" if "registry" in r else "")
            error = f" error={r['last_error']!r}" if r.get("last_error") else ""
            sys.stdout.write(f"{r['id']:>4}  {r.get('tenant', '-')}  {name}  "
                             f"every {r['interval_seconds']:g}s"
                             f"{extra}{' insecure' if r['insecure'] else ''}{error}\n")
        return 0
    targets.call("DELETE" if cmd == "remove" else "POST",
                 f"{base}/{args.id}" + ("/run" if cmd == "run" else ""))
    sys.stdout.write(f"{cmd} {args.command} {args.id}: ok\n")
    return 0


def advisory_files(paths: list[Path]) -> dict[str, str]:
    """name -> content of every advisory file under ``paths`` (for a REST import)."""
    files: dict[str, str] = {}
    for root in paths:
        found = sorted(root.rglob("*")) if root.is_dir() else [root]
        for p in found:
            if p.is_file() and not p.is_symlink() and p.suffix in (".json", ".yaml", ".yml"):
                files[str(p)] = p.read_text()
    return files
