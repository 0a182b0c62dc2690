"""moray/sdnotify.py against a real AF_UNIX datagram socket as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from moray import sdnotify


def test_sends_one_datagram_per_call(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        env = {"NOTIFY_SOCKET": path}
        assert sdnotify.notify("STATUS=loading\nBPF", env=env)
        assert sock.recv(4096) == b"STATUS=loading BPF"  # one assignment stays one line
        assert sdnotify.notify("READY=1", "STATUS=running", env=env)
        assert sock.recv(4096) == b"READY=1\nSTATUS=running"


def test_abstract_socket_and_the_module_helpers() -> None:
    name = f"moray-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        os.environ["NOTIFY_SOCKET"] = "@" + name
        try:
            assert sdnotify.status("starting: load_bpf")
            assert sdnotify.ready()
            assert sdnotify.stopping("bye")
        finally:
            del os.environ["NOTIFY_SOCKET"]
        assert [sock.recv(4096) for _ in range(3)] == [
            b"STATUS=starting: load_bpf", b"READY=1", b"STOPPING=1\nSTATUS=bye"]


def test_no_socket_or_a_dead_one_is_not_an_error(tmp_path: Path) -> None:
    assert not sdnotify.notify("READY=1", env={})
    assert not sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1"})
