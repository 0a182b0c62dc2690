"""``moray tenant``: the tenant registry on the control plane's REST API.

    moray tenant list                     tenants, their agents and policies
    moray tenant create NAME [--comment]  a new tenant (a global admin)
    moray tenant delete NAME              remove it (refused while it has agents)

The Tenant Manager's distribution of policies to several tenants is ``moray policy
distribute FILE --tenants a,b | --all-tenants`` (controlplane/server/cli_api.py). Server,
token and CA as every REST command (moray.clientconfig); exit codes (moray.exitcodes): 0
done, 1 the server refused (its message printed), 3 server unreachable.
"""

from __future__ import annotations

import argparse
import sys

from moray.clientconfig import Api, add_client_options, from_args
from moray.controlplane.server.cli_api import _out, _when
from moray.exitcodes import OK


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray tenant``'s parser."""
    assert name == "tenant"
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="tenants, with their agents and live policies")
    create = sub.add_parser("create", help="create a tenant (a global admin)")
    create.add_argument("name")
    create.add_argument("--comment", default="")
    delete = sub.add_parser("delete", help="delete a tenant (refused while it has agents)")
    delete.add_argument("name")
    for q in (ls, create, delete):
        add_client_options(q)
        q.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = from_args(args)
    api = Api(config, config.api_token())
    if args.command == "list":
        rows = api.call("GET", "/tenants")
        if args.json:
            _out(rows)
            return OK
        sys.stdout.write(f"{'TENANT':32} {'AGENTS':>7} {'POLICIES':>8}  CREATED\n")
        for r in rows:
            sys.stdout.write(f"{r['name']:32} {r['agents']:>7} {r['policies']:>8}  "
                             f"{_when(r['created_at'])}\n")
        return OK
    if args.command == "create":
        r = api.call("POST", "/tenants", json={"name": args.name, "comment": args.comment})
        _out(r) if args.json else sys.stdout.write(f"tenant {r['name']} created\n")
        return OK
    r = api.call("DELETE", f"/tenants/{args.name}")
    _out(r) if args.json else sys.stdout.write(f"tenant {args.name} deleted\n")
    return OK
