"""moray/daemonconfig.py: --config files of the agent, server and gateway; the agent's
enrolment token from the environment or a systemd credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from moray.agent.cli import enroll_token
from moray.cli import parse


def test_file_values_are_defaults_and_flags_win(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("metrics-port: 9999\nwatch: [/srv/a/]\nno_default_rules: true\n"
                 "label: zone=a\nserver: s:7443\n")
    a = parse(["run", "--config", str(f), "--watch", "/x/", "--server", "t:7443"],
              "moray-agent")
    assert (a.metrics_port, a.watch, a.no_default_rules, a.label, a.server) == (
        9999, ["/srv/a/", "/x/"], True, ["zone=a"], "t:7443")
    s = tmp_path / "server.yaml"
    s.write_text("grpc-port: 8443\nname: [moray.example]\nhttp-tls: true\n")
    a = parse(["--config", str(s)], "moray-server")
    assert (a.grpc_port, a.name, a.http_tls) == (8443, ["moray.example"], True)
    g = tmp_path / "gateway.yaml"
    g.write_text("server: s:7443\nport: 7555\n")
    a = parse(["run", "--config", str(g)], "moray-gateway")
    assert (a.server, a.port) == ("s:7443", 7555)


@pytest.mark.parametrize("text", ["bogus: 1\n", "metrics-port: [1, 2]\n",
                                  "no-default-rules: yes please\n", "- a\n",
                                  "metrics-port: abc\n", "config: x\n"])
def test_bad_files_stop_before_anything_runs(tmp_path: Path, text: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    with pytest.raises(SystemExit) as err:
        parse(["run", "--config", str(f)], "moray-agent")
    assert err.value.code == 2 and str(f) in capsys.readouterr().err


def test_enroll_token_sources(tmp_path: Path) -> None:
    assert enroll_token("flag", {"MORAY_ENROLL_TOKEN": "env"}) == "flag"
    assert enroll_token(None, {"MORAY_ENROLL_TOKEN": "env\n"}) == "env"
    (tmp_path / "enroll-token").write_text("cred\n")
    assert enroll_token(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "cred"
    assert enroll_token(None, {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None
    assert enroll_token(None, {}) is None
