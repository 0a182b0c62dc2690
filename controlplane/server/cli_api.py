"""The `moray` CLI's commands that talk to the control plane's REST API:

    moray policy apply FILE...         moray agents list
    moray policy list                  moray agents revoke AGENT_ID
    moray policy history NAME          moray agents token [--label k=v] [--tenant T]
    moray policy rollback NAME VERSION moray events query [--agent ID] [--type T]
    moray policy delete NAME           moray events follow [--agent ID] [--type T]
    moray policy distribute FILE --tenants a,b | --all-tenants   (the Tenant Manager)
    moray audit                        moray tokens create NAME ROLE
    moray workloads [--vulnerability CVE-X] [--namespace NS] [--include-denied]
    moray token create [--uses N | --unlimited] [--expires 30d] [--label k=v] [--tenant T]
    moray token list [--all]           moray token revoke ID

``moray token``: enrolment tokens (``moray agents token`` is ``moray token create``);
``moray tokens``: API tokens.

Server, token and CA: moray.clientconfig (``--server``/``--token``/``--ca``, then
``$MORAY_SERVER``/``$MORAY_TOKEN``/``$MORAY_CA``, then the config file); the server defaults
to http://127.0.0.1:7080 (a server run with ``--http-tls``: ``https://...`` and its
pki/ca.pem as CA), the token to ``$MORAY_DATA_DIR/admin.token`` when readable (the server
writes the first admin token there). Exit codes (moray.exitcodes): 0 done, 1 the server
refused (the message names the file, line and field for a bad policy), 3 server
unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from moray.clientconfig import Api, ApiError, add_client_options, from_args
from moray.exitcodes import FAILED, OK

GROUPS = ("policy", "agents", "events", "audit", "tokens", "token", "workloads")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _common(p: argparse.ArgumentParser) -> None:
    add_client_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s parser of one of ``GROUPS``."""
    {"policy": _register_policy, "agents": _register_agents, "events": _register_events,
     "audit": _register_audit, "tokens": _register_tokens, "token": _register_token,
     "workloads": _register_workloads}[name](p)
    p.set_defaults(handler=run)


def _register_policy(pol: argparse.ArgumentParser) -> None:
    psub = pol.add_subparsers(dest="command", required=True)
    a = psub.add_parser("apply", help="store policy files as new versions")
    a.add_argument("files", type=Path, nargs="+")
    a.add_argument("--comment", default="")
    ls = psub.add_parser("list", help="current policies")
    ls.add_argument("--tenant", default=None)
    h = psub.add_parser("history", help="every version of a policy")
    h.add_argument("name")
    rb = psub.add_parser("rollback", help="make an earlier version current (as a new version)")
    rb.add_argument("name")
    rb.add_argument("version", type=int)
    rb.add_argument("--comment", default="")
    d = psub.add_parser("delete", help="remove a policy from every agent")
    d.add_argument("name")
    dist = psub.add_parser("distribute", help="store a policy file in several tenants at "
                           "once, all or nothing (a global admin or operator)")
    dist.add_argument("file", type=Path)
    which = dist.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenants", help="comma-separated tenant names")
    which.add_argument("--all-tenants", action="store_true", help="every tenant")
    dist.add_argument("--comment", default="")
    for p in (a, ls, h, rb, d, dist):
        _common(p)
    for p in (h, rb, d):
        p.add_argument("--tenant", default=None,
                       help="default: the token's tenant, else 'default'")


def _register_agents(ag: argparse.ArgumentParser) -> None:
    asub = ag.add_subparsers(dest="command", required=True)
    al = asub.add_parser("list", help="agents, their status and policy versions")
    al.add_argument("--tenant", default=None)
    al.add_argument("--enrollment-token", type=int, default=None, metavar="TOKEN_ID",
                    dest="enrollment_token", help="only agents enrolled with this token")
    ar = asub.add_parser("revoke", help="refuse an agent from now on")
    ar.add_argument("agent_id")
    at = asub.add_parser("token", help="create an enrolment token (= moray token create)")
    _token_create_options(at)
    for p in (al, ar, at):
        _common(p)


def _token_create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", default=None,
                   help="the agents' tenant (default: the API token's, else 'default')")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label every agent enrolled with it gets (repeatable)")
    uses = p.add_mutually_exclusive_group()
    uses.add_argument("--uses", type=int, default=1, metavar="N",
                      help="enrolments it allows (default 1: one-time)")
    uses.add_argument("--unlimited", action="store_true",
                      help="any number of enrolments until it expires or is revoked (a "
                           "DaemonSet's token)")
    p.add_argument("--expires", "--ttl", type=duration, default=86400.0, dest="ttl",
                   metavar="DURATION",
                   help="lifetime: 3600, 90m, 12h, 30d, 8w (default 1d, at most 366d)")
    p.add_argument("--comment", default="", help="what it is for (shown by moray token list)")


def duration(text: str) -> float:
    """``3600``, ``3600s``, ``90m``, ``12h``, ``30d``, ``8w`` -> seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in DURATION_UNITS else text
    try:
        seconds = float(number) * DURATION_UNITS.get(unit, 1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: e.g. 3600, 12h, 30d") \
            from err
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: must be positive")
    return seconds


def _register_token(tk: argparse.ArgumentParser) -> None:
    tsub = tk.add_subparsers(dest="command", required=True)
    tc = tsub.add_parser("create", help="create an enrolment token (printed once: only its "
                                        "hash is stored)")
    _token_create_options(tc)
    tl = tsub.add_parser("list", help="enrolment tokens: uses left, expiry, agents enrolled "
                                      "(never the token)")
    tl.add_argument("--tenant", default=None)
    tl.add_argument("--all", action="store_true",
                    help="also expired, revoked and used-up tokens")
    tr = tsub.add_parser("revoke", help="refuse every later enrolment with a token (its "
                                        "agents stay enrolled)")
    tr.add_argument("token_id", type=int)
    for p in (tc, tl, tr):
        _common(p)


def _register_events(ev: argparse.ArgumentParser) -> None:
    esub = ev.add_subparsers(dest="command", required=True)
    for name, text in (("query", "print stored events"), ("follow", "print new events")):
        p = esub.add_parser(name, help=text)
        p.add_argument("--agent", default=None)
        p.add_argument("--type", default=None)
        p.add_argument("--after", type=int, default=0, help="events with seq > AFTER")
        p.add_argument("--limit", type=int, default=100)
        _common(p)
        if name == "follow":
            p.add_argument("--interval", type=float, default=1.0)
            p.add_argument("--max", type=int, default=0, help="stop after N events")
            p.add_argument("--timeout", type=float, default=0, help="stop after N seconds")


def _register_audit(au: argparse.ArgumentParser) -> None:
    au.add_argument("--after", type=int, default=0)
    au.add_argument("--limit", type=int, default=100)
    _common(au)


def _register_tokens(tk: argparse.ArgumentParser) -> None:
    tsub = tk.add_subparsers(dest="command", required=True)
    tc = tsub.add_parser("create", help="create an API token with a role")
    tc.add_argument("name")
    tc.add_argument("role", choices=("admin", "operator", "auditor", "viewer", "admission"))
    _common(tc)


def _register_workloads(wl: argparse.ArgumentParser) -> None:
    wl.add_argument("--vulnerability", metavar="ID",
                    help="only workloads running an image with this vulnerability (CVE, GHSA, "
                         "... or any alias)")
    wl.add_argument("--namespace", default=None)
    wl.add_argument("--cluster", default=None)
    wl.add_argument("--include-denied", action="store_true",
                    help="also workloads the webhook refused (never ran)")
    wl.add_argument("--limit", type=int, default=1000)
    _common(wl)


def _workloads(api: Api, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "include_denied": args.include_denied}
    for key in ("vulnerability", "namespace", "cluster"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    rows = api.call("GET", "/workloads", params=params)
    if args.json:
        _out(rows)
        return OK
    for w in rows:
        sys.stdout.write(f"{w['namespace']}/{w['kind']}/{w['name']}  {w['decision']}  "
                         f"seen {_when(w['last_seen'])}\n")
        for i in w["images"]:
            found = ", ".join(f"{m['id']} in {m['package']} {m['version']}"
                              for m in i.get("matched", []))
            sys.stdout.write(f"    {i['container_type']:9} {i['container']:20} {i['image']}  "
                             f"{i['digest'][:19] or '-'}  {i['verdict']}  "
                             f"{i['vulnerabilities']} vulns{'  ' + found if found else ''}\n")
    return OK


def _out(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):   # an agent's clock (or lie) out of range
        return f"@{ts:.0f}"


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"moray: --label wants KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _policy(api: Api, args: argparse.Namespace) -> int:
    if args.command == "apply":
        failed = 0
        for path in args.files:
            try:
                r = api.call("POST", "/policies", json={
                    "content": path.read_text(), "source": str(path), "comment": args.comment})
            except ApiError as err:
                failed += 1
                body = err.body if isinstance(err.body, dict) else {}
                problems = body.get("problems") or [{}]
                if problems[0].get("field"):
                    for p in problems:
                        sys.stderr.write(f"moray: {p['file']}:{p['line']}: {p['field']}: "
                                         f"{p['message']}\n")
                else:
                    sys.stderr.write(f"moray: {body.get('error') or err}\n")
                continue
            if args.json:
                _out(r)
                continue
            for p in r["policies"]:
                state = "applied" if p["changed"] else "unchanged"
                sys.stdout.write(f"{p['tenant']}/{p['name']}: version {p['version']} "
                                 f"({state})\n")
        return FAILED if failed else OK
    if args.command == "list":
        rows = api.call("GET", "/policies", params={"tenant": args.tenant} if args.tenant
                        else {})
        if args.json:
            _out(rows)
            return 0
        sys.stdout.write(f"{'TENANT':12} {'NAME':28} {'VERSION':>7}  {'UPDATED':19}  AUTHOR\n")
        for r in rows:
            sys.stdout.write(f"{r['tenant']:12} {r['name']:28} {r['version']:>7}  "
                             f"{_when(r['created_at']):19}  {r['author']}\n")
        return 0
    if args.command == "distribute":
        return _distribute(api, args)
    tenant = {"tenant": args.tenant} if getattr(args, "tenant", None) else {}
    if args.command == "history":
        rows = api.call("GET", f"/policies/{args.name}/history", params=tenant)
        if args.json:
            _out(rows)
            return 0
        for r in rows:
            note = r["comment"] or r["source"]
            sys.stdout.write(f"v{r['version']:<4} {r['action']:9} {_when(r['created_at'])}  "
                             f"{r['author']:24} {r['sha256'][:12]}  {note}\n")
        return 0
    if args.command == "rollback":
        r = api.call("POST", f"/policies/{args.name}/rollback", params=tenant,
                     json={"version": args.version, "comment": args.comment})
        if args.json:
            _out(r)
        else:
            sys.stdout.write(f"{r['tenant']}/{r['name']}: version {r['version']} "
                             f"(rollback to v{args.version})\n")
        return 0
    r = api.call("DELETE", f"/policies/{args.name}", params=tenant)
    if args.json:
        _out(r)
    else:
        sys.stdout.write(f"{r['tenant']}/{r['name']}: deleted (version {r['version']})\n")
    return 0


def _distribute(api: Api, args: argparse.Namespace) -> int:
    tenants = ["*"] if args.all_tenants else [t.strip() for t in args.tenants.split(",")
                                              if t.strip()]
    r = api.call("POST", "/policies/distribute", json={
        "tenants": tenants, "content": args.file.read_text(), "source": str(args.file),
        "comment": args.comment})
    if args.json:
        _out(r)
        return OK
    for tenant, got in sorted(r["tenants"].items()):
        for p in got["policies"]:
            state = "applied" if p["changed"] else "unchanged"
            sys.stdout.write(f"{tenant}/{p['name']}: version {p['version']} ({state})\n")
    return OK


def _agents(api: Api, args: argparse.Namespace) -> int:
    if args.command == "list":
        params = {k: getattr(args, k) for k in ("tenant", "enrollment_token")
                  if getattr(args, k) is not None}
        rows = []       # pages of 1000, following next (a listing of any size)
        after: str | None = None
        while True:
            got = api.call("GET", "/agents", params={**params, "page": 1, "limit": 1000,
                                                     **({"after": after} if after else {})})
            rows.extend(got["agents"])
            after = got["next"]
            if not after:
                break
        if args.json:
            _out(rows)
            return 0
        sys.stdout.write(f"{'AGENT':32} {'KIND':6} {'HOST':20} {'STATE':9} {'LAST SEEN':19}  "
                         f"LABELS / POLICIES\n")
        for r in rows:
            state = "revoked" if r["revoked"] else ("online" if r["connected"] else "offline")
            labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
            pols = ",".join(f"{n}@v{p['version']}:{p['status']}"
                            for n, p in sorted(r["policies"].items()))
            sys.stdout.write(f"{r['id']:32} {r.get('kind', 'agent')[:6]:6} "
                             f"{r['hostname'][:20]:20} {state:9} "
                             f"{_when(r['last_seen']):19}  {labels} {pols}\n")
        return 0
    if args.command == "revoke":
        r = api.call("POST", f"/agents/{args.agent_id}/revoke")
        _out(r) if args.json else sys.stdout.write(f"revoked {r['id']}\n")
        return 0
    return _token(api, args)


def _token(api: Api, args: argparse.Namespace) -> int:
    """``moray token create|list|revoke`` (and ``moray agents token``)."""
    if args.command in ("create", "token"):
        r = api.call("POST", "/enrollment-tokens", json={
            "tenant": args.tenant, "labels": _labels(args.label), "ttl_seconds": args.ttl,
            "uses": None if args.unlimited else args.uses, "comment": args.comment})
        _out(r) if args.json else sys.stdout.write(r["token"] + "\n")
        return OK
    if args.command == "revoke":
        r = api.call("POST", f"/enrollment-tokens/{args.token_id}/revoke")
        _out(r) if args.json else sys.stdout.write(
            f"revoked enrolment token {r['id']} ({r['agents']} agents enrolled with it stay "
            f"enrolled: moray agents list --enrollment-token {r['id']})\n")
        return OK
    params: dict[str, Any] = {"all": args.all}
    if args.tenant:
        params["tenant"] = args.tenant
    rows = api.call("GET", "/enrollment-tokens", params=params)
    if args.json:
        _out(rows)
        return OK
    sys.stdout.write(f"{'ID':>5} {'TENANT':12} {'STATE':8} {'USES LEFT':>9} {'USED':>6} "
                     f"{'AGENTS':>6}  {'EXPIRES':19}  LABELS / COMMENT\n")
    for r in rows:
        left = "unlimited" if r["unlimited"] else str(r["uses_left"])
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        sys.stdout.write(f"{r['id']:>5} {r['tenant'][:12]:12} {r['state']:8} {left:>9} "
                         f"{r['uses']:>6} {r['agents']:>6}  {_when(r['expires_at']):19}  "
                         f"{labels} {r['comment']}\n")
    return OK


def _print_events(rows: list[dict[str, Any]], as_json: bool) -> None:
    for r in rows:
        if as_json:
            sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
        else:
            ev = r["event"] if r["event"] is not None else {
                "invalid_payload": r.get("invalid_payload")}
            sys.stdout.write(f"{r['seq']:>8} {_when(r['time_ms'] / 1000)} {r['agent_id'][:12]} "
                             f"{r['type']:10} {json.dumps(ev, sort_keys=True)[:160]}\n")
    sys.stdout.flush()


def _events(api: Api, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"after": args.after, "limit": args.limit}
    for key in ("agent", "type"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.command == "query":
        _print_events(api.call("GET", "/events", params=params), args.json)
        return 0
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while True:
        rows = api.call("GET", "/events", params=params)
        if args.max:
            rows = rows[: args.max - seen]
        _print_events(rows, args.json)
        seen += len(rows)
        if rows:
            params["after"] = rows[-1]["seq"]
        if (args.max and seen >= args.max) or (deadline and time.monotonic() > deadline):
            return 0
        if len(rows) < args.limit:
            time.sleep(args.interval)


def run(args: argparse.Namespace) -> int:
    """Run a command of one of ``GROUPS``: 0 done, 1 a policy file was refused; the
    server's other refusals (ApiError) and an unreachable server raise."""
    config = from_args(args)
    api = Api(config, config.api_token())
    if args.group == "policy":
        return _policy(api, args)
    if args.group == "agents":
        return _agents(api, args)
    if args.group == "events":
        return _events(api, args)
    if args.group == "workloads":
        return _workloads(api, args)
    if args.group == "token":
        return _token(api, args)
    if args.group == "audit":
        rows = api.call("GET", "/audit", params={"after": args.after, "limit": args.limit})
        if args.json:
            _out(rows)
        else:
            for r in rows:
                sys.stdout.write(f"{r['id']:>6} {_when(r['at'])} {r['actor']:28} "
                                 f"{r['action']:20} {r['target']} "
                                 f"{json.dumps(r['detail'], sort_keys=True)}\n")
        return OK
    r = api.call("POST", "/tokens", json={"name": args.name, "role": args.role})
    _out(r) if args.json else sys.stdout.write(r["token"] + "\n")
    return OK
