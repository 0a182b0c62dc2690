"""The wheel as a host installs it (`make dist`, docs/install.md): a fresh venv from the
system's python3 (`python3 -m venv`), the wheel from the local file (dependencies from
PyPI), the agent started from that venv, away from this checkout, reaches /readyz and
reports an event; its BPF objects come from the wheel and nothing compiles them (no
clang or bpftool exec by the agent). Root only; needs PyPI (or a pip cache/mirror)."""

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
    """No PYTHONPATH, no virtualenv of the test run: only the new venv's own packages."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def build_wheel(out: Path) -> Path:
    if os.environ.get("MORAY_WHEEL"):  # CI: the artifact `make dist` built
        return Path(os.environ["MORAY_WHEEL"])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=600, cwd=ROOT)
    (wheel,) = out.glob("moray-*.whl")
    return wheel


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def test_wheel_in_a_fresh_venv_runs_the_agent(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    env = clean_env()
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    t0 = time.monotonic()
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, env=env, timeout=900, cwd=tmp_path)
    print(f"\nwheel {wheel.name}: {wheel.stat().st_size} bytes; pip install "
          f"{time.monotonic() - t0:.1f} s; venv {du(venv) >> 20} MiB")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from moray.agent.bpf.loader import object_path; print(object_path('moray.bpf.o'))"],
        check=True, env=env, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where

    port = free_port()
    pin_root = f"/sys/fs/bpf/moray-test-wheel-{os.getpid()}"
    (tmp_path / "policies").mkdir()
    events = tmp_path / "events.jsonl"
    agent_bin = str(venv / "bin" / "moray-agent")
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [agent_bin, "run", "-o", str(events), "--metrics-port", str(port),
             "--pin-root", pin_root, "--policy-dir", str(tmp_path / "policies"),
             "--policy-status", str(tmp_path / "status.json"),
             "--data-dir", str(tmp_path / "state")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while readyz(port) != 200:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.1)
        p = subprocess.Popen(["/bin/true", "moray-wheel-probe"])
        p.wait()
        log_ = EventLog(events)
        log_.wait_for(lambda e: e["type"] == "exec" and e["process"]["pid"] == p.pid,
                      timeout=15, what="the exec of /bin/true")
        built = log_.all(lambda e: e["type"] == "exec" and e.get("parent") is not None
                         and e["parent"]["pid"] == agent.pid
                         and os.path.basename(e["process"]["binary"]).startswith(
                             ("clang", "llc", "bpftool")))
        assert built == [], json.dumps(built)[:2000]
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        subprocess.run([agent_bin, "unload", "--pin-root", pin_root], env=env,
                       capture_output=True, timeout=60, check=False)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    shutil.rmtree(venv, ignore_errors=True)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
