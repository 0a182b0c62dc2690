"""agent/output/health.py: /healthz and /readyz over a real socket, through start-up,
ready, a dead thread, a stalled main loop and stopping."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from moray.agent.output.health import Health, HealthServer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read()
            code = r.status
    except urllib.error.HTTPError as err:
        body, code = err.read(), err.code
    return code, (json.loads(body) if path != "/metrics" else body.decode())


@pytest.fixture
def served() -> Iterator[tuple[Health, Clock, int]]:
    clock = Clock()
    health = Health(clock=clock, stale=10.0)
    reg = CollectorRegistry()
    Counter("moray_test_things", "things", registry=reg).inc(3)
    srv = HealthServer(health, 0, registry=reg)
    try:
        yield health, clock, srv.port
    finally:
        srv.close()


def test_start_up_then_ready(served: tuple[Health, Clock, int]) -> None:
    health, clock, port = served
    assert get(port, "/readyz") == (503, {"ready": False, "reason": "starting"})
    health.step("load_bpf")
    assert get(port, "/readyz") == (503, {"ready": False, "reason": "starting",
                                          "step": "load_bpf"})
    # a slow start is not a dead agent
    clock.t += 60
    assert get(port, "/healthz") == (200, {"status": "starting", "step": "load_bpf"})
    health.ready()
    assert get(port, "/readyz") == (200, {"ready": True, "ready_after_ms": 60000,
                                          "steps": {"load_bpf": 60000}})
    assert get(port, "/healthz")[0] == 200
    code, text = get(port, "/metrics")
    assert code == 200 and "moray_test_things_total 3.0" in text


def test_liveness_fails_when_the_loop_stalls_or_a_thread_dies(
        served: tuple[Health, Clock, int]) -> None:
    health, clock, port = served
    done = threading.Event()
    worker = threading.Thread(target=done.wait)
    worker.start()
    health.watch_thread("pipeline", worker)
    health.ready()
    clock.t += 5
    health.beat()
    assert get(port, "/healthz")[0] == 200
    clock.t += 11  # no beat for longer than `stale`
    code, body = get(port, "/healthz")
    assert code == 503 and body["reason"] == "main loop not turning"
    health.beat()
    assert get(port, "/healthz")[0] == 200
    done.set()
    worker.join()
    code, body = get(port, "/healthz")
    assert code == 503 and body["dead_threads"] == ["pipeline"]


def test_stopping_is_not_ready(served: tuple[Health, Clock, int]) -> None:
    health, _clock, port = served
    health.ready()
    health.stopping()
    assert get(port, "/readyz") == (503, {"ready": False, "reason": "stopping"})
    assert get(port, "/nothing")[0] == 404
