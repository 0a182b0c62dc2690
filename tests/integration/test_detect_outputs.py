"""Alert outputs received by REAL listeners on loopback (root: runs the real agent).

One agent sends every alert to: syslog over UDP, TCP and TLS (RFC 5424, octet-counted
frames on streams), CEF over UDP, a JSON webhook that fails its first request with 503
(so the retry is exercised), and a webhook nobody listens on (dead: its drops are counted
in moray_alert_output_drops_total while the agent keeps reporting). The alert comes from a
host process reading /etc/shadow.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import AgentProcess, free_port
from tests.helpers.containers import run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

RULE = "Read sensitive file"
RESPOND_RULES = """
- rule: Kill marked process
  desc: test rule with a kill response
  condition: evt.type = exec and proc.cmdline contains moray-respond-kill
  priority: ALERT
  mitre: [T1059]
  response: kill
- rule: Stop marked container
  desc: test rule with a stop_container response
  condition: evt.type = exec and container.id exists and proc.cmdline contains moray-respond-stop
  priority: CRITICAL
  response: stop_container
"""


@dataclass
class Inbox:
    messages: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, m: bytes) -> None:
        with self.lock:
            self.messages.append(m)

    def wait(self, needle: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.messages:
                    if needle in m:
                        return m
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not received; got {self.messages[-3:]!r}")


def _udp(inbox: Inbox) -> tuple[int, socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                data, _ = s.recvfrom(65535)
            except OSError:
                return
            inbox.add(data)
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1], s


def _frames(conn: socket.socket, inbox: Inbox) -> None:
    """RFC 6587 octet counting: `LEN SP MSG`."""
    buf = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk
        while True:
            sp = buf.find(b" ")
            if sp < 0 or not buf[:sp].isdigit():
                break
            n = int(buf[:sp])
            if len(buf) < sp + 1 + n:
                break
            inbox.add(buf[sp + 1:sp + 1 + n])
            buf = buf[sp + 1 + n:]


def _tcp(inbox: Inbox, ctx: ssl.SSLContext | None = None) -> tuple[int, socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()

    def loop() -> None:
        while True:
            try:
                conn, _ = s.accept()
                if ctx is not None:
                    conn = ctx.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                if s.fileno() < 0:
                    return
                continue
            threading.Thread(target=_frames, args=(conn, inbox), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1], s


def _cert(work: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cp, kp = work / "cert.pem", work / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


class _Hook(http.server.BaseHTTPRequestHandler):
    inbox: Inbox
    fail_first: list[bool]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.fail_first and self.fail_first[0]:
            self.fail_first[0] = False
            self.send_response(503)
            self.end_headers()
            return
        self.inbox.add(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Listeners:
    agent: AgentProcess
    udp: Inbox
    tcp: Inbox
    tls: Inbox
    cef: Inbox
    hook: Inbox
    hook_failed_first: list[bool]


@pytest.fixture(scope="module")
def listeners() -> Iterator[Listeners]:
    work = Path(tempfile.mkdtemp(prefix="moray-siem-"))
    socks: list[socket.socket] = []
    udp, tcp, tls, cefb, hook = Inbox(), Inbox(), Inbox(), Inbox(), Inbox()
    cert, key = _cert(work)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    pu, s1 = _udp(udp)
    pt, s2 = _tcp(tcp)
    ps, s3 = _tcp(tls, ctx)
    pc, s4 = _udp(cefb)
    socks += [s1, s2, s3, s4]
    fail_first = [True]
    handler = type("Hook", (_Hook,), {"inbox": hook, "fail_first": fail_first})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    dead = free_port()
    (work / "agent").mkdir()
    custom = work / "respond.yaml"
    custom.write_text(RESPOND_RULES)
    args = ["--rules", str(custom),
            "--syslog", f"udp://127.0.0.1:{pu}", "--syslog", f"tcp://127.0.0.1:{pt}",
            "--syslog", f"tls://127.0.0.1:{ps}?ca={cert}", "--cef", f"udp://127.0.0.1:{pc}",
            "--webhook", f"http://127.0.0.1:{httpd.server_address[1]}/hook",
            "--webhook", f"http://127.0.0.1:{dead}/nobody"]
    try:
        with AgentProcess(args, workdir=work / "agent") as agent:
            subprocess.run(["cat", "/etc/shadow"], capture_output=True, check=False)
            yield Listeners(agent, udp, tcp, tls, cefb, hook, fail_first)
    finally:
        httpd.shutdown()
        for s in socks:
            s.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)


_RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) moray (\S+) alert \[moray@32473 ([^\]]*)\] (.*)$",
                      re.S)


def _syslog_ok(msg: bytes) -> dict[str, Any]:
    m = _RFC5424.match(msg)
    assert m, msg[:300]
    pri = int(m.group(1))
    assert pri // 8 == 16 and pri % 8 == 4  # local0, WARNING
    assert b'rule="Read sensitive file"' in m.group(5)
    alert: dict[str, Any] = json.loads(m.group(6))
    assert alert["type"] == "alert" and alert["rule"] == RULE
    return alert


def test_syslog_udp(listeners: Listeners) -> None:
    a = _syslog_ok(listeners.udp.wait(RULE.encode()))
    assert a["event"]["file"]["path"] == "/etc/shadow"


def test_syslog_tcp_octet_counted(listeners: Listeners) -> None:
    _syslog_ok(listeners.tcp.wait(RULE.encode()))


def test_syslog_tls(listeners: Listeners) -> None:
    a = _syslog_ok(listeners.tls.wait(RULE.encode()))
    assert a["ancestry"] is not None


def test_cef(listeners: Listeners) -> None:
    msg = listeners.cef.wait(b"CEF:0|moray|moray-agent|").decode()
    cef = msg[msg.index("CEF:0"):]
    parts = cef.split("|", 7)
    assert parts[4] == "read_sensitive_file" and parts[5] == RULE and parts[6] == "6"
    assert "filePath=/etc/shadow" in parts[7] and "sproc=" in parts[7]


def test_webhook_retried_after_503(listeners: Listeners) -> None:
    body = listeners.hook.wait(RULE.encode())
    alert = json.loads(body)
    assert alert["rule"] == RULE and alert["event"]["process"]["args"][:2] == ["cat",
                                                                               "/etc/shadow"]
    assert listeners.hook_failed_first == [False], "the first POST was answered 503"


def test_dead_webhook_counts_drops_and_agent_goes_on(listeners: Listeners) -> None:
    deadline = time.monotonic() + 30
    drops = 0.0
    while time.monotonic() < deadline:
        m = listeners.agent.metrics()
        drops = m.get('moray_alert_output_drops_total{output="webhook"}', 0)
        if drops >= 1:
            break
        time.sleep(0.5)
    assert drops >= 1
    # the agent still reports: a new event after the drops
    subprocess.run(["cat", "/etc/gshadow"], capture_output=True, check=False)
    listeners.agent.events.wait_for(lambda e: e.get("type") == "alert"
                                    and e["event"].get("file", {}).get("path") == "/etc/gshadow",
                                    what="a later alert")


def test_response_kill_detect_then_respond(listeners: Listeners) -> None:
    """A rule with `response: kill`: the process is killed after the alert (it ran)."""
    p = subprocess.Popen(["sh", "-c", "sleep 30", "moray-respond-kill"])
    try:
        code = p.wait(15)
    finally:
        if p.poll() is None:
            p.kill()
    assert code == -9
    a = listeners.agent.events.wait_for(lambda e: e.get("type") == "alert"
                                        and e["rule"] == "Kill marked process",
                                        what="the kill alert")
    assert a["response"] == {"action": "kill", "detect_then_respond": True, "ok": True,
                             "error": None}
    assert a["priority"] == "ALERT" and a["event"]["process"]["pid"] == p.pid


def test_response_stop_container(listeners: Listeners) -> None:
    """`response: stop_container` kills every process of the container (cgroup.kill)."""
    cid = f"mr-stop-{os.getpid()}"
    with run_runc(cid, ["/bin/sh", "-c", "sleep 0.5; sh -c 'sleep 60' moray-respond-stop & "
                                          "sleep 60"]) as ctr:
        t0 = time.monotonic()
        res = ctr.wait(30)
        assert time.monotonic() - t0 < 20, "the container was stopped, not left to finish"
        assert res.exit_code in (137, -9), res
    a = listeners.agent.events.wait_for(lambda e: e.get("type") == "alert"
                                        and e["rule"] == "Stop marked container",
                                        what="the stop alert")
    assert a["response"]["action"] == "stop_container" and a["response"]["ok"] is True
    assert a["event"]["container"]["id"] == cid


def test_invalid_rules_refuse_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: typo\n  condition: evt.type = exec and proc.nmae = sh\n")
    res = subprocess.run([sys.executable, "-m", "moray.agent.cli", "run", "--no-pin", "--rules",
                          str(bad), "--metrics-port", "0", "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], check=False)
    assert res.returncode == 2
    assert f"{bad}:2: rule 'typo'.condition: unknown field or macro 'proc.nmae'" in res.stderr
    assert "did you mean proc.name?" in res.stderr
