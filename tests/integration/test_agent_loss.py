"""Loss accounting under a storm: records the kernel could not write are counted per type
(moray_events_lost_total{type,where}) and said in the event stream (a `loss` event), and
the figures add up. Real agent with a 1 MiB ring, stopped (SIGSTOP) while a process opens a
watched file 30,000 times, so the ring fills for certain. Root only; under the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.agent import REPO, AgentProcess, Event

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

STORM = 30_000


def lost(agent: AgentProcess, where: str, typ: str | None = None) -> float:
    return sum(v for k, v in agent.metrics().items()
               if k.startswith("moray_events_lost_total{") and f'where="{where}"' in k
               and (typ is None or f'type="{typ}"' in k))


def reported(events: list[Event], where: str, typ: str) -> int:
    return sum(e["loss"]["lost"].get(typ, {}).get(where, 0) for e in events)


def test_a_storm_that_overflows_the_ring_is_counted_per_type(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    f = tmp_path / "w" / "storm"
    f.write_text("x")
    with AgentProcess(["--no-containers", "--no-default-watch", "--watch", f"{tmp_path}/w/",
                       "--ring-mb", "1", "--no-aggregate"],  # identical opens: else counted
                      env={"PYTHONPATH": str(REPO)}) as agent:
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            p = subprocess.run([sys.executable, "-c", f"import os\nfor _ in range({STORM}): "
                                f"os.close(os.open({str(f)!r}, os.O_RDONLY))\n"
                                "print(os.getpid())"],
                               capture_output=True, text=True, timeout=60, check=True)
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        pid = int(p.stdout.split()[-1])
        ev = agent.events.wait_for(lambda e: e["type"] == "loss", timeout=30, what="loss event")
        assert ev["loss"]["lost"]["open"]["ring"] > 0 and ev["node"]
        # every record the ring refused is counted under its type, and the total is the same
        ring_total = agent.metric_sum("moray_ringbuf_drops_total")
        assert lost(agent, "ring") == ring_total > 0
        # the loss events say what the metrics say (a later loss comes in a later event)
        deadline = time.monotonic() + 30
        while True:
            losses = agent.events.all(lambda e: e["type"] == "loss")
            if reported(losses, "ring", "open") == lost(agent, "ring", "open"):
                break
            assert time.monotonic() < deadline, (losses, agent.metrics())
            time.sleep(0.2)
        # what was seen plus what was lost covers the storm; something was lost
        seen = len(agent.events.all(lambda e: e["type"] == "open"
                                    and e["file"]["path"] == str(f)
                                    and e["process"]["pid"] == pid))
        assert seen < STORM
        assert seen + lost(agent, "ring", "open") >= STORM
