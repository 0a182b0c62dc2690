"""The `moray` CLI's commands for console users and API tokens (through the REST API,
with the same ``--server``/``--token``/``--ca`` as controlplane/server/cli_api.py):

    moray user create NAME --role R [--tenant T] [--password-stdin]
    moray user list                     moray user passwd NAME [--password-stdin]
    moray user disable|enable NAME      moray user delete NAME
    moray api-token create NAME ROLE [--tenant T] [--expires 30d]
    moray api-token list                moray api-token revoke ID

A password is read from the terminal (twice) or, with ``--password-stdin``, from the
first line of standard input; never from the command line (other users see it in ps).
``moray tokens create NAME ROLE`` is the old name of ``moray api-token create``;
``moray token ...`` is about enrolment tokens.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from moray.clientconfig import Api, from_args
from moray.controlplane.server.cli_api import _common, _out, _when, duration
from moray.exitcodes import FAILED, OK

USER_ROLES = ("admin", "operator", "auditor", "viewer")
TOKEN_ROLES = (*USER_ROLES, "admission")


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``user`` or ``api-token`` parser."""
    sub = p.add_subparsers(dest="command", required=True)
    if name == "user":
        c = sub.add_parser("create", help="create a console user")
        c.add_argument("name")
        c.add_argument("--role", required=True, choices=USER_ROLES)
        c.add_argument("--tenant", default=None,
                       help="the one tenant it may see and change (default: every tenant; "
                            "a tenant's admin: its own)")
        ls = sub.add_parser("list", help="console users (never a password)")
        pw = sub.add_parser("passwd", help="set a user's password (ends its sessions)")
        pw.add_argument("name")
        for p2 in (c, pw):
            p2.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of standard input")
        parsers = [c, ls, pw]
        for cmd, text in (("disable", "refuse its sign-in and end its sessions"),
                          ("enable", "allow its sign-in again"),
                          ("delete", "delete a user and end its sessions")):
            d = sub.add_parser(cmd, help=text)
            d.add_argument("name")
            parsers.append(d)
    else:
        c = sub.add_parser("create", help="create an API token with a role (printed once)")
        c.add_argument("name")
        c.add_argument("role", choices=TOKEN_ROLES)
        c.add_argument("--tenant", default=None,
                       help="the one tenant it may see and change (default: every tenant)")
        c.add_argument("--expires", "--ttl", type=duration, default=None, dest="ttl",
                       metavar="DURATION", help="lifetime: 3600, 12h, 30d, 8w (default: "
                       "until revoked)")
        ls = sub.add_parser("list", help="API tokens and their state (never the secret)")
        r = sub.add_parser("revoke", help="refuse a token from now on")
        r.add_argument("token_id", type=int)
        parsers = [c, ls, r]
    for p2 in parsers:
        _common(p2)
    p.set_defaults(handler=run)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("moray: the passwords differ")
    return first


def _users(api: Api, args: argparse.Namespace) -> int:
    if args.command == "create":
        body: dict[str, Any] = {"name": args.name, "role": args.role, "tenant": args.tenant,
                                "password": read_password(args.password_stdin)}
        r = api.call("POST", "/users", json=body)
        _out(r) if args.json else sys.stdout.write(
            f"created user {r['name']} ({r['role']}, tenant {r['tenant'] or '*'})\n")
        return OK
    if args.command == "list":
        rows = api.call("GET", "/users")
        if args.json:
            _out(rows)
            return OK
        sys.stdout.write(f"{'NAME':24} {'ROLE':9} {'TENANT':16} {'STATE':9} PASSWORD SET\n")
        for u in rows:
            state = "disabled" if u["disabled"] else "enabled"
            sys.stdout.write(f"{u['name'][:24]:24} {u['role']:9} {(u['tenant'] or '*')[:16]:16} "
                             f"{state:9} {_when(u['password_changed_at'])}\n")
        return OK
    if args.command == "delete":
        api.call("DELETE", f"/users/{args.name}")
        sys.stdout.write(f"deleted user {args.name}\n")
        return OK
    change: dict[str, Any] = (
        {"password": read_password(args.password_stdin)} if args.command == "passwd"
        else {"disabled": args.command == "disable"})
    r = api.call("PATCH", f"/users/{args.name}", json=change)
    done = {"passwd": "password set", "disable": "disabled", "enable": "enabled"}
    ended = "" if args.command == "enable" else " (its sessions ended)"
    _out(r) if args.json else sys.stdout.write(f"{r['name']}: {done[args.command]}{ended}\n")
    return OK


def _tokens(api: Api, args: argparse.Namespace) -> int:
    if args.command == "create":
        r = api.call("POST", "/tokens", json={"name": args.name, "role": args.role,
                                              "tenant": args.tenant, "ttl_seconds": args.ttl})
        _out(r) if args.json else sys.stdout.write(r["token"] + "\n")
        return OK
    if args.command == "revoke":
        r = api.call("POST", f"/tokens/{args.token_id}/revoke")
        _out(r) if args.json else sys.stdout.write(f"revoked API token {r['id']} "
                                                   f"({r['name']})\n")
        return OK
    rows = api.call("GET", "/tokens")
    if args.json:
        _out(rows)
        return OK
    sys.stdout.write(f"{'ID':>5} {'NAME':24} {'ROLE':9} {'TENANT':16} {'STATE':8} "
                     f"{'CREATED':19}  EXPIRES\n")
    for t in rows:
        sys.stdout.write(f"{t['id']:>5} {t['name'][:24]:24} {t['role']:9} "
                         f"{(t['tenant'] or '*')[:16]:16} {t['state']:8} "
                         f"{_when(t['created_at']):19}  {_when(t['expires_at'])}\n")
    return OK


def run(args: argparse.Namespace) -> int:
    config = from_args(args)
    api = Api(config, config.api_token())
    if args.group == "user":
        return _users(api, args)
    if args.group == "api-token":
        return _tokens(api, args)
    return FAILED
