"""``moray micro`` (= ``moray-micro``): the MicroEnforcer, a container's entrypoint wrapper.

    moray micro --policy /etc/moray/policy.yaml [--events FILE] -- CMD ARGS...
    moray micro --server HOST:7443 --ca-sha256 ... [--policy FILE] -- CMD ARGS...

Runs CMD as its child under a seccomp filter with user notification (no capabilities, no
BPF, no host mounts; sets no_new_privs) and enforces the runtime policies of FILE (the
agent's format, docs/policy.md) on CMD and everything it starts (docs/micro.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from moray.errors import ConfigError

log = logging.getLogger(__name__)


def add_group(name: str, p: argparse.ArgumentParser) -> None:
    """Fill ``moray``'s ``micro`` parser (moray.cli)."""
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    p.set_defaults(handler=run_command)
    p.add_argument("--policy", type=Path, action="append", default=[], metavar="FILE",
                   help="runtime policy file (YAML/JSON, the agent's format); repeatable; "
                        "needed unless --server")
    p.add_argument("--events", default="stderr", metavar="DEST",
                   help="where events go: stderr (default: the workload's stdout stays its "
                        "own), stdout, or a file (appended)")
    p.add_argument("--node", default=None, help="the events' node (default: host name)")
    p.add_argument("--drift-inventory", action="append", default=[], metavar="DIR",
                   help="hash the executables and shared objects under DIR at start: one "
                        "changed after start but with the same content under the same path "
                        "is not drift (a chmod, a touch); repeatable (docs/micro.md)")
    p.add_argument("--continue-opens", action="store_true",
                   help="let allowed opens continue in the kernel instead of opening them "
                        "here and handing the fd over: best effort against a caller that "
                        "changes the path meanwhile (docs/micro.md); for comparison")
    p.add_argument("--explain", action="store_true",
                   help="print what would be enforced (notified and refused calls, rule "
                        "kinds not enforced here) as JSON and exit")
    cp = p.add_argument_group(
        "control plane (the agent's enrolment and mTLS: policies fetched before the "
        "workload starts, events sent; listed by the server with kind micro)")
    cp.add_argument("--server", default=None, metavar="HOST:PORT",
                    help="moray-server (or gateway) agent endpoint (gRPC, mTLS), e.g. "
                         "server:7443")
    cp.add_argument("--enroll-token", "--token", dest="enroll_token", default=None,
                    help="enrolment token (better: $MORAY_ENROLL_TOKEN)")
    cp.add_argument("--ca", default=None, help="server CA certificate (PEM) for enrolment")
    cp.add_argument("--ca-sha256", default=None, help="or the CA's pinned SHA-256")
    cp.add_argument("--enroll-server", default=None, metavar="HOST:PORT",
                    help="enrolment endpoint (default: the server's host, port 7444)")
    cp.add_argument("--data-dir", default="/tmp/moray-micro", metavar="DIR",
                    help="identity and event spool (default /tmp/moray-micro)")
    cp.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                    help="label of this enforcer (repeatable)")
    cp.add_argument("--sync-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="wait up to this long for the server's policies before starting "
                         "the workload (default 30; not fetched: the workload is not "
                         "started)")
    cp.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="at exit, wait up to this long for spooled events to reach the "
                         "server (default 10; what is left stays in the spool)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the workload")


def run_command(args: argparse.Namespace) -> int:
    from moray.api.policy.load import load_file
    from moray.micro.events import Sink
    from moray.micro.supervisor import Supervisor

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not args.policy and not args.server:
        raise ConfigError("moray micro: --policy FILE or --server HOST:PORT is needed")
    policies = [p for f in args.policy for p in load_file(f)]
    if not cmd and not args.explain:
        raise ConfigError("moray micro: no command (moray micro --policy FILE -- CMD ARGS)")
    link = None
    if args.server:
        from moray.micro import server

        server.fetch(vars(args), args.sync_timeout)
        link = server.Link(policies, server.held(args.data_dir), lambda p: None)
        policies = link.policies()
    sink = None if args.explain else Sink(args.events)
    sup = Supervisor(policies, sink, node=args.node, exact=not args.continue_opens,
                     inventory=args.drift_inventory)
    if link is not None:
        link.update = sup.update
    report = sup.report_start(cmd)
    if args.explain:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for what in report["unsupported"]:
        log.warning("not enforced by moray micro: %s", what)
    for note in report["notes"]:
        log.info("%s", note)
    log.info("moray micro: notified %s; refused %s", ",".join(report["notified"]),
             ",".join(report["refused"]) or "-")
    client = _control_plane(args, sup, link) if link is not None else None
    try:
        return sup.run(cmd)
    finally:
        assert sink is not None
        sink.close()
        if client is not None:
            _drain(client, args.drain_timeout)


def _control_plane(args: argparse.Namespace, sup: Any, link: Any) -> Any:
    """The agent's client for events, heartbeats and later pushes (moray.micro.server),
    started after the clone (no thread may exist then)."""
    from moray.micro import server

    client = server.make_client(vars(args), link)
    sup.forward = client.send
    sup.after_spawn = client.start
    return client


def _drain(client: Any, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while client.spool.stats().records and time.monotonic() < deadline:
        time.sleep(0.05)
    left = client.spool.stats().records
    if left:
        log.warning("moray micro: %d events not yet sent (kept in the spool)", left)
    client.stop()
