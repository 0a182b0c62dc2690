"""Server and gateway readiness as systemd sees it (Type=notify): READY=1 arrives on a real
AF_UNIX datagram NOTIFY_SOCKET once every port is bound (each accepts a connection at that
moment), STOPPING=1 on SIGTERM. No BPF: no lock needed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.controlplane import GatewayProcess, ServerProcess


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # the children inherit it
        yield sock


def wait_message(sock: socket.socket, key: str) -> list[str]:
    while True:
        lines = sock.recv(4096).decode().split("\n")  # TimeoutError after 30 s
        if key in lines:
            return lines


def accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return True


def test_ready_once_every_port_is_bound(tmp_path: Path, notify_socket: socket.socket) -> None:
    server = ServerProcess(tmp_path / "server")
    gateway = GatewayProcess(tmp_path / "gateway", server, "gw-notify")
    try:
        server.start()
        lines = wait_message(notify_socket, "READY=1")
        assert any(line.startswith("STATUS=serving") for line in lines)
        assert all(accepts(p) for p in (server.grpc_port, server.enroll_port,
                                         server.http_port))
        gateway.start()
        wait_message(notify_socket, "READY=1")
        assert accepts(gateway.port)
        gateway.stop()
        wait_message(notify_socket, "STOPPING=1")
        server.stop()
        wait_message(notify_socket, "STOPPING=1")
    finally:
        gateway.kill()
        server.kill()
