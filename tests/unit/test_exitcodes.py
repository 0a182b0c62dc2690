"""moray.exitcodes: one table, the codes each command returned before it, and docs/cli.md
shows the same table."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from moray import cli, exitcodes
from moray.agent.app import AgentError
from moray.clientconfig import ApiError
from moray.controlplane.scanner.errors import AccessDenied, ImageFormatError
from moray.controlplane.scanner.targets_cli import TargetNotFound
from moray.errors import (
    ConfigError,
    ControlPlaneError,
    KernelError,
    Problem,
    ScanError,
    ServerUnreachable,
    ValidationError,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_table() -> None:
    assert (exitcodes.OK, exitcodes.FAILED, exitcodes.ERROR, exitcodes.UNREACHABLE,
            exitcodes.INTERRUPTED) == (0, 1, 2, 3, 130)


@pytest.mark.parametrize(("err", "code"), [
    (ApiError(403, {"error": "forbidden"}), 1),        # moray policy ...: server refused
    (TargetNotFound("no registry 5"), 1),              # moray scan registry run 5
    (ControlPlaneError("x"), 1),
    (ServerUnreachable("cannot reach"), 3),            # moray policy ...: unreachable
    (ImageFormatError("bad", source="x"), 2),          # moray-scan: bad input
    (AccessDenied("HTTP 401"), 2),                     # moray-scanner-worker: refused
    (ScanError("x"), 2),
    (AgentError("needs root"), 2),                     # moray-agent run
    (KernelError("x"), 2),
    (ConfigError("x"), 2),
    (ValidationError([Problem("f", 1, "a", "b")]), 2),
    (FileNotFoundError(2, "No such file"), 2),
    (BrokenPipeError(), 2),                            # | head
    (KeyboardInterrupt(), 130),
])
def test_error_kinds(err: BaseException, code: int) -> None:
    assert exitcodes.for_error(err) == code


def test_docs_show_the_table() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) +\| `(\w+)` ", text, re.MULTILINE))
    assert rows == {str(getattr(exitcodes, name)): name
                    for name in ("OK", "FAILED", "ERROR", "UNREACHABLE", "INTERRUPTED")}


def test_entry_point_prints_one_line(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAY_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("MORAY_SERVER", raising=False)
    monkeypatch.delenv("MORAY_TOKEN", raising=False)
    monkeypatch.delenv("MORAY_CA", raising=False)
    assert cli.main(["policy", "list"]) == 2        # the named config file is missing
    err = capsys.readouterr().err
    assert err == f"moray: error: {tmp_path / 'none.yaml'}: no such config file ($MORAY_CONFIG)\n"
    (tmp_path / "none.yaml").write_text("")
    assert cli.main(["--server", "http://127.0.0.1:9", "--token", "t", "audit"]) == 3
    assert capsys.readouterr().err.startswith("moray: cannot reach the server at ")
    assert cli.main(["-q", str(tmp_path / "missing.tar"), "--no-vulns"], alias="moray-scan") == 2
    assert "moray-scan: error: no such image file or directory" in capsys.readouterr().err


def test_refused_token_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(prog="moray-scanner-worker", log_errors=False)
    assert cli.report(AccessDenied("HTTP 401 for /claim"), args) == 2
    assert capsys.readouterr().err == "moray-scanner-worker: refused: HTTP 401 for /claim\n"
