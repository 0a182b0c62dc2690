"""`moray agent` (= `moray-agent`): `run` (the agent), `probe` (what this kernel offers),
`policy lint|apply|list|delete` and `unload` (agent/policy/cli.py).

Output to stdout is the command's result (besides the JSON sink); logging is set up by
moray.cli, at INFO with timestamps. A start-up step that fails (AgentError) is logged and
the command exits 2 (moray.exitcodes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from moray import daemonconfig


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"moray-agent: --label wants KEY=VALUE, got {text!r}")
    return key, value


def enroll_token(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The enrolment token: --enroll-token, else $MORAY_ENROLL_TOKEN (an EnvironmentFile),
    else the systemd credential ``enroll-token`` (LoadCredential=, read from
    $CREDENTIALS_DIRECTORY). Only the first start needs one."""
    env = os.environ if environ is None else environ
    if flag:
        return flag
    if env.get("MORAY_ENROLL_TOKEN"):
        return env["MORAY_ENROLL_TOKEN"].strip()
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        try:
            return (Path(creds) / "enroll-token").read_text().strip() or None
        except FileNotFoundError:
            return None
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    from moray.agent.app import Agent, Config

    cfg = Config(output=args.output, proc=args.proc, host_root=args.host_root,
                 metrics_port=None if args.metrics_port == 0 else args.metrics_port,
                 metrics_addr=args.metrics_addr, watch=tuple(args.watch),
                 default_watch=not args.no_default_watch, containers=not args.no_containers,
                 duration=args.duration, args_max=args.args_max,
                 ring_size=args.ring_mb << 20, btf=args.btf, policy_dir=args.policy_dir,
                 pin_root=None if args.no_pin else args.pin_root,
                 policy_status=args.policy_status or None, rules=tuple(args.rules),
                 default_rules=not args.no_default_rules, syslog=tuple(args.syslog),
                 fast_open=not args.no_fast_open, aggregate=not args.no_aggregate,
                 cef=tuple(args.cef), webhook=tuple(args.webhook),
                 alert_format=args.alert_format,
                 export_allow=tuple(args.export_allow), export_deny=tuple(args.export_deny),
                 otlp_endpoint=args.otlp_endpoint, otlp_protocol=args.otlp_protocol,
                 otlp_headers=tuple(args.otlp_headers), otlp_insecure=args.otlp_insecure,
                 otlp_metrics_interval=args.otlp_metrics_interval, otlp_body=args.otlp_body,
                 server=args.server, enroll_token=enroll_token(args.enroll_token),
                 ca_file=args.ca,
                 ca_sha256=args.ca_sha256, cp_data_dir=args.data_dir,
                 enroll_server=args.enroll_server,
                 labels=tuple(_label(x) for x in args.label),
                 startup_profile=args.startup_profile,
                 task_storage=not args.no_task_storage)
    if args.node:
        cfg.node = args.node
    return Agent(cfg).run()


def _cmd_guard(args: argparse.Namespace) -> int:
    from moray.agent.policy.guard import Guard

    return Guard(args.pin_root, proc=args.proc).run()


def _cmd_probe(args: argparse.Namespace) -> int:
    from moray.agent.bpf.features import format_text, probe

    logging.getLogger("libbpf").setLevel(logging.CRITICAL)  # failed probes are the answer
    f = probe(args.proc)
    if args.json:
        print(json.dumps(f.to_json(), indent=2))
    else:
        print(format_text(f))
    return 0


def _diagnostic_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--startup-profile", action="store_true",
                     help="log the verifier's instructions and time per BPF program at "
                          "start (docs/bench.md)")
    run.add_argument("--no-task-storage", action="store_true",
                     help="keep file opens in flight in a hash by thread id, as where the "
                          "kernel refuses task storage, even where it works (tests the "
                          "fallback)")


def _export_options(run: argparse.ArgumentParser) -> None:
    _diagnostic_options(run)
    ex = run.add_argument_group("export filters and OpenTelemetry (docs/export.md)")
    ex.add_argument("--export-allow", action="append", default=[], metavar="FILTER",
                    help="export only events and alerts that match one of these (repeatable):"
                         " type:open,exec | rule:NAME | priority:P,.. | min-priority:P | "
                         "container:ID-OR-NAME | image:GLOB | namespace:NS | label:K=V | a "
                         "rule condition on events, e.g. 'evt.type = open and file.path "
                         "startswith /proc/'; applies to every output, never to detection")
    ex.add_argument("--export-deny", action="append", default=[], metavar="FILTER",
                    help="do not export what matches (repeatable; same forms; deny wins)")
    ex.add_argument("--otlp-endpoint", default=None, metavar="URL",
                    help="send events and alerts as OTLP logs and the metrics as OTLP "
                         "metrics: grpc://HOST:4317 or http(s)://HOST:4318 (needs "
                         "pip install 'moray[otlp]')")
    ex.add_argument("--otlp-protocol", choices=("grpc", "http"), default=None,
                    help="default: grpc for grpc://, HTTP/protobuf for http(s)://")
    ex.add_argument("--otlp-headers", action="append", default=[], metavar="K=V[,K=V]",
                    help="headers on every export (e.g. authorization=Bearer ...)")
    ex.add_argument("--otlp-insecure", action="store_true",
                    help="gRPC without TLS (grpc:// endpoints are TLS by default)")
    ex.add_argument("--otlp-metrics-interval", type=float, default=60.0, metavar="SECONDS",
                    help="metrics export period (default 60; 0: logs only)")
    ex.add_argument("--otlp-body", choices=("json", "map"), default="json",
                    help="a LogRecord's body: the event's JSON text (default; Loki's log "
                         "line) or an OTLP map (Elastic indexes its fields; ~6x the "
                         "export CPU)")


def _cmd_rules_import(args: argparse.Namespace) -> int:
    """`moray agent rules import`: Falco rule files -> one moray rule file, and the report
    of everything not translated (stderr)."""
    from moray.agent.detect.falco_import import translate_files

    try:
        res = translate_files(args.files)
    except OSError as err:
        print(f"moray agent rules import: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    for line in res.report.lines():
        print(line, file=sys.stderr)
    text = res.yaml(args.files)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.output} (load it with `moray agent run --rules {args.output}`)",
              file=sys.stderr)
    left_out = any(s.kind == "rule" for s in res.report.skipped) or res.report.narrowed
    return 1 if args.strict and left_out else 0


def _add_rules(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`moray agent rules import FILE... [-o OUT]`."""
    rl = sub.add_parser("rules", help="detection rule files")
    rsub = rl.add_subparsers(dest="rules_cmd", required=True)
    imp = rsub.add_parser("import", help="translate Falco rule files into moray's rule "
                          "language; every rule, macro or list left out is reported")
    imp.add_argument("files", nargs="+", metavar="FILE",
                     help="Falco rule files, applied in order (append/override as in Falco)")
    imp.add_argument("--output", "-o", default=None, metavar="OUT",
                     help="moray rule file to write (default: stdout)")
    imp.add_argument("--strict", action="store_true",
                     help="exit 1 when any rule was skipped or narrowed (the file is still "
                          "written)")
    imp.set_defaults(handler=_cmd_rules_import)


def add_group(name: str, ap: argparse.ArgumentParser) -> None:  # noqa: PLR0915 (one per option)
    """Fill ``moray``'s ``agent`` parser."""
    ap.add_argument("--log-level", default=argparse.SUPPRESS, help="default info")
    ap.set_defaults(daemon=True, log_errors=True)
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="load the BPF programs and report events as JSON lines")
    run.add_argument("--output", "-o", default="-", help="file to append events to, - = stdout")
    run.add_argument("--metrics-port", type=int, default=9464,
                     help="port of /metrics, /healthz and /readyz (0 = off)")
    run.add_argument("--metrics-addr", default="127.0.0.1",
                     help="address of that port")
    run.add_argument("--watch", action="append", default=[], metavar="PREFIX",
                     help="extra path prefix whose opens are reported (dirs end with /)")
    run.add_argument("--no-default-watch", action="store_true",
                     help="watch only the --watch prefixes")
    run.add_argument("--no-containers", action="store_true", help="skip container identity")
    run.add_argument("--proc", default="/proc", help="host /proc (/host/proc in a DaemonSet)")
    run.add_argument("--host-root", default="/", help="host / (/host in a DaemonSet)")
    run.add_argument("--node", default=None, help="node name in events (default: hostname)")
    run.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    run.add_argument("--args-max", type=int, default=1024, help="argv bytes per exec (<=4096)")
    run.add_argument("--ring-mb", type=int, default=8, help="ring buffer size, MiB (power of 2)")
    run.add_argument("--btf", default="/sys/kernel/btf/vmlinux", help="kernel BTF to require")
    cp = run.add_argument_group("control plane (omit --server for local mode)")
    cp.add_argument("--server", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                    help="moray-server (or moray-gateway) agent endpoint (gRPC, mTLS), e.g. "
                         "server:7443; a comma-separated list fails over in turn")
    cp.add_argument("--enroll-token", default=None,
                    help="enrolment token, used once per host (better: $MORAY_ENROLL_TOKEN, "
                         "or the systemd credential enroll-token; never visible in ps)")
    cp.add_argument("--ca", default=None, help="server CA certificate (PEM) for enrolment")
    cp.add_argument("--ca-sha256", default=None, help="or the CA's pinned SHA-256")
    cp.add_argument("--enroll-server", default=None, metavar="HOST:PORT",
                    help="enrolment endpoint (default: the server's host, port 7444; with "
                         "gateways: the server's, as gateways do not enrol)")
    cp.add_argument("--data-dir", default="/var/lib/moray-agent",
                    help="agent identity, policy cache and event spool")
    cp.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                    help="host label for policy scopes (repeatable)")
    run.add_argument("--policy-dir", default="/etc/moray/policies",
                     help="runtime policies to enforce (watched for changes)")
    run.add_argument("--pin-root", default="/sys/fs/bpf/moray",
                     help="bpffs directory: enforcement stays pinned there across restarts")
    run.add_argument("--policy-status", default="/run/moray/policy-status.json",
                     help="where the agent writes which policies are live ('' = nowhere); "
                          "`policy list --policy-status` reads it")
    run.add_argument("--no-pin", action="store_true",
                     help="pin nothing: enforcement ends when the agent stops")
    run.add_argument("--rules", action="append", default=[], metavar="FILE",
                     help="detection rule file, applied after the defaults (repeatable)")
    run.add_argument("--no-default-rules", action="store_true",
                     help="do not load the default detection ruleset")
    run.add_argument("--no-fast-open", action="store_true",
                     help="open events through the Python pipeline only, not the compiled "
                          "hot path (the same output; for comparison or a suspected bug)")
    run.add_argument("--no-aggregate", action="store_true",
                     help="write every repeated open as its own event instead of counting "
                          "repeats in the kernel (docs/events.md \"Repeated events\"); for "
                          "measuring user space alone")
    run.add_argument("--syslog", action="append", default=[], metavar="URL",
                     help="send alerts as RFC 5424 syslog: udp|tcp|tls://HOST:PORT")
    run.add_argument("--cef", action="append", default=[], metavar="URL",
                     help="send alerts as CEF over syslog: udp|tcp|tls://HOST:PORT")
    run.add_argument("--webhook", action="append", default=[], metavar="URL",
                     help="POST alerts as JSON to http(s)://HOST/PATH (retried)")
    run.add_argument("--alert-format", choices=("moray", "falco"), default="moray",
                     help="alerts in the JSON output and the --webhook / --syslog bodies: "
                          "moray's own object (default) or Falco's JSON, for falcosidekick "
                          "(docs/falco.md); the control plane always gets moray's")
    _export_options(run)
    run.set_defaults(handler=_cmd_run)
    daemonconfig.add_option(run)

    pr = sub.add_parser("probe", help="what this kernel offers and the enforcement tiers")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--proc", default="/proc")
    pr.set_defaults(handler=_cmd_probe)

    gd = sub.add_parser("guard", help="(started by `run`) decide tasks held at their first "
                        "exec when the agent is gone (docs/policy.md, Agent down)")
    gd.add_argument("--pin-root", default="/sys/fs/bpf/moray")
    gd.add_argument("--proc", default="/proc")
    gd.set_defaults(handler=_cmd_guard)

    _add_rules(sub)

    from moray.agent.policy.cli import add_commands

    add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    """``moray-agent`` (and ``python -m moray.agent.cli``): ``moray agent`` under its own
    name (moray.cli)."""
    from moray.cli import main as moray

    return moray(argv, alias="moray-agent")


if __name__ == "__main__":
    sys.exit(main())
