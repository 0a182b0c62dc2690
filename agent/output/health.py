"""The agent's HTTP endpoint on the metrics port: /metrics, /healthz, /readyz.

State owned here (`Health`), changed by the agent's main thread only:

- start-up: `step(name)` before each start-up step (agent/app.py `Agent.steps`); /readyz
  answers 503 {"ready": false, "reason": "starting", "step": name}, /healthz 200 (a slow
  start is not a dead agent: 15 s idle, a minute on a loaded host).
- `ready()` once every step has run (BPF programs attached, the policy directory applied,
  the pipeline running): /readyz 200 {"ready": true, "ready_after_ms", "steps": {name: ms}}
  (what each start-up step took, as the agent's log says). This is also when systemd gets READY=1
  (moray/sdnotify.py), so `systemctl start` and a Kubernetes readiness probe agree.
- `beat()` from the main loop every 0.5 s; /healthz answers 503 when the last beat is older
  than `stale` seconds (the main loop stopped turning) or a watched thread (the ring-buffer
  reader, the pipeline) has died.
- `stopping()` when teardown starts: /readyz 503 {"reason": "stopping"}.

The server is a `ThreadingHTTPServer` on a daemon thread (as prometheus_client's own):
a scrape never waits for the agent's threads, and a client that sends nothing holds its
connection thread for 10 s at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

STALE_SECONDS = 30.0  # /healthz fails when the main loop has not turned for this long


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 stale: float = STALE_SECONDS) -> None:
        self.clock = clock
        self.stale = stale
        self._lock = threading.Lock()
        self._state = "starting"          # starting | ready | stopping
        self._step: str | None = None
        self._started = clock()
        self._step_since = self._started
        self._steps: dict[str, int] = {}    # start-up step -> ms it took
        self._ready_after: float | None = None
        self._last_beat: float | None = None
        self._threads: dict[str, threading.Thread] = {}

    def step(self, name: str) -> None:
        with self._lock:
            self._end_step()
            self._step = name

    def _end_step(self) -> None:
        now = self.clock()
        if self._step is not None:
            self._steps[self._step] = round((now - self._step_since) * 1000)
        self._step_since = now

    def watch_thread(self, name: str, thread: threading.Thread) -> None:
        with self._lock:
            self._threads[name] = thread

    def ready(self) -> None:
        with self._lock:
            self._end_step()
            self._state, self._step = "ready", None
            now = self.clock()
            self._ready_after, self._last_beat = now - self._started, now

    def beat(self) -> None:
        with self._lock:
            self._last_beat = self.clock()

    def stopping(self) -> None:
        with self._lock:
            self._state = "stopping"

    @property
    def is_ready(self) -> bool:
        return self._state == "ready"

    def readyz(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self._state == "ready":
                return 200, {"ready": True, "ready_after_ms": round(
                    (self._ready_after or 0.0) * 1000), "steps": dict(self._steps)}
            body: dict[str, Any] = {"ready": False, "reason": self._state}
            if self._step is not None:
                body["step"] = self._step
            return 503, body

    def healthz(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            body: dict[str, Any] = {"status": self._state}
            if self._state == "starting":
                body["step"] = self._step
                return 200, body
            dead = sorted(n for n, t in self._threads.items() if not t.is_alive())
            age = None if self._last_beat is None else self.clock() - self._last_beat
            if age is not None:
                body["last_beat_s"] = round(age, 3)
            if dead and self._state == "ready":
                body["dead_threads"] = dead
                return 503, body
            if age is not None and age > self.stale:
                body["reason"] = "main loop not turning"
                return 503, body
            return 200, body


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that sends nothing loses its connection (and thread) after 10 s

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            code, body = (self.server.health.healthz() if path == "/healthz"
                          else self.server.health.readyz())
            self._send(code, orjson.dumps(body), "application/json")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], health: Health,
                 registry: CollectorRegistry) -> None:
        self.health = health
        self.registry = registry
        super().__init__(addr, _Handler)


class HealthServer:
    """/metrics, /healthz and /readyz on one port; `close()` stops it and frees the port."""

    def __init__(self, health: Health, port: int, addr: str = "127.0.0.1",
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._srv = _Server((addr, port), health, registry)  # OSError: port taken
        self.port = int(self._srv.server_address[1])
        self._thread = threading.Thread(target=self._srv.serve_forever, name="moray-http",
                                        daemon=True)
        self._thread.start()
        log.info("metrics and health on http://%s:%d/ (/metrics, /healthz, /readyz)",
                 addr, self.port)

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(5)
