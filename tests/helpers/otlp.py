"""Real OTLP receivers on 127.0.0.1 for the tests of agent/output/otlp.py: a gRPC collector
(the LogsService and MetricsService of the published OTLP protobufs, opentelemetry-proto)
and an HTTP one (POST /v1/logs, /v1/metrics with protobuf bodies). Both keep what they
received, decoded, and let a test wait for what it expects (no sleeps)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value(v: AnyValue) -> Any:
    """An OTLP AnyValue as Python."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


@dataclass
class Log:
    resource: dict[str, Any]
    attributes: dict[str, Any]
    body: Any
    severity_number: int
    severity_text: str
    time_unix_nano: int

    @property
    def obj(self) -> Any:
        """The body as the event's object: a map as is, JSON text (--otlp-body json)
        parsed."""
        return json.loads(self.body) if isinstance(self.body, str) else self.body


@dataclass
class Received:
    logs: list[Log] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # name -> last Metric proto
    metric_resource: dict[str, Any] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add_logs(self, req: logs_service_pb2.ExportLogsServiceRequest,
                 headers: dict[str, str]) -> None:
        with self.cond:
            self.headers.append(headers)
            for rl in req.resource_logs:
                res = {kv.key: value(kv.value) for kv in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        self.logs.append(Log(res, {kv.key: value(kv.value)
                                                   for kv in r.attributes},
                                             value(r.body), r.severity_number,
                                             r.severity_text, r.time_unix_nano))
            self.cond.notify_all()

    def add_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest,
                    headers: dict[str, str]) -> None:
        with self.cond:
            self.headers.append(headers)
            for rm in req.resource_metrics:
                self.metric_resource = {kv.key: value(kv.value)
                                        for kv in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self.metrics[m.name] = m
            self.cond.notify_all()

    def wait(self, check: Callable[[Received], Any], timeout: float = 30.0) -> Any:
        """Until ``check(self)`` is truthy (returns it) or the timeout (AssertionError)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = check(self)
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"OTLP receiver: not received in {timeout}s "
                                         f"({len(self.logs)} logs, "
                                         f"{sorted(self.metrics)[:20]} metrics)")
                self.cond.wait(min(left, 0.5))


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
    def __init__(self, got: Received) -> None:
        self.got = got

    def Export(self, request: Any, context: Any) -> Any:
        self.got.add_logs(request, dict(context.invocation_metadata()))
        return logs_service_pb2.ExportLogsServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, got: Received) -> None:
        self.got = got

    def Export(self, request: Any, context: Any) -> Any:
        self.got.add_metrics(request, dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """A gRPC OTLP collector on 127.0.0.1:0 (plaintext); yields ("grpc://HOST:PORT", what
    it received)."""
    got = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(got), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(got), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}", got
    finally:
        server.stop(0)


@contextmanager
def http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP collector on 127.0.0.1:0: POST /v1/logs and /v1/metrics, protobuf
    bodies; yields ("http://HOST:PORT", what it received)."""
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(415)
                self.end_headers()
                return
            if self.headers.get("Content-Encoding") == "gzip":
                import gzip
                data = gzip.decompress(data)
            hdrs = {k.lower(): v for k, v in self.headers.items()}
            if self.path == "/v1/logs":
                req = logs_service_pb2.ExportLogsServiceRequest()
                req.ParseFromString(data)
                got.add_logs(req, hdrs)
                reply = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                mreq = metrics_service_pb2.ExportMetricsServiceRequest()
                mreq.ParseFromString(data)
                got.add_metrics(mreq, hdrs)
                reply = metrics_service_pb2.ExportMetricsServiceResponse() \
                    .SerializeToString()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
