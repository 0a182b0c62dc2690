"""SIEM formats (RFC 5424, CEF escaping) and the never-blocking output plumbing: a full
buffer drops and counts, the webhook retries 5xx with backoff and gives up on 4xx. Real
loopback listeners (no privileges needed)."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from typing import Any, ClassVar

import pytest

from moray.agent.output.siem import (
    CefOutput,
    OutputError,
    SyslogOutput,
    WebhookOutput,
    build,
    cef,
    rfc5424,
)

ALERT: dict[str, Any] = {
    "type": "alert", "time": "2026-01-02T03:04:05.123456789Z", "node": "node 1",
    "rule": "Read sensitive file", "priority": "WARNING", "severity": 4,
    "tags": ["filesystem", "T1003.008"], "output": "a=b | c\\d\nnext",
    "event": {"type": "open", "process": {"pid": 42, "binary": "/bin/cat", "uid": 0,
                                          "exec_id": "42:7"},
              "container": {"id": "c1", "image": 'img"]x'},
              "file": {"path": "/etc/shadow"}},
    "ancestry": [], "response": None,
}


def test_rfc5424_shape() -> None:
    msg = rfc5424(ALERT, facility=10).decode()
    assert msg.startswith("<84>1 2026-01-02T03:04:05.123456Z node_1 moray 42 alert "
                          "[moray@32473 ")
    assert 'image="img\\"\\]x"' in msg and 'rule="Read sensitive file"' in msg
    assert msg.endswith("}")


def test_cef_escaping() -> None:
    line = cef({**ALERT, "rule": "a|b"})
    parts = re.split(r"(?<!\\)\|", line, maxsplit=7)  # header pipes are escaped in fields
    assert parts[:7] == ["CEF:0", "moray", "moray-agent", "1", "a\\|b", "a\\|b", "6"]
    ext = parts[7]
    assert "msg=a\\=b | c\\\\d\\nnext" in ext and "filePath=/etc/shadow" in ext
    assert "cs1=c1" in ext and "spid=42" in ext


@pytest.mark.parametrize("url", ["udp://host", "ftp://h:1", "tcp://h:1?facility=nope",
                                 "tcp://h:1?bogus=1"])
def test_bad_syslog_urls(url: str) -> None:
    with pytest.raises(OutputError):
        SyslogOutput(url)


def test_bad_webhook_url() -> None:
    with pytest.raises(OutputError):
        build(webhook=("file:///etc/passwd",))


def test_full_buffer_drops_and_counts_never_blocks() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()  # accepts but never reads: TCP send eventually blocks the sender thread
    out = SyslogOutput(f"tcp://127.0.0.1:{srv.getsockname()[1]}", buffer=5)
    big = {**ALERT, "output": "x" * 200_000}
    t0 = time.monotonic()
    for _ in range(200):
        out.publish(big)
    assert time.monotonic() - t0 < 1.0  # publish never waits on the network
    assert out.dropped > 150
    srv.close()
    out.close(0.5)


def test_udp_and_cef_delivery() -> None:
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(5)
    port = r.getsockname()[1]
    for cls, needle in ((SyslogOutput, b"[moray@32473"), (CefOutput, b"CEF:0|moray")):
        o = cls(f"udp://127.0.0.1:{port}")
        o.publish(ALERT)
        data = r.recv(65535)
        assert needle in data
        o.close()
        assert o.sent == 1
    r.close()


class _H(http.server.BaseHTTPRequestHandler):
    codes: ClassVar[list[int]] = []
    seen: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.seen.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.codes.pop(0) if self.codes else 200)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def _server(codes: list[int]) -> tuple[http.server.HTTPServer, type[_H]]:
    h = type("H", (_H,), {"codes": codes, "seen": []})
    s = http.server.HTTPServer(("127.0.0.1", 0), h)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s, h


def _wait(cond: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_webhook_retries_5xx_then_succeeds() -> None:
    s, h = _server([500, 503])
    sleeps: list[float] = []
    o = WebhookOutput(f"http://127.0.0.1:{s.server_address[1]}/x", sleep=sleeps.append)
    o.publish(ALERT)
    _wait(lambda: o.sent == 1)
    assert o.sent == 1 and len(h.seen) == 3 and sleeps == [0.5, 1.0]
    o.close()
    s.shutdown()


def test_webhook_4xx_dropped_without_retry() -> None:
    s, h = _server([400])
    o = WebhookOutput(f"http://127.0.0.1:{s.server_address[1]}/x", sleep=lambda _: None)
    o.publish(ALERT)
    _wait(lambda: o.dropped == 1)
    assert o.dropped == 1 and len(h.seen) == 1
    o.close()
    s.shutdown()
