"""moray.cli: every documented command parses to its handler, the moray-* aliases are the
same commands, and moray's own options (client configuration, store) work before or after
the subcommand."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import Any

import pytest

from moray import cli
from moray.agent import cli as agent_cli
from moray.agent.policy import cli as policy_cli
from moray.controlplane import cli as admin
from moray.controlplane.kubeenforcer import main as kube_main
from moray.controlplane.scanner import cli as scan_cli
from moray.controlplane.server import cli_api
from moray.controlplane.server import main as server_main
from moray.micro import cli as micro_cli

# the commands docs/*.md and README.md show, and the handler that runs each
DOCUMENTED: list[tuple[str, Callable[[argparse.Namespace], int]]] = [
    ("agent run --no-pin --policy-dir /tmp/p", agent_cli._cmd_run),
    ("agent --log-level debug run --server cp:7443 --enroll-token T --ca ca.pem",
     agent_cli._cmd_run),
    ("agent probe --json", agent_cli._cmd_probe),
    ("agent policy lint web.yaml --rows", policy_cli._lint),
    ("agent policy apply web.yaml --policy-dir /tmp/p", policy_cli._apply),
    ("agent policy list --policy-status /run/x.json", policy_cli._list),
    ("agent policy delete web", policy_cli._delete),
    ("agent unload --pin-root /sys/fs/bpf/t", policy_cli._unload),
    ("server --database-url postgresql://moray@db/moray --http-tls", server_main.run_command),
    ("scan app.tar", scan_cli.run_command),
    ("scan image.tar --fail-on critical -f sarif", scan_cli.run_command),
    ("scan ./oci-layout-dir --format sarif -o scan.sarif", scan_cli.run_command),
    ("scan 127.0.0.1:5000/team/app:1.0 --insecure-registry --fail-on critical",
     scan_cli.run_command),
    ("scan registry.example.com/team/app@sha256:00 --policy prod.yaml --record-verdict",
     scan_cli.run_command),
    ("scan -q IMG.tar -f json --no-vulns --no-malware", scan_cli.run_command),
    ("scan IMG --server http://s:7080 --token T", scan_cli.run_command),
    ("scan enqueue a.tar b.tar --policy p.yaml", admin.cmd_scan_store),
    ("scan enqueue-registry 127.0.0.1:5000 --repository team/app", admin.cmd_scan_store),
    ("scan jobs", admin.cmd_scan_store),
    ("scan rescan-stale", admin.cmd_scan_store),
    ("scan worker --server https://moray:7080 --token T --ca ca.pem", admin.cmd_worker),
    ("scan registry add 127.0.0.1:5000 --insecure-registry --policy prod.yaml",
     admin.cmd_targets),
    ("scan registry list", admin.cmd_targets),
    ("scan registry run 1", admin.cmd_targets),
    ("scan registry remove 1", admin.cmd_targets),
    ("scan image add registry.example.com/team/app:1.0 --interval 86400 --policy prod.yaml",
     admin.cmd_targets),
    ("scan image list --json", admin.cmd_targets),
    ("scan image remove 2", admin.cmd_targets),
    ("vulndb import advisories/ --server http://s:7080", admin.cmd_vulndb_import),
    ("vulndb status --json", admin.cmd_vulndb_status),
    ("malware import rules.yar bad.sha256", admin.cmd_malware_import),
    ("policy apply web.yaml --comment c", cli_api.run),
    ("policy list", cli_api.run),
    ("policy history web", cli_api.run),
    ("policy rollback web 2", cli_api.run),
    ("policy delete web", cli_api.run),
    ("agents list", cli_api.run),
    ("agents revoke abc", cli_api.run),
    ("agents token --label zone=a --tenant t", cli_api.run),
    ("agents list --enrollment-token 3 --json", cli_api.run),
    ("token create --unlimited --expires 30d --label role=node --comment ds", cli_api.run),
    ("token create --uses 100 --expires 12h", cli_api.run),
    ("token list --all --json", cli_api.run),
    ("token revoke 3", cli_api.run),
    ("events query --type exec", cli_api.run),
    ("events follow --max 1", cli_api.run),
    ("audit", cli_api.run),
    ("tokens create ci operator", cli_api.run),
    ("workloads --vulnerability CVE-2023-32681", cli_api.run),
    ("workloads --namespace shop --include-denied --json", cli_api.run),
    ("kube-enforcer --server https://moray:7080 --token T --ca ca.pem --tls-cert w.pem "
     "--tls-key w.key --port 8443 --config k.yaml", kube_main.run_command),
    ("micro --policy p.yaml --events /tmp/e.jsonl -- sh -c 'exit 3'", micro_cli.run_command),
]


def _parse(line: str, alias: str | None = None) -> argparse.Namespace:
    return cli.parse(shlex.split(line), alias)


@pytest.mark.parametrize(("line", "handler"), DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_documented_commands_reach_their_handler(
        line: str, handler: Callable[[argparse.Namespace], int]) -> None:
    assert _parse(line).handler is handler


def _same(a: argparse.Namespace, b: argparse.Namespace) -> dict[str, Any]:
    va, vb = vars(a), vars(b)
    return {k: (va.get(k), vb.get(k)) for k in va.keys() | vb.keys()
            if k != "prog" and va.get(k) != vb.get(k)}


@pytest.mark.parametrize(("alias", "args"), [
    ("moray-agent", "run --no-pin --rules r.yaml"),
    ("moray-agent", "--log-level debug probe --json"),
    ("moray-agent", "policy apply web.yaml"),
    ("moray-agent", "unload"),
    ("moray-server", "--data-dir /tmp/d --http-port 7081 --scan-workers 0"),
    ("moray-scan", "-q image.tar --fail-on critical -f sarif"),
    ("moray-scan", "registry.example.com/team/app:1 --server http://s --token T"),
    ("moray-scanner-worker", "--server http://h:7080 --token T --once --db /tmp/m.db"),
    ("moray-kube-enforcer", "--server http://h:7080 --token T --tls-cert c --tls-key k"),
    ("moray-micro", "--policy p.yaml -- app --policy x"),
])
def test_aliases_are_the_same_command(alias: str, args: str) -> None:
    via_alias = _parse(args, alias)
    words = " ".join(w for w in cli.ALIASES[alias] if w != cli.SCAN_IMAGE)
    assert _same(via_alias, _parse(f"{words} {args}")) == {}
    assert via_alias.prog == alias


def test_micro_passes_the_command_untouched() -> None:
    args = _parse("micro --policy p.yaml -- app --policy x -v -- y")
    assert args.command == ["--", "app", "--policy", "x", "-v", "--", "y"]
    assert [str(p) for p in args.policy] == ["p.yaml"]


def test_scan_image_or_subcommand() -> None:
    assert _parse("scan jobs").handler is admin.cmd_scan_store
    assert _parse("scan ./jobs").image == "./jobs"
    # moray-scan takes every argument as the image, as it always has
    assert _parse("jobs", "moray-scan").handler is scan_cli.run_command
    assert _parse("jobs", "moray-scan").image == "jobs"
    # moray's own options before the group do not hide it
    args = _parse("--db /tmp/v.db -v scan app.tar --no-vulns")
    assert args.image == "app.tar" and str(args.db) == "/tmp/v.db" and args.verbose == 1


def test_moray_options_before_or_after_the_subcommand() -> None:
    for line in ("--server http://x:1 --token T --ca c.pem policy list",
                 "policy list --server http://x:1 --token T --ca c.pem",
                 "--server http://y policy list --server http://x:1 --token T --ca c.pem"):
        args = _parse(line)
        assert (args.server, args.token, args.ca) == ("http://x:1", "T", "c.pem"), line
    args = _parse("policy list")
    assert (args.server, args.token, args.ca) == (None, None, None)
    assert str(_parse("--db /tmp/a.db scan worker --once").db) == "/tmp/a.db"
    assert str(_parse("scan worker --once --db /tmp/b.db").db) == "/tmp/b.db"
    assert _parse("--log-level debug server").log_level == "debug"
    assert _parse("server --log-level debug").log_level == "debug"


def test_log_defaults() -> None:
    assert _parse("agent probe").daemon and _parse("agent probe").log_errors
    assert _parse("server").daemon and _parse("scan worker").daemon
    assert not _parse("scan app.tar").daemon and not _parse("policy list").daemon


def test_help_shows_the_client_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--server", "--token", "--ca", "MORAY_CONFIG", "agent", "server", "scan"):
        assert option in out


def test_alias_help_names_the_alias(capsys: pytest.CaptureFixture[str]) -> None:
    for alias, usage in (("moray-scan", "usage: moray-scan "),
                         ("moray-scanner-worker", "usage: moray-scanner-worker "),
                         ("moray-server", "usage: moray-server "),
                         ("moray-agent", "usage: moray-agent "),
                         ("moray-kube-enforcer", "usage: moray-kube-enforcer ")):
        with pytest.raises(SystemExit):
            cli.main(["--help"], alias=alias)
        assert capsys.readouterr().out.startswith(usage), alias
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"], alias="moray-agent")
    assert capsys.readouterr().out.startswith("usage: moray-agent run ")


def test_only_the_selected_group_is_built() -> None:
    parser = cli.build_parser("policy")
    groups = cli._subparsers(parser)
    assert cli._subparsers(groups["policy"]) and not cli._subparsers(groups["scan"])


def test_find_group_skips_option_values() -> None:
    assert cli.find_group(["--server", "scan", "policy", "list"]) == 2
    assert cli.find_group(["--server=scan", "policy"]) == 1
    assert cli.find_group(["-v", "--serv", "x", "audit"]) == 3
    assert cli.find_group(["--help"]) is None


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nope"], ["scan"], ["policy", "rollback", "web", "x"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2, argv
    capsys.readouterr()
