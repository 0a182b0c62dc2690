"""packaging/systemd: the units verify (systemd-analyze verify, when systemd is installed),
are Type=notify, keep secrets off the command line, and the example configs they read
(packaging/etc, installed as /etc/moray/*.yaml) parse with --config."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from moray.cli import parse

ROOT = Path(__file__).resolve().parents[2]
# options that give a service its own mount namespace: the agent's bpffs/tracefs mounts and
# its residue repair must act on the host's (docs/install.md "Hardening")
MOUNT_NS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
            "ProtectKernelModules", "ProtectKernelLogs", "ProtectKernelTunables",
            "ProtectControlGroups", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem",
            "BindPaths", "BindReadOnlyPaths", "ProtectProc", "RootDirectory")
UNITS = {"moray-agent": ("agent", "run"), "moray-server": ("server",),
         "moray-gateway": ("gateway", "run")}


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(ROOT / "packaging" / "systemd" / f"{name}.service")
    return cp


@pytest.mark.parametrize("name", UNITS)
def test_unit_shape(name: str) -> None:
    svc = unit(name)["Service"]
    assert svc["Type"] == "notify"
    exec_start = svc["ExecStart"].split()
    assert exec_start[0] == "/opt/venvs/moray/bin/moray"
    assert exec_start[1:] == [*UNITS[name], "--config", f"/etc/moray/{name[6:]}.yaml"]
    assert "token" not in svc["ExecStart"]
    assert svc["EnvironmentFile"] == f"-/etc/moray/{name[6:]}.env"
    assert int(svc["TimeoutStartSec"]) >= 60
    if name == "moray-agent":  # stop leaves enforcement pinned, the guard running
        assert svc["KillMode"] == "process"
        assert [o for o in MOUNT_NS if o in svc] == []
    else:
        assert svc["User"] == "moray" and svc["ProtectSystem"] == "strict"


@pytest.mark.parametrize("name", UNITS)
def test_example_config_parses(name: str) -> None:
    conf = ROOT / "packaging" / "etc" / f"{name[6:]}.yaml"
    words = UNITS[name][1:]
    extra = ["--server", "s:7443"] if name == "moray-gateway" else []
    args = parse([*words, "--config", str(conf), *extra], name)
    assert args.config == str(conf)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at a binary this host has
    text = (ROOT / "packaging" / "systemd" / f"{name}.service").read_text()
    copy = tmp_path / f"{name}.service"
    copy.write_text(text.replace("/opt/venvs/moray/bin/moray", "/bin/true"))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
