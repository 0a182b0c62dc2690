"""Alert outputs for SIEMs: syslog (RFC 5424 over UDP, TCP or TLS), CEF (over the same
syslog transports) and an HTTP(S) JSON webhook.

Each output owns a bounded queue and one sender thread. `publish()` never blocks: when
the queue is full the alert is dropped and counted (`moray_alert_output_drops_total`),
so a slow or dead SIEM costs the agent nothing but those alerts. Senders reconnect with
backoff (stream transports) or retry (webhook: `retries` attempts, exponential backoff,
then the alert is dropped and counted). Alerts also go to the agent's JSON output, which
these do not replace: the pipeline's router (agent/pipeline/route.py) publishes each
alert to every output with its JSON encoding (`encoded`, made once for the JSON sink),
which syslog and the webhook send as they are instead of encoding the alert again.

URLs:
    syslog / cef:  udp://HOST:PORT | tcp://HOST:PORT | tls://HOST:PORT
                   query: facility=local0 (RFC 5424 facility name), ca=FILE (TLS trust
                   anchors; default: system), insecure=1 (TLS without verification),
                   app=moray (APP-NAME)
    webhook:       http(s)://HOST[:PORT]/PATH   query of the URL is kept; header
                   `Authorization` from the MORAY_WEBHOOK_AUTH environment variable
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson

from moray.errors import ConfigError

log = logging.getLogger(__name__)

FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
              "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
              **{f"local{i}": 16 + i for i in range(8)}}
SD_ID = "moray@32473"  # enterprise number 32473 is reserved for documentation (RFC 5612)


class OutputError(ConfigError, ValueError):
    """A bad output URL; the message says what is wrong."""


class AlertOutput(Protocol):
    kind: str
    sent: int
    dropped: int

    def publish(self, alert: dict[str, Any], encoded: bytes | None = None) -> None: ...
    def close(self, timeout: float = 2.0) -> None: ...


Format = Callable[[dict[str, Any], int, str, bytes | None], bytes]


# --------------------------------------------------------------------------- formats

def _sd_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _ts(alert: dict[str, Any]) -> str:
    t = alert.get("time")
    if isinstance(t, str) and t:
        return t[:26] + "Z" if len(t) > 27 else t  # RFC 5424: at most 6 fractional digits
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hdr(alert: dict[str, Any], facility: int, app: str, msgid: str) -> str:
    sev = int(alert.get("severity", 4))
    pri = facility * 8 + min(max(sev, 0), 7)
    host = str(alert.get("node") or socket.gethostname())[:255].replace(" ", "_") or "-"
    ev = alert.get("event") or {}
    pid = (ev.get("process") or {}).get("pid")
    return f"<{pri}>1 {_ts(alert)} {host} {app} {pid if pid else '-'} {msgid}"


def rfc5424(alert: dict[str, Any], facility: int = 16, app: str = "moray",
            encoded: bytes | None = None) -> bytes:
    """`<PRI>1 TIME HOST APP PROCID alert [moray@32473 ...] <alert JSON>`; `encoded`: the
    alert's JSON if it is at hand already."""
    ev = alert.get("event") or {}
    c = ev.get("container") or {}
    p = ev.get("process") or {}
    sd = {"rule": alert.get("rule"), "priority": alert.get("priority"),
          "tags": ",".join(alert.get("tags") or ()), "container": c.get("id"),
          "image": c.get("image"), "exec_id": p.get("exec_id"), "binary": p.get("binary")}
    params = " ".join(f'{k}="{_sd_escape(str(v))}"' for k, v in sd.items() if v)
    head = _hdr(alert, facility, app, "alert")
    return f"{head} [{SD_ID} {params}] ".encode() + (
        encoded if encoded is not None else orjson.dumps(alert))


def _cef_hdr(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_ext(v: object) -> str:
    return (str(v).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r")
            .replace("\n", "\\n"))


def cef(alert: dict[str, Any], version: str = "1") -> str:
    """ArcSight CEF:0 line. Severity 0-10 from the syslog severity (EMERGENCY=10)."""
    ev = alert.get("event") or {}
    p = ev.get("process") or {}
    c = ev.get("container") or {}
    sev = int(alert.get("severity", 4))
    cef_sev = {0: 10, 1: 10, 2: 9, 3: 8, 4: 6, 5: 4, 6: 2, 7: 1}.get(sev, 5)
    rule = str(alert.get("rule", ""))
    sig = rule.lower().replace(" ", "_")[:100]
    ext: dict[str, object] = {
        "rt": _epoch_ms(alert), "dvchost": alert.get("node"), "msg": alert.get("output"),
        "spid": p.get("pid"), "sproc": p.get("binary"), "suid": p.get("uid"),
        "cs1Label": "container", "cs1": c.get("id"), "cs2Label": "image",
        "cs2": c.get("image"), "cs3Label": "tags", "cs3": ",".join(alert.get("tags") or ()),
        "cs4Label": "exec_id", "cs4": p.get("exec_id"), "cat": ev.get("type"),
    }
    f = ev.get("file")
    if f:
        ext["filePath"] = f.get("path")
    n = ev.get("network")
    if n:
        ext.update(dst=n.get("daddr"), dpt=n.get("dport"), proto=n.get("protocol"))
    s = ev.get("syscall")
    if s:
        ext.update(cs5Label="syscall", cs5=s.get("name"), filePath=s.get("path"))
    r = alert.get("response")
    if r:
        ext["act"] = r.get("action")
    body = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items() if v is not None and v != "")
    return (f"CEF:0|moray|moray-agent|{_cef_hdr(version)}|{_cef_hdr(sig)}|{_cef_hdr(rule)}|"
            f"{cef_sev}|{body}")


def cef_syslog(alert: dict[str, Any], facility: int = 16, app: str = "moray",
               encoded: bytes | None = None) -> bytes:
    del encoded  # CEF is not JSON
    return f"{_hdr(alert, facility, app, 'alert')} - {cef(alert)}".encode()


def _epoch_ms(alert: dict[str, Any]) -> int:
    t = alert.get("time")
    if isinstance(t, str) and t:
        try:
            return int(datetime.fromisoformat(t[:26] + "+00:00").timestamp() * 1000)
        except ValueError:
            pass
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- plumbing

class _Queued:
    """Bounded queue + sender thread. Subclasses implement `_send(alert, encoded)`, which
    may raise OSError (the alert is then dropped and counted after its retries)."""

    kind = "output"

    def __init__(self, target: str, buffer: int = 10000) -> None:
        self.target = target
        self.q: queue.Queue[tuple[dict[str, Any], bytes | None] | None] = queue.Queue(buffer)
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"moray-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def publish(self, alert: dict[str, Any], encoded: bytes | None = None) -> None:
        try:
            self.q.put_nowait((alert, encoded))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%s output %s: buffer full, %d alerts dropped", self.kind,
                            self.target, self.dropped)

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            try:
                self._send(*item)
                self.sent += 1
            except OSError as err:
                self.dropped += 1
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("%s output %s: %s (%d alerts dropped)", self.kind,
                                self.target, err, self.dropped)

    def _send(self, alert: dict[str, Any], encoded: bytes | None) -> None:
        raise NotImplementedError

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to `timeout` seconds, then stop."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.q.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._close()

    def _close(self) -> None:
        pass


class SyslogOutput(_Queued):
    """RFC 5424 messages; TCP and TLS use octet-counting framing (RFC 6587 / 5425)."""

    kind = "syslog"

    def __init__(self, url: str, buffer: int = 10000,
                 fmt: Format = rfc5424,
                 connect_timeout: float = 3.0) -> None:
        u = urlsplit(url)
        if u.scheme not in ("udp", "tcp", "tls") or not u.hostname or not u.port:
            raise OutputError(f"{self.kind} URL {url!r}: expected udp://, tcp:// or "
                              "tls://HOST:PORT")
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        fac = q.get("facility", "local0")
        if fac not in FACILITIES:
            raise OutputError(f"{self.kind} URL {url!r}: unknown facility {fac!r}")
        for k in q:
            if k not in ("facility", "ca", "insecure", "app"):
                raise OutputError(f"{self.kind} URL {url!r}: unknown parameter {k!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port
        self.facility = FACILITIES[fac]
        self.app = q.get("app", "moray")
        self.fmt = fmt
        self.timeout = connect_timeout
        self.ctx: ssl.SSLContext | None = None
        if self.scheme == "tls":
            self.ctx = ssl.create_default_context(cafile=q.get("ca"))
            if q.get("insecure") == "1":
                self.ctx.check_hostname = False
                self.ctx.verify_mode = ssl.CERT_NONE
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        super().__init__(url, buffer)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._retry_at:
            raise OSError(f"{self.host}:{self.port} unreachable, retrying in "
                          f"{self._retry_at - now:.1f}s")
        try:
            if self.scheme == "udp":
                fam = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                s = socket.socket(fam[0], socket.SOCK_DGRAM)
                s.connect(fam[4])
            else:
                s = socket.create_connection((self.host, self.port), self.timeout)
                s.settimeout(self.timeout)
                if self.ctx is not None:
                    s = self.ctx.wrap_socket(s, server_hostname=self.host)
        except OSError:
            self._retry_at = time.monotonic() + 2.0
            raise
        self._sock = s
        return s

    def _send(self, alert: dict[str, Any], encoded: bytes | None) -> None:
        msg = self.fmt(alert, self.facility, self.app, encoded)
        for attempt in (0, 1):  # one reconnect for a stream the peer closed
            s = self._connect()
            try:
                if self.scheme == "udp":
                    s.send(msg[:65000])
                else:
                    s.sendall(str(len(msg)).encode() + b" " + msg)
                return
            except OSError:
                self._drop_conn()
                if attempt:
                    raise

    def _drop_conn(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _close(self) -> None:
        self._drop_conn()


class CefOutput(SyslogOutput):
    kind = "cef"

    def __init__(self, url: str, buffer: int = 10000) -> None:
        super().__init__(url, buffer, fmt=cef_syslog)


class WebhookOutput(_Queued):
    """POST each alert as JSON; retries with exponential backoff on errors and 5xx."""

    kind = "webhook"

    def __init__(self, url: str, buffer: int = 10000, retries: int = 3,
                 backoff: float = 0.5, timeout: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise OutputError(f"webhook URL {url!r}: expected http(s)://HOST[:PORT]/PATH")
        self.url = urlunsplit(u)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.auth = os.environ.get("MORAY_WEBHOOK_AUTH")
        super().__init__(url, buffer)

    def _send(self, alert: dict[str, Any], encoded: bytes | None) -> None:
        body = encoded if encoded is not None else orjson.dumps(alert)
        headers = {"Content-Type": "application/json", "User-Agent": "moray-agent"}
        if self.auth:
            headers["Authorization"] = self.auth
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers,
                                             method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as err:
                if err.code < 500 and err.code != 429:
                    raise OSError(f"HTTP {err.code} from {self.url}") from err
                last: OSError = OSError(f"HTTP {err.code} from {self.url}")
            except (OSError, ValueError) as err:
                last = OSError(f"{self.url}: {err}")
            if attempt < self.retries and not self._stop.is_set():
                self.sleep(delay)
                delay *= 2
        raise last


def build(syslog: tuple[str, ...] = (), cef_urls: tuple[str, ...] = (),
          webhook: tuple[str, ...] = (), buffer: int = 10000) -> list[AlertOutput]:
    """Outputs for the agent's --syslog / --cef / --webhook URLs (OutputError if bad)."""
    outs: list[AlertOutput] = []
    try:
        outs += [SyslogOutput(u, buffer) for u in syslog]
        outs += [CefOutput(u, buffer) for u in cef_urls]
        outs += [WebhookOutput(u, buffer) for u in webhook]
    except OutputError:
        for o in outs:
            o.close(0)
        raise
    return outs
