"""moray-server's scan scheduler: what to scan, and when, without a person running it.

One thread in the server runs ``Scheduler.tick`` every ``poll_seconds`` (and at once when
woken: a registry or image registered, advisories imported through the API). Each tick:

1. every registered registry whose ``next_run`` has come is listed (catalog and tags API,
   or its repository filter) and each image queued with the registry's policy, plain-HTTP
   flag and credentials reference; ``next_run`` moves on by its interval first, through
   ``ScanStore.claim_due``, so a second server replica on the same database skips it;
2. every registered image that is due is queued the same way;
3. images whose stored verdict predates the current vulnerability data are queued again
   (``ScanStore.enqueue_stale``: each once per data generation, whoever imported it:
   ``moray vulndb import`` on the server's database, or ``POST /api/v1/vulndb/import``).

Queueing never doubles a job that is queued or leased (``ScanStore.enqueue_scan``). The
workers (``moray-scanner-worker``) take the jobs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from sqlalchemy.exc import SQLAlchemyError

from moray.controlplane.scanner.engine.policy import ScanPolicyError, policy_from_dict
from moray.controlplane.scanner.engine.registry import is_loopback, list_images, parse_reference
from moray.controlplane.scanner.errors import ScanError
from moray.controlplane.scanner.service import credentials
from moray.controlplane.store.scanstore import RegisteredImage, RegisteredRegistry, ScanStore

log = logging.getLogger(__name__)

_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$")


class Lister(Protocol):
    def __call__(self, registry: str, *, insecure: bool = False, username: str | None = None,
                 password: str | None = None,
                 repositories: list[str] | None = None) -> list[str]: ...


def check_registry(registry: str, insecure: bool) -> str:
    """``host[:port]``, refused with ``ScanError`` when malformed or when plain HTTP is asked
    for a registry that is not on loopback."""
    if not _REGISTRY.match(registry):
        raise ScanError("registry must be host[:port]", source=registry)
    if insecure and not is_loopback(registry):
        raise ScanError("plain HTTP is allowed only for a loopback registry", source=registry)
    return registry


def already_registered(store: Any, registry: str | None = None,
                       repositories: list[str] | None = None,
                       image: str | None = None, tenant: str | None = None) -> int | None:
    """The id of a registration of the same registry and repositories (or the same
    image) by ``tenant`` (None: by anyone), so adding it again is refused rather than
    scanned twice on every interval. A check before the insert: two adds racing each
    other can still both land."""
    if image is not None:
        return next((i.id for i in store.images(tenant) if i.image == image), None)
    wanted = sorted(set(repositories or []))
    return next((r.id for r in store.registries(tenant)
                 if r.registry == registry and sorted(r.repositories) == wanted), None)


def check_image(image: str, insecure: bool) -> str:
    ref = parse_reference(image)
    check_registry(ref.registry, insecure)
    return image


def check_policy(text: str) -> str:
    """The policy document as given, if it is a valid ImageAssurancePolicy (or empty)."""
    if not text:
        return text
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ScanPolicyError(f"policy is not YAML: {err}") from err
    if not isinstance(doc, dict) or doc.get("kind") != "ImageAssurancePolicy":
        raise ScanPolicyError("not an ImageAssurancePolicy document")
    policy_from_dict(doc, "policy")
    return text


@dataclass
class TickReport:
    registries: int = 0
    images: int = 0
    queued: int = 0
    rescans: int = 0
    errors: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, store: ScanStore, *, lister: Lister = list_images,
                 resolve: Callable[[str], tuple[str | None, str | None]] = credentials.resolve,
                 poll_seconds: float = 5.0) -> None:
        self.store = store
        self.lister = lister
        self.resolve = resolve
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # counters for /metrics (closed label sets)
        self.queued = {"registry": 0, "image": 0, "rescan": 0}
        self.errors = {"listing": 0, "tick": 0}

    # -- one pass ------------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        for reg in self.store.due_registries():
            if self.store.claim_due("scan_registry", reg.id, reg.next_run, reg.interval_seconds):
                self._list_registry(reg, report)
        for img in self.store.due_images():
            if self.store.claim_due("scan_image", img.id, img.next_run, img.interval_seconds):
                self._queue_image(img, report)
        report.rescans = self.store.enqueue_stale()
        self.queued["rescan"] += report.rescans
        if report.rescans:
            log.info("queued rescans after new vulnerability data",
                     extra={"images": report.rescans, "generation": self.store.generation()})
        return report

    def _list_registry(self, reg: RegisteredRegistry, report: TickReport) -> None:
        report.registries += 1
        try:
            username, password = self.resolve(reg.credentials)
            images = self.lister(reg.registry, insecure=reg.insecure, username=username,
                                 password=password, repositories=reg.repositories or None)
        except (ScanError, OSError) as err:
            log.warning("cannot list a registered registry", extra={
                "registry": reg.registry, "id": reg.id, "error": str(err)})
            report.errors.append(f"{reg.registry}: {err}")
            self.errors["listing"] += 1
            self.store.registry_listed(reg.id, 0, str(err))
            return
        for image in images:
            self.store.enqueue_scan(image, reg.policy, insecure=reg.insecure,
                                    credentials=reg.credentials, tenant=reg.tenant)
        report.queued += len(images)
        self.queued["registry"] += len(images)
        self.store.registry_listed(reg.id, len(images))
        log.info("registry listed", extra={"registry": reg.registry, "images": len(images)})

    def _queue_image(self, img: RegisteredImage, report: TickReport) -> None:
        report.images += 1
        self.store.enqueue_scan(img.image, img.policy, insecure=img.insecure,
                                credentials=img.credentials, tenant=img.tenant)
        report.queued += 1
        self.queued["image"] += 1

    def stats(self) -> dict[str, dict[str, int]]:
        return {"queued": dict(self.queued), "errors": dict(self.errors)}

    # -- the server's thread -------------------------------------------------------------

    def wake(self) -> None:
        """Run a tick now (something was registered or imported)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except SQLAlchemyError as err:  # database away for a moment: count, log, go on
                self.errors["tick"] += 1
                log.warning("scan scheduler tick failed", extra={"error": str(err)})
            self._wake.wait(self.poll_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scan-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
