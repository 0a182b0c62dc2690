"""The webhook's HTTPS app and the work behind one request.

``POST /validate``: AdmissionReview v1 in, AdmissionReview v1 out (HTTP 200 with
``response.allowed``; a body that is not an AdmissionReview the webhook can read: 400 with
``{"error": ...}`` naming the field; over ``MAX_BODY``: 413). ``GET /healthz``: 200 while
serving (probes); ``GET /metrics``: Prometheus.

``Enforcer.review`` runs the modules in order: ``review.parse`` -> exclusions ->
per distinct image, concurrently: ``resolve`` (registry, off the event loop) ->
``verdicts`` (cached) -> scan on admission if configured -> ``decide`` -> the response;
the decision is queued for the server's audit log and inventory (``Reporter``), never
waited for. Requests for the same uncached tag or digest share one lookup.

TLS: ``certs.CertKeeper`` keeps the served certificate: the files read again when they
change on disk, or (``--cert-from-server``) renewed from the server before expiry; either
way loaded into the live TLS context, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moray.api.imageverdicts import Verdict
from moray.controlplane.kubeenforcer.certs import CertKeeper
from moray.controlplane.kubeenforcer.config import EnforcerConfig, Unregistered
from moray.controlplane.kubeenforcer.decide import (
    Decision,
    Outcome,
    decide,
    exclusion,
    judge,
    runs_images,
)
from moray.controlplane.kubeenforcer.resolve import Resolved, ResolveError, Resolver
from moray.controlplane.kubeenforcer.review import API_VERSION, Container, Review, ReviewError
from moray.controlplane.kubeenforcer.review import parse as parse_review
from moray.controlplane.kubeenforcer.verdicts import (
    Reporter,
    Server,
    ServerUnavailable,
    VerdictSource,
)

log = logging.getLogger(__name__)

MAX_BODY = 8 << 20      # an AdmissionReview carries the object and the old object
MAX_IMAGES = 64         # distinct images per request (each may cost a registry round trip)
SCAN_POLL = 0.2         # seconds between verdict reads while a scan on admission runs


class Enforcer:
    def __init__(self, config: EnforcerConfig, *, server: Server | None = None,
                 resolver: Resolver | None = None) -> None:
        self.config = config
        self.server = server or Server(config)
        self.verdicts = VerdictSource(self.server, config)
        self.resolver = resolver or Resolver(config)
        self.reporter = Reporter(self.server)
        self._resolving: dict[str, asyncio.Future[Resolved]] = {}
        self.registry = CollectorRegistry()
        self.decisions = Counter("moray_kube_decisions", "admission decisions",
                                 ["decision"], registry=self.registry)
        self.images = Counter("moray_kube_images", "images judged, by verdict", ["verdict"],
                              registry=self.registry)
        self.malformed = Counter("moray_kube_malformed_requests",
                                 "requests answered 400 or 413", registry=self.registry)
        self.seconds = Histogram("moray_kube_decision_seconds", "time to decide",
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 5, 10))
        self.certs: CertKeeper | None = None    # set by serve
        self.registry.register(_Collector(self))

    # -- one image -------------------------------------------------------------------------

    async def resolve(self, image: str) -> Resolved:
        found = self.resolver.cached(image)
        if found is not None:
            return found
        pending = self._resolving.get(image)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Resolved] = asyncio.get_running_loop().create_future()
        self._resolving[image] = future
        try:
            resolved = await asyncio.to_thread(self.resolver.resolve, image)
            future.set_result(resolved)
            return resolved
        except BaseException as err:
            future.set_exception(err)
            future.exception()
            raise
        finally:
            del self._resolving[image]

    async def judge_image(self, container: Container, deadline: float) -> Outcome:
        try:
            resolved = await self.resolve(container.image)
        except ResolveError as err:
            return Outcome(container, Verdict.UNRESOLVED, detail=str(err))
        digest, pinned = resolved.digest, resolved.pinned
        try:
            found = await self.verdicts.get(digest)
        except ServerUnavailable as err:
            return Outcome(container, Verdict.UNKNOWN, digest, detail=str(err), pinned=pinned)
        verdict, reasons = judge(found, self.config.policies)
        if verdict is Verdict.UNREGISTERED and self.config.unregistered is Unregistered.SCAN:
            return await self._scan(container, resolved, deadline, reasons)
        return Outcome(container, verdict, digest, reasons, pinned=pinned)

    async def _scan(self, container: Container, resolved: Resolved, deadline: float,
                    reasons: tuple[str, ...]) -> Outcome:
        """Ask the server to scan the image (the exact digest), then read its verdict
        until one comes or the budget is spent."""
        settings = self.config.registry(resolved.reference.registry)
        digest, pinned = resolved.digest, resolved.pinned
        try:
            await self.server.enqueue_scan(pinned, insecure=settings.insecure,
                                           credentials=settings.credentials)
        except ServerUnavailable as err:
            return Outcome(container, Verdict.UNKNOWN, digest, detail=str(err), pinned=pinned)
        log.info("scan on admission queued", extra={"image": container.image,
                                                    "digest": digest})
        while time.monotonic() + SCAN_POLL < deadline:
            await asyncio.sleep(SCAN_POLL)
            try:
                found = await self.verdicts.get(digest, fresh=True)
            except ServerUnavailable:
                continue
            verdict, reasons = judge(found, self.config.policies)
            if verdict is not Verdict.UNREGISTERED:
                return Outcome(container, verdict, digest, reasons, scan_queued=True,
                               pinned=pinned)
        return Outcome(container, Verdict.UNREGISTERED, digest, reasons, scan_queued=True,
                       pinned=pinned)

    # -- one request -----------------------------------------------------------------------

    async def review(self, body: bytes) -> dict[str, Any]:
        """The AdmissionReview answer to ``body``; ``ReviewError`` if it cannot be read."""
        start = time.monotonic()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ReviewError(f"body: not JSON: {err}") from err
        review = parse_review(doc)
        excluded = exclusion(review, self.config)
        if excluded or not runs_images(review):
            decision = Decision(True, "allow", "", (), (), excluded=excluded)
        else:
            deadline = start + min(self.config.scan_budget, self.config.request_timeout - 0.5)
            images = {c.image for c in review.containers if c not in review.previous}
            if len(images) > MAX_IMAGES:
                raise ReviewError(f"request.object: {len(images)} distinct images, more than "
                                  f"{MAX_IMAGES}")
            checks: dict[str, asyncio.Task[Outcome]] = {}
            for c in review.containers:
                if c not in review.previous and c.image not in checks:
                    checks[c.image] = asyncio.create_task(self.judge_image(c, deadline))
            judged = await self._collect(checks, start + self.config.request_timeout)
            outcomes = [Outcome(c, Verdict.UNCHANGED) if c in review.previous else
                        _for(judged[c.image], c) for c in review.containers]
            decision = decide(review, outcomes, self.config)
        self.decisions.labels(decision.decision).inc()
        for o in decision.outcomes:
            self.images.labels(str(o.verdict)).inc()
        self.reporter.report(_report(review, decision, self.config))
        self.seconds.observe(time.monotonic() - start)
        if decision.decision != "allow" or decision.warnings:
            log.info("admission decision", extra={
                "decision": decision.decision, "namespace": review.namespace,
                "kind": review.kind, "workload": review.name,
                "reason": decision.message[:500]})
        return response(review.uid, decision)


    @staticmethod
    async def _collect(checks: dict[str, asyncio.Task[Outcome]], until: float
                       ) -> dict[str, Outcome]:
        """The outcomes known by ``until``; the others are unknown (the failure policy
        decides) and their lookups go on, filling the caches for the next request."""
        if checks:
            await asyncio.wait(checks.values(), timeout=max(0.0, until - time.monotonic()))
        out: dict[str, Outcome] = {}
        for image, task in checks.items():
            if task.done():
                out[image] = task.result()
                continue
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            out[image] = Outcome(Container("container", "", image), Verdict.UNKNOWN,
                                 detail="no answer within requestTimeout")
        return out


def _for(o: Outcome, c: Container) -> Outcome:
    """The outcome judged for an image, for another container that runs the same image."""
    return o if o.container == c else Outcome(c, o.verdict, o.digest, o.reasons, o.detail,
                                              o.scan_queued, o.pinned)


def response(uid: str, decision: Decision) -> dict[str, Any]:
    answer: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        answer["status"] = {"code": 403, "reason": "Forbidden",
                            "message": f"moray: {decision.message}"}
    if decision.warnings:
        answer["warnings"] = list(decision.warnings)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": answer}


def _report(review: Review, decision: Decision, config: EnforcerConfig) -> dict[str, Any]:
    return {
        "uid": review.uid, "namespace": review.namespace, "kind": review.kind,
        "name": review.name, "operation": review.operation, "user": review.user,
        "allowed": decision.allowed, "decision": decision.decision, "mode": str(config.mode),
        "message": decision.message[:8192], "dry_run": review.dry_run,
        "excluded": decision.excluded, "inventory": review.checked and not review.controlled,
        "images": [{"container_type": o.container.type, "container": o.container.name,
                    "image": o.container.image, "digest": o.digest, "verdict": str(o.verdict),
                    "reasons": [r[:4096] for r in o.reasons[:64]] or
                    ([o.detail[:4096]] if o.detail else [])}
                   for o in decision.outcomes]}


class _Collector:
    """Cache and reporter figures, read at scrape time."""

    def __init__(self, enforcer: Enforcer) -> None:
        self.e = enforcer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        v, r = self.e.verdicts, self.e.reporter
        c = CounterMetricFamily("moray_kube_verdict_cache", "verdict lookups", labels=["result"])
        c.add_metric(["hit"], v.hits)
        c.add_metric(["miss"], v.misses)
        c.add_metric(["offline"], v.offline_answers)
        yield c
        yield CounterMetricFamily("moray_kube_registry_lookups", "registry round trips",
                                  value=self.e.resolver.lookups)
        rep = CounterMetricFamily("moray_kube_reports", "decisions reported", labels=["result"])
        rep.add_metric(["sent"], r.sent)
        rep.add_metric(["dropped"], r.dropped)
        yield rep
        yield GaugeMetricFamily("moray_kube_reports_queued", "decisions waiting to be "
                                "reported", value=len(r.queue))
        certs = self.e.certs
        if certs is not None:
            yield GaugeMetricFamily("moray_kube_tls_cert_expiry_timestamp_seconds",
                                    "when the served TLS certificate expires (unix time)",
                                    value=certs.expires)
            ren = CounterMetricFamily("moray_kube_tls_renewals", "serving certificates "
                                      "obtained from the server", labels=["result"])
            ren.add_metric(["ok"], certs.renewed)
            ren.add_metric(["failed"], certs.failed)
            yield ren


def create_app(enforcer: Enforcer) -> Starlette:
    async def validate(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            enforcer.malformed.inc()
            return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                enforcer.malformed.inc()
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
            chunks.append(chunk)
        try:
            answer = await enforcer.review(b"".join(chunks))
        except ReviewError as err:
            enforcer.malformed.inc()
            log.warning("malformed admission review", extra={"error": str(err)[:300]})
            return JSONResponse({"error": str(err)}, status_code=400)
        return Response(orjson.dumps(answer), media_type="application/json")

    async def healthz(_request: Request) -> Response:
        certs = enforcer.certs
        if certs is None:
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": True, "cert_serial": certs.serial,
                             "cert_expires_in": int(certs.expires - time.time()),
                             "cert_renewals": certs.renewed,
                             "cert_renewal_failures": certs.failed})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(enforcer.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        enforcer.reporter.start()
        try:
            yield
        finally:
            await enforcer.reporter.stop()
            await enforcer.server.close()

    return Starlette(routes=[Route("/validate", validate, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"]),
                             Route("/metrics", metrics, methods=["GET"])],
                     lifespan=lifespan)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: EnforcerConfig, stop: asyncio.Event | None = None,
                enforcer: Enforcer | None = None) -> None:
    """Serve until ``stop`` is set."""
    stop = stop or asyncio.Event()
    enforcer = enforcer or Enforcer(config)
    assert config.tls_cert is not None and config.tls_key is not None
    certs = CertKeeper(config.tls_cert, config.tls_key,
                       server=enforcer.server if config.cert_from_server else None)
    enforcer.certs = certs
    await certs.first(stop)           # step: serving certificate (from the server if asked)
    if stop.is_set():
        return
    app = create_app(enforcer)
    client_auth: dict[str, Any] = {}
    if config.client_ca is not None:
        client_auth = {"ssl_ca_certs": str(config.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uconfig = uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                             access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                             ssl_certfile=str(config.tls_cert), ssl_keyfile=str(config.tls_key),
                             **client_auth)
    http = _HttpServer(uconfig)
    loop = asyncio.get_running_loop()
    # SIGHUP is ours before the first connection is accepted (its default would end the
    # process); one received before the keeper runs is its first check
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, certs.wake)
    task = asyncio.create_task(http.serve())
    stopper = asyncio.create_task(stop.wait())
    keeper: asyncio.Task[None] | None = None
    try:
        while not http.started and not task.done() and not stop.is_set():
            await asyncio.wait({task, stopper}, timeout=0.02,
                               return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            raise SystemExit(f"moray-kube-enforcer: cannot listen on {config.host}:"
                             f"{config.port}")
        assert uconfig.ssl is not None
        certs.attach(uconfig.ssl)
        keeper = asyncio.create_task(certs.run())
        log.info("moray-kube-enforcer ready", extra={
            "port": config.port, "server": config.server, "mode": str(config.mode),
            "unregistered": str(config.unregistered), "failurePolicy": str(config.failure),
            "excluded": sorted(config.excluded_namespaces), "cert_serial": certs.serial,
            "cert_from_server": config.cert_from_server})
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        http.should_exit = True
        stopper.cancel()
        if keeper is not None:
            keeper.cancel()
        if not task.done():
            await asyncio.wait_for(task, 15)
        log.info("moray-kube-enforcer stopped")
