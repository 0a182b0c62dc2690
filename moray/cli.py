"""``moray``: the one command, a subcommand per tool (docs/cli.md lists them all).

    moray agent run|probe|policy ...|unload     the host agent          (= moray-agent)
    moray server                                the control plane       (= moray-server)
    moray gateway run|cert                      agents' gateway tier    (= moray-gateway)
    moray scan IMAGE                            scan an image for CI    (= moray-scan)
    moray scan worker                           take and run scan jobs  (= moray-scanner-worker)
    moray scan enqueue|jobs|registry|image|...  scan jobs, scheduled targets
    moray vulndb import|status, moray malware import
    moray policy|agents|events|audit|tokens ... the control plane's REST API
    moray token create|list|revoke              enrolment tokens
    moray user create|list|passwd|disable|...   console users
    moray api-token create|list|revoke          API tokens (moray tokens create: old name)
    moray workloads [--vulnerability CVE-X]     what the admission webhook has seen
    moray tenant list|create|delete             tenants (isolation domains)
    moray kube-enforcer --server URL ...        admission webhook  (= moray-kube-enforcer)
    moray micro --policy FILE -- CMD ARGS       in-container enforcer (= moray-micro)
    moray nano check|compile|layer              Lambda function policies and layer

``moray-agent``, ``moray-server``, ``moray-gateway``, ``moray-scan``,
``moray-scanner-worker``, ``moray-kube-enforcer`` and ``moray-micro`` are aliases: the
same parser and handlers with the subcommand put in front (``moray-scan ARGS`` is
``moray scan IMAGE-form ARGS``, so an image path named like a subcommand still scans).

``moray scan X``: X is a subcommand when it is one of ``SCAN_COMMANDS``, else the image
(``./jobs`` scans a local folder called ``jobs``).

Each group's module is imported only when the command line selects it (``moray scan
IMAGE`` does not load the server); ``moray --help`` imports none. Logging is set up here
once (moray.logs); a :class:`~moray.errors.MorayError` or ``OSError`` that reaches this
entry point is printed as one line and exits with the code of moray.exitcodes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from moray import __version__, exitcodes, logs
from moray.errors import ConfigError, ControlPlaneError, MorayError

log = logging.getLogger("moray")

# group -> (module that fills its parser with ``add_group(name, parser)``, help)
GROUPS: dict[str, tuple[str, str]] = {
    "agent": ("moray.agent.cli", "the host agent: run, probe, policy, unload (= moray-agent)"),
    "server": ("moray.controlplane.server.main", "run the control plane server "
               "(= moray-server)"),
    "gateway": ("moray.controlplane.gateway.main", "run a gateway between agents and the "
                "server; issue its certificate (= moray-gateway)"),
    "scan": ("moray.controlplane.cli", "scan an image (= moray-scan); scan jobs, workers "
             "(= moray-scanner-worker) and scheduled targets"),
    "vulndb": ("moray.controlplane.cli", "vulnerability knowledge base"),
    "malware": ("moray.controlplane.cli", "malware rules and hash lists"),
    "policy": ("moray.controlplane.server.cli_api", "runtime policies on the control plane"),
    "agents": ("moray.controlplane.server.cli_api", "enrolled agents"),
    "events": ("moray.controlplane.server.cli_api", "events the agents reported"),
    "audit": ("moray.controlplane.server.cli_api", "who changed what and when"),
    "tokens": ("moray.controlplane.server.cli_api", "API tokens (old name of api-token)"),
    "api-token": ("moray.controlplane.server.cli_accounts", "API tokens: create, list, "
                  "revoke"),
    "user": ("moray.controlplane.server.cli_accounts", "console users: create, list, "
             "passwd, disable, enable, delete"),
    "token": ("moray.controlplane.server.cli_api", "enrolment tokens: create (one-time or "
              "multi-use), list, revoke"),
    "workloads": ("moray.controlplane.server.cli_api", "workloads the admission webhook has "
                  "seen; which run an image with a vulnerability"),
    "tenant": ("moray.controlplane.server.cli_tenants", "tenants (isolation domains): list, "
               "create, delete"),
    "kube-enforcer": ("moray.controlplane.kubeenforcer.main", "Kubernetes validating "
                      "admission webhook: image assurance before pods start "
                      "(= moray-kube-enforcer)"),
    "micro": ("moray.micro.cli", "the MicroEnforcer: a container's entrypoint wrapper "
              "enforcing runtime policies with seccomp user notification (= moray-micro)"),
    "nano": ("moray.nano.cli", "the NanoEnforcer for Python functions on AWS Lambda: "
             "check and compile function policies, build the layer"),
}
# ``moray scan``'s subcommands; anything else after ``scan`` is an image (SCAN_IMAGE form)
SCAN_COMMANDS = ("enqueue", "enqueue-registry", "worker", "jobs", "rescan-stale", "registry",
                 "image")
SCAN_IMAGE = "IMAGE"
# alias -> the subcommand words it stands for
ALIASES: dict[str, tuple[str, ...]] = {
    "moray-agent": ("agent",),
    "moray-server": ("server",),
    "moray-gateway": ("gateway",),
    "moray-scan": ("scan", SCAN_IMAGE),
    "moray-scanner-worker": ("scan", "worker"),
    "moray-kube-enforcer": ("kube-enforcer",),
    "moray-micro": ("micro",),
}

Handler = Callable[[argparse.Namespace], int]


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moray", description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"moray {__version__}")
    client = p.add_argument_group(
        "client configuration (flag > $MORAY_SERVER/$MORAY_TOKEN/$MORAY_CA > config file "
        "$MORAY_CONFIG or ~/.config/moray/config.yaml)")
    client.add_argument("--server", default=None, metavar="URL",
                        help="moray-server's REST API (default http://127.0.0.1:7080)")
    client.add_argument("--token", default=None,
                        help="API token (default: $MORAY_DATA_DIR/admin.token if readable)")
    client.add_argument("--ca", default=None, metavar="FILE",
                        help="CA file of an HTTPS server (its pki/ca.pem)")
    store = p.add_argument_group("local store (moray scan|vulndb without a server)")
    store.add_argument("--db", type=Path, default=None,
                       help="store path (default $MORAY_DATA_DIR/moray.db)")
    store.add_argument("--database-url", default=None,
                       help="store URL, e.g. the server's postgresql://... "
                            "($MORAY_DATABASE_URL)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-vv: debug)")
    p.add_argument("--log-level", default=None,
                   help="debug, info, warning, error (default: info for the agent, the "
                        "server and workers, else warning)")
    p.set_defaults(daemon=False, log_errors=False, quiet_loggers=())
    return p


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``moray`` parser; with ``only``, just that group's subcommands are built (the
    others are listed, not loaded)."""
    p = _top_parser()
    sub = p.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name, (module, text) in GROUPS.items():
        group = sub.add_parser(name, help=text, description=text)
        if only is None or only == name:
            importlib.import_module(module).add_group(name, group)
    return p


def _takes_value(p: argparse.ArgumentParser, option: str) -> bool:
    if "=" in option or not option.startswith("-"):
        return False
    actions = p._option_string_actions
    action = actions.get(option)
    if action is None and option.startswith("--"):  # an abbreviation, as argparse allows
        found = {a for o, a in actions.items() if o.startswith(option)}
        action = found.pop() if len(found) == 1 else None
    return action is not None and action.nargs != 0


def find_group(argv: Sequence[str]) -> int | None:
    """Index of the subcommand word in ``argv`` (skipping ``moray``'s own options)."""
    top = _top_parser()
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if not word.startswith("-") or word == "-":
            return i
        i += 2 if _takes_value(top, word) else 1
    return None


def route(argv: Sequence[str]) -> list[str]:
    """``moray scan IMAGE ...`` -> ``moray scan IMAGE-form IMAGE ...``: the parser sees
    the image form as a subcommand of its own."""
    out = list(argv)
    g = find_group(out)
    if g is None or out[g] != "scan":
        return out
    following = out[g + 1] if g + 1 < len(out) else None
    if following is not None and following not in (*SCAN_COMMANDS, SCAN_IMAGE, "-h", "--help"):
        out.insert(g + 1, SCAN_IMAGE)
    return out


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield p
    for child in {id(c): c for c in _subparsers(p).values()}.values():
        yield from _walk(child)


def rename(p: argparse.ArgumentParser, words: Sequence[str], prog: str) -> None:
    """Usage and help of an alias name the alias: ``moray agent run`` -> ``moray-agent run``."""
    leaf = p
    for word in words:
        leaf = _subparsers(leaf)[word]
    old = leaf.prog
    for q in _walk(leaf):
        if q.prog.startswith(old):
            q.prog = prog + q.prog[len(old):]


def parse(argv: Sequence[str], alias: str | None = None) -> argparse.Namespace:
    """``argv`` (after ``moray``, or after the alias) parsed; ``handler`` is what runs."""
    words = ALIASES[alias] if alias else ()
    full = route([*words, *argv]) if not alias else [*words, *argv]
    g = find_group(full)
    parser = build_parser(full[g] if g is not None and full[g] in GROUPS else None)
    if alias:
        rename(parser, words, alias)
    args = parser.parse_args(full)
    own = vars(args).pop("config_parser", None)  # a daemon's --config (moray/daemonconfig.py)
    if getattr(args, "config", None) and own is not None:
        from moray import daemonconfig

        try:
            own.set_defaults(**daemonconfig.defaults(args.config, own))
        except ConfigError as err:
            own.error(str(err))
        args = parser.parse_args(full)
        vars(args).pop("config_parser", None)
    args.prog = alias or "moray"
    return args


def report(err: BaseException, args: argparse.Namespace) -> int:
    """One line for an error that ended a command; its exit code."""
    from moray.controlplane.scanner.errors import AccessDenied

    code = exitcodes.for_error(err)
    if isinstance(err, BrokenPipeError) or code == exitcodes.INTERRUPTED:
        return code  # the reader went away (``| head``) / Ctrl-C: nothing left to say
    if args.log_errors:
        log.error("%s", err)
    elif isinstance(err, ControlPlaneError):
        sys.stderr.write(f"{args.prog}: {err}\n")
    elif isinstance(err, AccessDenied):  # a token refused: retrying cannot help
        sys.stderr.write(f"{args.prog}: refused: {err}\n")
    else:
        sys.stderr.write(f"{args.prog}: error: {err}\n")
    return code


def main(argv: Sequence[str] | None = None, *, alias: str | None = None) -> int:
    """The entry point of ``moray`` and, with ``alias``, of the ``moray-*`` commands."""
    args = parse(sys.argv[1:] if argv is None else argv, alias)
    logs.configure(logs.level_of(args.log_level, verbose=args.verbose, daemon=args.daemon),
                   timestamps=args.daemon, quiet=args.quiet_loggers)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (MorayError, OSError, KeyboardInterrupt) as err:
        return report(err, args)


def agent_main() -> int:
    return main(alias="moray-agent")


def server_main() -> int:
    return main(alias="moray-server")


def gateway_main() -> int:
    return main(alias="moray-gateway")


def scan_main() -> int:
    return main(alias="moray-scan")


def worker_main() -> int:
    return main(alias="moray-scanner-worker")


def kube_enforcer_main() -> int:
    return main(alias="moray-kube-enforcer")


def micro_main() -> int:
    return main(alias="moray-micro")


if __name__ == "__main__":
    sys.exit(main())
