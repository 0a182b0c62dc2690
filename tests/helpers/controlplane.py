"""Helpers for control plane tests: a real ``moray-server`` process on loopback ports,
an authenticated REST client, and an agent process running ``ControlPlaneClient``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.procs import Child

ROOT = Path(__file__).resolve().parents[2]
# the children import moray from this tree, and whatever else the test run was given
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (the sockets are held open together, so the kernel
    cannot hand the same port out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# tests and benchmarks enrol hundreds of agents from one address (loopback) at once: the
# servers and gateways they start have no enrolment rate limits unless a test sets them
# (tests/integration/test_enrollment_tokens.py does)
NO_ENROLL_LIMITS = ("--enroll-rate-per-source", "0", "--enroll-rate-per-token", "0")


def _sets_enroll_limits(args: tuple[str, ...]) -> bool:
    return any(a.startswith("--enroll-rate-") for a in args)


class ServerProcess(Child):
    """``python -m moray.controlplane.server.main`` on 127.0.0.1 with fixed ports, so a restart
    comes back where the agents look for it."""

    def __init__(self, data_dir: Path, database_url: str | None = None,
                 http_tls: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.http_tls = http_tls
        self.extra_args = extra_args
        self.grpc_port, self.enroll_port, self.http_port = free_ports(3)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def enroll_target(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.http_tls else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "moray.controlplane.server.main", "--data-dir",
               str(self.data_dir), "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port),
               "--enroll-port", str(self.enroll_port), "--http-port", str(self.http_port)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.http_tls:
            cmd.append("--http-tls")
        cmd += [*NO_ENROLL_LIMITS] if not _sets_enroll_limits(self.extra_args) else []
        cmd += self.extra_args
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                         env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH})
        wait_for(self._healthy, timeout=30, what=f"moray-server (log: {self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"moray-server exited {self.proc.returncode}: "
                                 f"{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/readyz", timeout=1, verify=False).status_code == 200
        except httpx.TransportError:
            return False


    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_pem(self) -> bytes:
        return (self.data_dir / "pki" / "ca.pem").read_bytes()

    def api(self, token: str | None = None) -> Api:
        ca = str(self.data_dir / "pki" / "ca.pem") if self.http_tls else None
        return Api(self.url, token or self.admin_token, ca)

    def import_advisories(self, path: Path) -> str:
        """``moray vulndb import PATH`` through the REST API (a scan needs vulnerability
        data: workers fail jobs on a knowledge base that never received any); its
        output."""
        env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH, "MORAY_SERVER": self.url,
               "MORAY_TOKEN": self.admin_token, "MORAY_DATA_DIR": str(self.data_dir / "cli")}
        done = subprocess.run([sys.executable, "-m", "moray.cli", "vulndb", "import", str(path)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode in (0, 1), done.stderr    # 1: some files skipped
        return done.stdout


class GatewayProcess(Child):
    """``python -m moray.controlplane.gateway.main run`` on 127.0.0.1, linked to ``server``,
    with a certificate issued by ``moray gateway cert`` from the server's data dir. The
    port and the spool directory stay the same across restarts."""

    def __init__(self, data_dir: Path, server: ServerProcess, name: str,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir, self.server, self.name = data_dir, server, name
        self.extra_args = extra_args
        self.port, self.enroll_port, self.metrics_port = free_ports(3)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "gateway.log"
        self.env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH}

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def enroll_target(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    def http(self, path: str) -> httpx.Response:
        """GET ``path`` on the metrics port (/metrics, /healthz, /readyz)."""
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)

    def issue_cert(self) -> None:
        subprocess.run([sys.executable, "-m", "moray.cli", "gateway", "cert", "--data-dir",
                        str(self.server.data_dir), "--name", self.name, "--out",
                        str(self.data_dir / "pki")], cwd=ROOT, env=self.env, check=True,
                       capture_output=True)

    def start(self) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "pki" / "gateway.pem").exists():
            self.issue_cert()
        cmd = [sys.executable, "-m", "moray.controlplane.gateway.main", "run", "--server",
               self.server.grpc_target, "--data-dir", str(self.data_dir), "--host",
               "127.0.0.1", "--port", str(self.port), "--enroll-port", str(self.enroll_port),
               "--server-enroll", self.server.enroll_target,
               "--metrics-port", str(self.metrics_port),
               *(NO_ENROLL_LIMITS if not _sets_enroll_limits(self.extra_args) else ()),
               *self.extra_args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env=self.env)
        wait_for(self._listening, timeout=30, what=f"moray-gateway (log: {self.log})")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"moray-gateway exited {self.proc.returncode}: "
                                 f"{self.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                    timeout=0.5):
            return True
        return False



class Api:
    def __init__(self, base: str, token: str | None, ca: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        self.http = httpx.Client(base_url=base, headers=headers, timeout=30, verify=verify)

    def __call__(self, method: str, path: str, expect: int | None = None, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if expect is not None:
            assert r.status_code == expect, (r.status_code, r.text)
        return r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else r.text

    def status(self, method: str, path: str, **kw: Any) -> int:
        return self.http.request(method, path, **kw).status_code

    def token(self, labels: dict[str, str] | None = None, tenant: str = "default") -> str:
        return str(self("POST", "/api/v1/enrollment-tokens", expect=201,
                        json={"labels": labels or {}, "tenant": tenant})["token"])

    def apply(self, text: str, source: str = "policy.yaml") -> dict[str, Any]:
        r = self.http.post("/api/v1/policies", json={"content": text, "source": source})
        assert r.status_code in (200, 201), r.text
        return dict(r.json()["policies"][0])


def policy_yaml(name: str, *, labels: dict[str, str] | None = None,
                deny: str = "/bin/sh", mode: str = "enforce") -> str:
    """A policy for host processes; ``labels`` select the agents that receive it."""
    agents = ""
    if labels:
        inner = ", ".join(f"{k}: {v}" for k, v in labels.items())
        agents = f"agents: {{labels: {{{inner}}}}}, "
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  scope: {{{agents}host: true}}\n  mode: {mode}\n"
            f"  exec: {{deny: [{deny}]}}\n")


AGENT_SCRIPT = r'''
import json, os, sys, time, threading, logging
from pathlib import Path
from moray.agent.controlplane import ApplyResult, ControlPlaneClient
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
cfg = json.loads(sys.argv[1])
out = Path(cfg["data_dir"]) / "applied.jsonl"

def on_policy(policy):
    with open(out, "a") as f:
        f.write(json.dumps({"name": policy.name, "version": policy.version,
                            "removed": policy.removed}) + "\n")
        f.flush(); os.fsync(f.fileno())
    return ApplyResult(ok=True, tiers={"exec.deny[0]": "sigkill"})

client = ControlPlaneClient(cfg["server"], cfg["data_dir"], on_policy, token=cfg.get("token"),
                            ca_pem=cfg["ca_pem"].encode(), enroll_server=cfg["enroll"],
                            labels=cfg.get("labels"), heartbeat_interval=0.5)
client.start()
sys.stdout.write("started\n"); sys.stdout.flush()
accepted = Path(cfg["data_dir"]) / "accepted.txt"
done = accepted.read_text().split() if accepted.exists() else []
start = int(done[-1]) + 1 if done else 0
n = cfg.get("events", 0)
with open(accepted, "a") as acc:
    for i in range(start, n):
        if client.send({"type": "exec", "id": f"{cfg['prefix']}-{i}", "n": i}):
            acc.write(f"{i}\n"); acc.flush()
        time.sleep(cfg.get("event_gap", 0))
while True:
    time.sleep(1)
'''


class AgentProcess:
    """A separate process running ControlPlaneClient with a fake ``on_policy`` that
    records every applied policy in ``applied.jsonl``; optionally sends ``events`` events
    with ids ``<prefix>-<i>``, writing each accepted index to ``accepted.txt``."""

    def __init__(self, data_dir: Path, server: ServerProcess, token: str | None, *,
                 labels: dict[str, str] | None = None, events: int = 0,
                 prefix: str = "ev", event_gap: float = 0.0) -> None:
        self.data_dir = data_dir
        self.cfg = {"server": server.grpc_target, "enroll": server.enroll_target,
                    "data_dir": str(data_dir), "token": token, "labels": labels or {},
                    "ca_pem": server.ca_pem.decode(), "events": events, "prefix": prefix,
                    "event_gap": event_gap}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "agent.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, json.dumps(self.cfg)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                     env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"started\n", (line, (self.data_dir / "agent.log").read_text()[-2000:])
        return self

    def applied(self) -> list[dict[str, Any]]:
        path = self.data_dir / "applied.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def accepted(self) -> list[int]:
        path = self.data_dir / "accepted.txt"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def agent_id(self) -> str:
        return str(json.loads((self.data_dir / "identity" / "agent.json").read_text())[
            "agent_id"])


class TcpProxy:
    """A loopback TCP relay whose connections can be cut at any moment (``cut``), like a
    network failure between an agent and the server. TLS passes through untouched."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.cuts = 0
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def enroll_target(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    def http(self, path: str) -> httpx.Response:
        """GET ``path`` on the metrics port (/metrics, /healthz, /readyz)."""
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Reset every open connection (new ones are accepted again right away)."""
        with self._lock:
            socks, self._socks = self._socks, set()
            self.cuts += 1
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()
