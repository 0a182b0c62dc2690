"""OpenTelemetry export (``--otlp-endpoint``): events and alerts as OTLP logs, the agent's
Prometheus registry as OTLP metrics, over gRPC or HTTP/protobuf, through the OpenTelemetry
SDK's OTLP exporters (the ``otlp`` extra: ``pip install 'moray[otlp]'``).

One LogRecord per event or alert:

    body        the object as written to the JSON output (moray's alert object, whatever
                --alert-format): by default its JSON text (``--otlp-body json``), which
                Loki stores as the log line (the JSON output's line: ``| json`` parses
                it) and Elastic as the message; ``--otlp-body map`` sends it as an
                AnyValue map instead, which Elastic's OTLP intake indexes field by field
                (``body.structured.*``) and Loki turns back into the same JSON text. The
                map costs ~6x the exporter thread's CPU (the SDK encodes it value by
                value: ~200 us a record against ~35 us), hence not the default; the key
                fields are attributes either way, which both index
    time        the event's kernel time; observed time: when it was queued here
    severity    an alert's priority (syslog -> OTLP as the OpenTelemetry data model's
                syslog mapping); events INFO, enforcement events WARN
    attributes  moray.type, moray.rule, moray.priority, moray.event.type (an alert's
                event's), container.id/name/image.name/runtime, k8s.namespace.name,
                k8s.pod.name, k8s.pod.uid, process.pid, process.executable.path,
                process.parent_pid (semantic conventions' names where they have one)
    resource    service.name=moray-agent, service.version, host.name (--node)

Never blocks the pipeline: ``event``/``alert`` append to a bounded queue (a deque
check and append; alerts have ``ALERT_HEADROOM`` places beyond the bound that events
cannot take, so an event flood does not crowd them out); a full queue drops the object,
counts it (``dropped``, exported as ``moray_otlp_dropped_total``) and logs at most every
10 s. One thread batches the queue (``batch`` records or every ``delay`` seconds) into
the SDK exporter, which retries transient failures with backoff within its timeout, as
the SDK specifies; a batch the exporter gives up on is counted in ``failed``. (The SDK's
own BatchLogRecordProcessor is not used: it logs a warning per dropped record and counts
drops only in OpenTelemetry's own meter.) A second thread exports the Prometheus
registry every ``metrics_interval`` seconds: counters as cumulative monotonic sums since
the agent started, gauges as gauges (histograms and summaries are skipped; the agent has
none).
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from moray.errors import ConfigError

log = logging.getLogger(__name__)

EXTRA_HINT = ("--otlp-endpoint needs the OpenTelemetry SDK and OTLP exporters: "
              "pip install 'moray[otlp]' (opentelemetry-sdk, "
              "opentelemetry-exporter-otlp-proto-grpc, opentelemetry-exporter-otlp-proto-http)")

# syslog severity (agent/detect/model.py Priority) -> OTLP SeverityNumber, as in the
# OpenTelemetry logs data model's syslog appendix
SEVERITY = {"EMERGENCY": 21, "ALERT": 19, "CRITICAL": 18, "ERROR": 17, "WARNING": 13,
            "NOTICE": 10, "INFORMATIONAL": 9, "DEBUG": 5}
SEVERITY_INFO, SEVERITY_WARN = 9, 13
INT64 = 1 << 63
ALERT_HEADROOM = 1024  # queue places only alerts may take


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    endpoint: str
    protocol: str | None = None         # grpc | http; None: from the endpoint's scheme
    headers: tuple[str, ...] = ()       # "k=v" or "k=v,k2=v2"
    insecure: bool = False              # gRPC without TLS
    metrics_interval: float = 60.0      # seconds; 0: no metrics
    body: str = "json"                  # json: the object's JSON text; map: AnyValue map
    queue_records: int = 4096          # the events themselves: ~3-5 KB each, ~20 MB full
    batch: int = 512
    delay: float = 1.0
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    protocol: str                       # grpc | http
    logs: str                           # gRPC: host:port; HTTP: the full URL
    metrics: str
    insecure: bool
    headers: dict[str, str]


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            k, eq, v = part.partition("=")
            if not eq or not k.strip():
                raise ConfigError(f"--otlp-headers {item!r}: wants KEY=VALUE[,KEY=VALUE...]")
            out[k.strip().lower()] = v.strip()
    return out


def target(s: OtlpSettings) -> Target:
    """Where and how to send, from --otlp-endpoint/--otlp-protocol/--otlp-insecure:
    ``grpc://host:port`` gRPC (TLS unless --otlp-insecure); ``http://`` or ``https://``
    HTTP/protobuf to ``/v1/logs`` and ``/v1/metrics`` under the URL's path, or gRPC with
    --otlp-protocol grpc (plaintext for http://, TLS for https://)."""
    u = urlsplit(s.endpoint)
    if u.scheme not in ("grpc", "http", "https") or not u.netloc:
        raise ConfigError(f"--otlp-endpoint {s.endpoint!r}: wants grpc://HOST:PORT, "
                          f"http://HOST:PORT or https://HOST:PORT")
    if s.protocol not in (None, "grpc", "http"):
        raise ConfigError(f"--otlp-protocol {s.protocol!r}: grpc or http")
    protocol = s.protocol or ("grpc" if u.scheme == "grpc" else "http")
    if u.scheme == "grpc" and protocol != "grpc":
        raise ConfigError(f"--otlp-endpoint {s.endpoint!r} is gRPC; --otlp-protocol http "
                          f"wants an http:// or https:// endpoint")
    headers = parse_headers(s.headers)
    if protocol == "grpc":
        insecure = s.insecure or u.scheme == "http"
        if s.insecure and u.scheme == "https":
            raise ConfigError("--otlp-insecure with an https:// endpoint: use http:// or "
                              "grpc:// for plaintext gRPC")
        return Target("grpc", u.netloc, u.netloc, insecure, headers)
    if s.insecure:
        raise ConfigError("--otlp-insecure is for gRPC; for plaintext HTTP give an "
                          "http:// endpoint")
    base = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}"
    return Target("http", f"{base}/v1/logs", f"{base}/v1/metrics", u.scheme == "http",
                  headers)


# --------------------------------------------------------------------------- mapping

def time_ns(text: Any) -> int | None:
    """RFC 3339 UTC with up to ns ("2026-12-07T19:17:45.123456789Z") -> Unix ns."""
    if not isinstance(text, str) or len(text) < 20:
        return None
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        s = time.strptime(head, "%Y-%m-%dT%H:%M:%S")
        return calendar.timegm(s) * 1_000_000_000 + int((frac or "0")[:9].ljust(9, "0"))
    except ValueError:
        return None


def body(v: Any) -> Any:
    """The object as an AnyValue: ints beyond int64 as text (OTLP's int is int64)."""
    if isinstance(v, dict):
        return {k: body(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [body(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v < INT64:
        return str(v)
    return v


def attributes(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The key fields as attributes (None values left out)."""
    t = obj.get("type")
    a: dict[str, Any] = {"moray.type": t}
    e: Mapping[str, Any] = obj
    if t == "alert":
        a["moray.rule"] = obj.get("rule")
        a["moray.priority"] = obj.get("priority")
        tags = obj.get("tags")
        if tags:
            a["moray.tags"] = [str(x) for x in tags]
        ev = obj.get("event")
        e = ev if isinstance(ev, dict) else {}
        a["moray.event.type"] = e.get("type")
    c = e.get("container")
    if isinstance(c, dict):
        a["container.id"] = c.get("id")
        a["container.name"] = c.get("name")
        a["container.image.name"] = c.get("image")
        a["container.runtime"] = c.get("runtime")
        pod = c.get("pod")
        if isinstance(pod, dict):
            a["k8s.namespace.name"] = pod.get("namespace")
            a["k8s.pod.name"] = pod.get("name")
            a["k8s.pod.uid"] = pod.get("uid")
    p = e.get("process")
    if isinstance(p, dict):
        a["process.pid"] = p.get("pid")
        a["process.executable.path"] = p.get("binary")
    par = e.get("parent")
    if isinstance(par, dict):
        a["process.parent_pid"] = par.get("pid")
    return {k: v for k, v in a.items() if v is not None}


def severity(obj: Mapping[str, Any]) -> tuple[int, str]:
    t = obj.get("type")
    if t == "alert":
        prio = str(obj.get("priority"))
        return SEVERITY.get(prio, SEVERITY_WARN), prio
    if t == "enforce":
        return SEVERITY_WARN, "WARN"
    return SEVERITY_INFO, "INFO"


class _Sdk:
    """The SDK's names, imported once (the extra is optional)."""

    def __init__(self) -> None:
        try:
            from opentelemetry._logs import LogRecord, SeverityNumber
            from opentelemetry.sdk._logs import ReadableLogRecord
            from opentelemetry.sdk.metrics.export import (
                AggregationTemporality,
                Gauge,
                Metric,
                MetricsData,
                NumberDataPoint,
                ResourceMetrics,
                ScopeMetrics,
                Sum,
            )
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError as err:
            raise ConfigError(f"{EXTRA_HINT} ({err})") from None
        self.LogRecord, self.SeverityNumber = LogRecord, SeverityNumber
        self.ReadableLogRecord, self.Resource = ReadableLogRecord, Resource
        self.Scope = InstrumentationScope
        self.AggregationTemporality, self.Gauge, self.Metric = (
            AggregationTemporality, Gauge, Metric)
        self.MetricsData, self.NumberDataPoint, self.ResourceMetrics = (
            MetricsData, NumberDataPoint, ResourceMetrics)
        self.ScopeMetrics, self.Sum = ScopeMetrics, Sum


def available() -> bool:
    try:
        _Sdk()
    except ConfigError:
        return False
    return True


def exporters(t: Target, timeout: float) -> tuple[Any, Any]:
    """The SDK's OTLP log and metric exporters for the target."""
    try:
        if t.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
                OTLPLogExporter as GrpcLogs,
            )
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetrics,
            )
            hdrs = tuple(t.headers.items()) or None
            return (GrpcLogs(endpoint=t.logs, insecure=t.insecure, headers=hdrs,
                             timeout=timeout),
                    GrpcMetrics(endpoint=t.metrics, insecure=t.insecure, headers=hdrs,
                                timeout=timeout))
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter as HttpLogs,
        )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetrics,
        )
        return (HttpLogs(endpoint=t.logs, headers=t.headers, timeout=timeout),
                HttpMetrics(endpoint=t.metrics, headers=t.headers, timeout=timeout))
    except ImportError as err:
        raise ConfigError(f"{EXTRA_HINT} ({err})") from None


class OtlpExport:
    """The OTLP output; the router hands it every event and alert that passed the export
    filters (agent/output/filters.py)."""

    def __init__(self, settings: OtlpSettings, node: str, registry: Any | None = None,
                 version: str | None = None) -> None:
        from moray import __version__

        self.sdk = _Sdk()
        self.settings = settings
        self.target = target(settings)
        self.registry = registry
        self.resource = self.sdk.Resource.create({
            "service.name": "moray-agent", "service.version": version or __version__,
            "host.name": node})
        self.scope = self.sdk.Scope("moray.agent", version or __version__)
        self.log_exporter, self.metric_exporter = exporters(self.target, settings.timeout)
        self._queue: deque[tuple[int, dict[str, Any]]] = deque()
        self._max = settings.queue_records
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.start_ns = time.time_ns()
        # figures (moray_otlp_* in agent/output/metrics.py ExportCollector)
        self.queued = 0
        self.exported = 0
        self.dropped = 0
        self.failed = 0                 # records in batches the exporter gave up on
        self.metric_exports = 0
        self.metric_failures = 0
        self._failed_batches = 0
        self._logs_ok = True            # the last export's result: close() does not wait
        self._metrics_ok = True         # on a collector that just failed
        self._drop_logged = 0.0
        self._drops_at_log = 0

    # --- the pipeline's side ----------------------------------------------------------

    def event(self, e: dict[str, Any]) -> None:
        if len(self._queue) >= self._max:
            self._drop()
            return
        self._queue.append((time.time_ns(), e))
        self.queued += 1
        if len(self._queue) >= self.settings.batch:
            self._wake.set()

    def alert(self, a: dict[str, Any]) -> None:
        """As `event`, with headroom: a flood of events (a process opening files in a
        loop) fills the queue to its bound, and an alert still gets in, up to
        ``ALERT_HEADROOM`` more."""
        if len(self._queue) >= self._max + ALERT_HEADROOM:
            self._drop()
            return
        self._queue.append((time.time_ns(), a))
        self.queued += 1
        self._wake.set()

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged >= 10.0:
            log.warning("OTLP export queue full (%d records): %d dropped since the last "
                        "warning (%d in all); the collector at %s is slow or down",
                        self._max, self.dropped - self._drops_at_log, self.dropped,
                        self.settings.endpoint)
            self._drop_logged = now
            self._drops_at_log = self.dropped

    # --- threads ----------------------------------------------------------------------

    def start(self) -> None:
        t = threading.Thread(target=self._logs_loop, name="moray-otlp-logs", daemon=True)
        t.start()
        self._threads.append(t)
        if self.registry is not None and self.settings.metrics_interval > 0:
            m = threading.Thread(target=self._metrics_loop, name="moray-otlp-metrics",
                                 daemon=True)
            m.start()
            self._threads.append(m)
        log.info("OTLP export to %s (%s%s)", self.settings.endpoint, self.target.protocol,
                 ", plaintext" if self.target.insecure else "")

    def record(self, observed: int, obj: dict[str, Any]) -> Any:
        sdk = self.sdk
        num, text = severity(obj)
        rec = sdk.LogRecord(
            timestamp=time_ns(obj.get("time")) or observed, observed_timestamp=observed,
            severity_number=sdk.SeverityNumber(num), severity_text=text,
            body=body(obj) if self.settings.body == "map" else orjson.dumps(obj).decode(),
            attributes=attributes(obj))
        return sdk.ReadableLogRecord(rec, resource=self.resource,
                                     instrumentation_scope=self.scope)

    def _export_batch(self) -> int:
        with self._lock:  # the thread and close() (after a timed-out join)
            return self._export_locked()

    def _export_locked(self) -> int:
        q, n = self._queue, min(len(self._queue), self.settings.batch)
        if n == 0:
            return 0
        items = [q.popleft() for _ in range(n)]
        batch = []
        for t, o in items:
            try:
                batch.append(self.record(t, o))
            except Exception:  # one odd object must not lose its batch
                self.failed += 1
                if self.failed <= 10:
                    log.exception("OTLP: cannot map a %s record", o.get("type"))
        n = len(batch)
        if n == 0:
            return len(items)
        try:
            result = self.log_exporter.export(batch)
            ok = getattr(result, "name", "") == "SUCCESS"
        except Exception:  # an exporter bug must not stop the thread
            log.exception("OTLP log export failed")
            ok = False
        self._logs_ok = ok
        if ok:
            self.exported += n
        else:
            self.failed += n
            self._failed_batches += 1
            if self._failed_batches == 1 or self._failed_batches % 100 == 0:
                log.warning("OTLP log export to %s failed: %d records lost so far",
                            self.settings.endpoint, self.failed)
        return len(items)

    def _logs_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.delay)
            self._wake.clear()
            while self._queue and not self._stop.is_set():
                if self._export_batch() < self.settings.batch:
                    break

    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.settings.metrics_interval):
            self.export_metrics()

    def export_metrics(self) -> bool:
        try:
            data = self.metrics_data()
            result = self.metric_exporter.export(data, timeout_millis=self.settings.timeout
                                                 * 1000)
            ok = getattr(result, "name", "") == "SUCCESS"
        except Exception:
            log.exception("OTLP metric export failed")
            ok = False
        self._metrics_ok = ok
        if ok:
            self.metric_exports += 1
        else:
            self.metric_failures += 1
            if self.metric_failures == 1 or self.metric_failures % 100 == 0:
                log.warning("OTLP metric export to %s failed (%d times)",
                            self.settings.endpoint, self.metric_failures)
        return ok

    def metrics_data(self) -> Any:
        """The Prometheus registry now, as the SDK's MetricsData."""
        sdk, now, start = self.sdk, time.time_ns(), self.start_ns
        metrics = []
        assert self.registry is not None
        for fam in self.registry.collect():
            if fam.type == "counter":
                pts = [sdk.NumberDataPoint(attributes=dict(s.labels),
                                           start_time_unix_nano=start, time_unix_nano=now,
                                           value=s.value)
                       for s in fam.samples if s.name.endswith("_total")]
                data: Any = sdk.Sum(data_points=pts, is_monotonic=True,
                                    aggregation_temporality=sdk.AggregationTemporality
                                    .CUMULATIVE)
            elif fam.type in ("gauge", "unknown", "info", "stateset"):
                pts = [sdk.NumberDataPoint(attributes=dict(s.labels),
                                           start_time_unix_nano=0, time_unix_nano=now,
                                           value=s.value) for s in fam.samples]
                data = sdk.Gauge(data_points=pts)
            else:  # histogram, summary: none in the agent
                continue
            if pts:
                metrics.append(sdk.Metric(name=fam.name, description=fam.documentation,
                                          unit=fam.unit or "", data=data))
        return sdk.MetricsData(resource_metrics=[sdk.ResourceMetrics(
            resource=self.resource, scope_metrics=[sdk.ScopeMetrics(
                scope=self.scope, metrics=metrics, schema_url="")], schema_url="")])

    def close(self, timeout: float = 5.0) -> None:
        """Stop in about ``timeout`` seconds: export what is queued, and the metrics once
        more, unless the collector is failing (an export still retrying when the threads
        are told to stop, or the last one failed). Then the exporters are shut down at
        once, which ends their retries, and what is left is counted as dropped."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = any(t.is_alive() for t in self._threads)
        if stuck:  # an export retrying against a collector that is down
            self._shutdown_exporters()
            for t in self._threads:
                t.join(1.0)
        else:
            while self._queue and self._logs_ok and time.monotonic() < deadline:
                self._export_batch()
            if self.registry is not None and self.settings.metrics_interval > 0 and \
                    self._threads and self._metrics_ok and self.metric_exports:
                self.export_metrics()
        left = len(self._queue)
        self._queue.clear()
        if left:
            self.dropped += left
            log.warning("OTLP export: %d records not sent at shutdown", left)
        if not stuck:
            self._shutdown_exporters()

    def _shutdown_exporters(self) -> None:
        for exp in (self.log_exporter, self.metric_exporter):
            try:
                exp.shutdown()
            except Exception:
                log.debug("OTLP exporter shutdown failed", exc_info=True)


def settings_from(endpoint: str, protocol: str | None, headers: Sequence[str],
                  insecure: bool, metrics_interval: float, body: str = "json"
                  ) -> OtlpSettings:
    if metrics_interval < 0:
        raise ConfigError("--otlp-metrics-interval: seconds >= 0 (0: no metrics)")
    if body not in ("json", "map"):
        raise ConfigError(f"--otlp-body {body!r}: json or map")
    s = OtlpSettings(endpoint, protocol, tuple(headers), insecure, metrics_interval,
                     body)
    target(s)  # errors before anything starts
    return s


__all__ = ["EXTRA_HINT", "OtlpExport", "OtlpSettings", "attributes", "available", "body",
           "settings_from", "severity", "target", "time_ns"]
