"""The agent under bad conditions: not root, no BTF (fail fast, clear message); a
100,000-exec storm (no crash, no leak, every exec accounted for)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess, agent_cmd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

C_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "c"


def test_not_root_fails_fast() -> None:
    # a user namespace where we are uid 1000: no capabilities in the host namespace
    res = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000",
                          *agent_cmd(), "run", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "needs root" in res.stderr


def test_no_btf_fails_fast(tmp_path: Path) -> None:
    res = subprocess.run([*agent_cmd(), "run", "--metrics-port", "0", "--btf",
                          str(tmp_path / "missing-vmlinux")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "BTF" in res.stderr and "CONFIG_DEBUG_INFO_BTF" in res.stderr


def test_short_lived_process_still_complete(tmp_path: Path) -> None:
    with AgentProcess(["--no-containers"]) as a:
        p = subprocess.run(["sh", "-c", "exec /bin/true moray-shortlived"], timeout=20)
        assert p.returncode == 0
        e = a.events.wait_for(lambda e: e["type"] == "exec"
                              and e["process"]["args"] == ["/bin/true", "moray-shortlived"])
        assert e["process"]["binary"] == os.path.realpath("/bin/true")
        assert e["process"]["cwd"] and e["parent"]["pid"] == os.getpid()
        x = a.events.wait_for(lambda x: x["type"] == "exit"
                              and x["process"]["exec_id"] == e["process"]["exec_id"])
        assert x["process"]["binary"] == e["process"]["binary"]


def test_exec_storm_100k(tmp_path: Path) -> None:
    exe = tmp_path / "execstorm"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(C_DIR / "execstorm.c")], check=True)
    n = 100_000
    with AgentProcess(["--no-containers", "--output", "/dev/null"]) as a:
        # --output given twice: the last wins, events go nowhere; counts come from metrics
        rss_start = a.rss_kb()
        res = subprocess.run([str(exe), str(n), "/bin/true"], capture_output=True, text=True,
                             timeout=900)
        assert res.stdout.split() == [str(n), "0"]
        deadline = time.monotonic() + 120
        while True:
            execs = a.metric_sum("moray_events_total") and a.metrics().get(
                'moray_events_total{type="exec"}', 0)
            drops = a.metric_sum("moray_ringbuf_drops_total") + a.metric_sum(
                "moray_queue_drops_total")
            if execs + drops >= n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert a.proc is not None and a.proc.poll() is None, "agent died during the storm"
        # every exec is either reported or counted as dropped: nothing vanishes silently
        assert execs + drops >= n, (execs, drops)
        tree = a.metrics()["moray_process_tree_size"]
        assert tree < 20_000, f"process tree grew to {tree}"
        rss_end = a.rss_kb()
        assert rss_end < max(150_000, rss_start * 2), (rss_start, rss_end)
        assert a.stop() == 0
