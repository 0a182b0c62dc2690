"""The control plane as the webhook sees it: verdicts per image digest (cached), scans
asked for on admission, and the decisions reported back in batches.

``VerdictSource.get(digest)`` reads ``GET /api/v1/images/{digest}/verdicts`` (the
scanner's verdict endpoint, the one moray-server documents for admission). Its cache:

- an answer with verdicts is kept ``verdict_ttl`` seconds, an answer without any (not
  scanned yet) ``unregistered_ttl`` seconds, so a new scan or a changed verdict (new
  advisories, a new policy) takes effect within that time, without a restart;
- while the server cannot be reached, the last answer is still used for up to
  ``max_stale`` seconds (``ImageVerdicts.offline`` says so); past that, or for a digest
  never seen, ``ServerUnavailable`` is raised and the failure policy decides;
- concurrent requests for one digest share one round trip.

``Reporter`` queues each decision (bounded: beyond ``max_queue`` the oldest are dropped
and counted) and posts them to ``POST /api/v1/admission/reviews`` in batches from one
task, retrying while the server is away; a decision never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from moray.api.imageverdicts import StoredVerdict
from moray.controlplane.kubeenforcer.config import EnforcerConfig
from moray.errors import ServerUnreachable

log = logging.getLogger(__name__)


class ServerUnavailable(ServerUnreachable):
    """The server could not be asked (unreachable, timed out, refused the token, failed);
    ``status``: its HTTP answer (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ImageVerdicts:
    digest: str
    verdicts: tuple[StoredVerdict, ...]
    fetched: float
    offline: bool = False   # the server is away: this is the last answer it gave


def _client(config: EnforcerConfig) -> httpx.AsyncClient:
    import ssl

    verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=config.ca)
                                     if config.ca else True)
    return httpx.AsyncClient(base_url=config.server.rstrip("/"), verify=verify,
                             timeout=config.server_timeout,
                             headers={"Authorization": f"Bearer {config.token}"},
                             limits=httpx.Limits(max_connections=32,
                                                 max_keepalive_connections=16))


class Server:
    """The REST calls the webhook makes."""

    def __init__(self, config: EnforcerConfig, client: httpx.AsyncClient | None = None
                 ) -> None:
        self.config = config
        self.http = client or _client(config)

    async def _call(self, method: str, path: str, body: Any = None,
                    timeout: float | None = None) -> Any:
        try:
            resp = await self.http.request(method, "/api/v1" + path, json=body,
                                           timeout=timeout or self.config.server_timeout)
        except httpx.HTTPError as err:
            raise ServerUnavailable(f"server unreachable: {type(err).__name__}: {err}"
                                    ) from err
        if resp.status_code >= 400:
            raise ServerUnavailable(f"server answered HTTP {resp.status_code} for {path}: "
                                    f"{resp.text[:200]}", resp.status_code)
        try:
            return resp.json()
        except ValueError as err:
            raise ServerUnavailable(f"server answered {path} with no JSON: {err}") from err

    async def verdicts(self, digest: str) -> tuple[StoredVerdict, ...]:
        rows = await self._call("GET", f"/images/{digest}/verdicts")
        try:
            return tuple(StoredVerdict(str(v["policy"]), bool(v["passed"]),
                                       tuple(str(r) for r in v.get("reasons") or ()),
                                       bool(v.get("stale"))) for v in rows)
        except (KeyError, TypeError, AttributeError) as err:
            raise ServerUnavailable(f"unexpected verdicts answer: {err!r}") from err

    async def enqueue_scan(self, image: str, *, insecure: bool, credentials: str) -> int:
        doc = await self._call("POST", "/scan-jobs", {
            "image": image, "policy": self.config.scan_policy, "insecure": insecure,
            "credentials": credentials})
        return int(doc["id"])

    async def serving_cert(self, csr_pem: bytes) -> dict[str, str]:
        """``{"cert", "ca", "not_after"}``: a serving certificate for ``csr_pem``'s key,
        for the webhook names the server was started with."""
        doc = await self._call("POST", "/admission/serving-cert", {"csr": csr_pem.decode()},
                               timeout=10.0)
        if not isinstance(doc, dict) or not isinstance(doc.get("cert"), str):
            raise ServerUnavailable(f"unexpected serving-cert answer: {str(doc)[:200]}")
        return {k: str(v) for k, v in doc.items()}

    async def report(self, reviews: list[dict[str, Any]]) -> None:
        await self._call("POST", "/admission/reviews",
                         {"cluster": self.config.cluster, "reviews": reviews}, timeout=10.0)

    async def close(self) -> None:
        await self.http.aclose()


class VerdictSource:
    def __init__(self, server: Server, config: EnforcerConfig, *,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 50_000
                 ) -> None:
        self.server, self.config, self.clock = server, config, clock
        self.max_entries = max_entries
        self._cache: OrderedDict[str, ImageVerdicts] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[ImageVerdicts]] = {}
        self.hits = 0
        self.misses = 0
        self.offline_answers = 0

    def _fresh(self, entry: ImageVerdicts) -> bool:
        ttl = self.config.verdict_ttl if entry.verdicts else self.config.unregistered_ttl
        return self.clock() - entry.fetched < ttl

    async def get(self, digest: str, *, fresh: bool = False) -> ImageVerdicts:
        entry = self._cache.get(digest)
        if entry is not None and not fresh and self._fresh(entry):
            self.hits += 1
            return entry
        self.misses += 1
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ImageVerdicts] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            result = await self._fetch(digest, entry)
            future.set_result(result)
            return result
        except BaseException as err:
            future.set_exception(err)
            future.exception()   # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._inflight[digest]

    async def _fetch(self, digest: str, entry: ImageVerdicts | None) -> ImageVerdicts:
        try:
            verdicts = await self.server.verdicts(digest)
        except ServerUnavailable:
            if entry is not None and self.clock() - entry.fetched <= self.config.max_stale:
                self.offline_answers += 1
                return ImageVerdicts(entry.digest, entry.verdicts, entry.fetched, offline=True)
            raise
        result = ImageVerdicts(digest, verdicts, self.clock())
        self._cache[digest] = result
        self._cache.move_to_end(digest)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result


class Reporter:
    def __init__(self, server: Server, *, max_queue: int = 10_000, batch: int = 200,
                 interval: float = 0.5) -> None:
        self.server = server
        self.queue: deque[dict[str, Any]] = deque()
        self.max_queue, self.batch, self.interval = max_queue, batch, interval
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def report(self, review: dict[str, Any]) -> None:
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(review)
        if len(self.queue) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="moray-kube-reporter")

    async def _run(self) -> None:
        delay = self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            delay = self.interval if await self.flush() else min(30.0, delay * 2)

    async def flush(self) -> bool:
        """Send what is queued; False if the server did not take it (kept for later)."""
        while self.queue:
            batch = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
            try:
                await self.server.report(batch)
            except ServerUnavailable as err:
                self.failures += 1
                if err.status in (400, 413, 422):   # never acceptable: retrying cannot help
                    self.dropped += len(batch)
                    log.error("admission decisions refused by the server; dropped",
                              extra={"count": len(batch), "error": str(err)[:300]})
                    continue
                room = self.max_queue - len(self.queue)   # new ones came in meanwhile
                self.dropped += max(0, len(batch) - room)
                self.queue.extendleft(reversed(batch[-room:] if room > 0 else []))
                log.warning("cannot report admission decisions; kept for later",
                            extra={"queued": len(self.queue), "error": str(err)[:300]})
                return False
            self.sent += len(batch)
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        if self.queue:
            log.warning("admission decisions not reported at exit",
                        extra={"lost": len(self.queue)})
