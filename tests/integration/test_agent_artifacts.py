"""The artifacts as a host installs them (`make dist`, `make deb`; docs/install.md), each
running the agent away from this checkout until /readyz says 200 and it reports an exec,
its BPF objects from the artifact and nothing compiling them (no clang, llc or bpftool
exec'd by the agent):

- the wheel, in a fresh venv from the system's python3 (`python3 -m venv`; dependencies
  from PyPI, or a pip cache or mirror);
- the Debian packages: their metadata (dependencies are Debian packages only), units,
  conffiles and maintainer scripts, and the venv of the `moray` package unpacked with
  dpkg-deb (installing them on this shared host would change it for everyone; the
  systemd guest test installs them for real, docs/notes.md).

CI passes what `make dist deb` built as $MORAY_DIST; without it the test builds them.
Root only (BPF)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.agent import EventLog, free_port

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system python3"),
]


def clean_env() -> dict[str, str]:
    """No PYTHONPATH, no virtualenv of the test run: only the artifact's own packages."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def artifact(pattern: str, target: str, tmp: Path) -> list[Path]:
    """``$MORAY_DIST/<pattern>`` (CI), else ``make <target>`` into a copy of dist/."""
    if os.environ.get("MORAY_DIST"):
        found = sorted(Path(os.environ["MORAY_DIST"]).glob(pattern))
        assert found, f"no {pattern} in $MORAY_DIST"
        return found
    subprocess.run(["make", "-C", str(ROOT), target, f"BIN={Path(sys.executable).parent}"],
                   check=True, capture_output=True, timeout=1200)
    out = tmp / "dist"
    out.mkdir(exist_ok=True)
    for f in (ROOT / "dist").glob(pattern):
        shutil.copy(f, out)
    return sorted(out.glob(pattern))


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def run_agent_from(python: Path, venv: Path, work: Path) -> None:
    """The agent of ``python``'s environment: objects from ``venv``, ready, an exec seen."""
    env = clean_env()
    where = subprocess.run(
        [str(python), "-c",
         "from moray.agent.bpf.loader import object_path; print(object_path('moray.bpf.o'))"],
        check=True, env=env, capture_output=True, text=True, cwd=work).stdout.strip()
    assert where.startswith(str(venv)), where
    port = free_port()
    pin_root = f"/sys/fs/bpf/moray-test-artifact-{os.getpid()}"
    (work / "policies").mkdir()
    events = work / "events.jsonl"
    agent_cmd = [str(python), "-m", "moray.cli", "agent"]
    log_path = work / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [*agent_cmd, "run", "-o", str(events), "--metrics-port", str(port),
             "--pin-root", pin_root, "--policy-dir", str(work / "policies"),
             "--policy-status", str(work / "status.json"), "--data-dir", str(work / "state")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=work)
    try:
        deadline = time.monotonic() + 120
        while readyz(port) != 200:
            assert agent.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        p = subprocess.Popen(["/bin/true", "moray-artifact-probe"])
        p.wait()
        seen = EventLog(events)
        seen.wait_for(lambda e: e["type"] == "exec" and e["process"]["pid"] == p.pid,
                      timeout=15, what="the exec of /bin/true")
        built = seen.all(lambda e: e["type"] == "exec" and e.get("parent") is not None
                         and e["parent"]["pid"] == agent.pid
                         and os.path.basename(e["process"]["binary"]).startswith(
                             ("clang", "llc", "bpftool")))
        assert built == [], json.dumps(built)[:2000]
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        subprocess.run([*agent_cmd, "unload", "--pin-root", pin_root], env=env,
                       capture_output=True, timeout=60, check=False)
    assert agent.returncode == 0, log_path.read_text()[-3000:]


def test_wheel_in_a_fresh_venv_runs_the_agent(tmp_path: Path) -> None:
    (wheel,) = artifact("moray-*.whl", "dist", tmp_path)
    venv = tmp_path / "venv"
    env = clean_env()
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    t0 = time.monotonic()
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, env=env, timeout=900, cwd=tmp_path,
                   stderr=subprocess.DEVNULL)
    print(f"\nwheel {wheel.name}: {wheel.stat().st_size} bytes; pip install "
          f"{time.monotonic() - t0:.1f} s; venv {du(venv) >> 20} MiB")
    run_agent_from(venv / "bin" / "python", venv, tmp_path)


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_debian_packages(tmp_path: Path) -> None:
    debs = {d.name.split("_")[0]: d for d in artifact("*.deb", "deb", tmp_path)}
    assert set(debs) == {"moray", "moray-agent", "moray-server"}
    print("\n" + "; ".join(f"{d.name}: {d.stat().st_size} bytes, installed "
                           f"{deb_field(d, 'Installed-Size')} KiB" for d in debs.values()))
    # dependencies: Debian packages only (and the moray package itself)
    for deb in debs.values():
        for alt in deb_field(deb, "Depends").split(","):
            name = alt.split("(")[0].split("|")[0].strip()
            if name == "moray":
                continue
            shown = subprocess.run(["apt-cache", "show", name], capture_output=True)
            assert shown.returncode == 0, f"{deb.name}: {name} is not a Debian package"
    assert "libbpf1" in deb_field(debs["moray-agent"], "Depends")
    # units, conffiles, maintainer scripts
    contents = {name: subprocess.run(["dpkg-deb", "-c", str(d)], check=True,
                                     capture_output=True, text=True).stdout
                for name, d in debs.items()}
    assert "lib/systemd/system/moray-agent.service" in contents["moray-agent"]
    for unit in ("moray-server.service", "moray-gateway.service"):
        assert f"lib/systemd/system/{unit}" in contents["moray-server"]
    assert "opt/venvs/moray/lib/python3" in contents["moray"]
    ctl = tmp_path / "ctl"
    subprocess.run(["dpkg-deb", "-e", str(debs["moray-agent"]), str(ctl)], check=True)
    assert "/etc/moray/agent.yaml" in (ctl / "conffiles").read_text()
    assert "agent unload --pin-root /sys/fs/bpf/moray" in (ctl / "prerm").read_text()
    assert "rm -rf /sys/fs/bpf/moray /var/lib/moray-agent" in (ctl / "postrm").read_text()
    assert "deb-systemd-helper enable 'moray-agent.service'" in (ctl / "postinst").read_text()
    # the gateway's unit is --no-start, which drops debhelper's stop-on-remove: the
    # package's own prerm stops it
    server_ctl = tmp_path / "server-ctl"
    subprocess.run(["dpkg-deb", "-e", str(debs["moray-server"]), str(server_ctl)], check=True)
    assert "deb-systemd-invoke stop moray-gateway.service" in (
        server_ctl / "prerm").read_text()
    assert "deb-systemd-invoke stop 'moray-server.service'" in (
        server_ctl / "prerm").read_text()
    for script in ("preinst", "postinst", "prerm", "postrm"):
        if (ctl / script).exists():
            subprocess.run(["sh", "-n", str(ctl / script)], check=True)
    # the venv of the moray package, unpacked, runs the agent (the venv is relocatable
    # enough for that: its python3 links to /usr/bin/python3, pyvenv.cfg sits beside)
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(debs["moray"]), str(root)], check=True)
    venv = root / "opt" / "venvs" / "moray"
    assert os.readlink(venv / "bin" / "python3") == "/usr/bin/python3"
    run_agent_from(venv / "bin" / "python3", venv, tmp_path)
