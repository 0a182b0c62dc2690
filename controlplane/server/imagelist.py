"""The image-verdict list the server pushes to agents (moray.api.imageverdicts).

State owned here: the last lists built (each tenant's document at one verdict version,
and its signed record), so a re-read with nothing new neither rebuilds nor re-signs.

A tenant's list holds the verdicts of its images only (``image_tenant``: the digests its
scan jobs and admission reviews brought in; the default tenant also gets the images no
tenant brought in, verdicts recorded by hand): verdicts are shared by digest, but a
tenant's agents never learn which images another tenant has.

``add(policies)`` is called by the change watcher (watch.py) on each re-read of the policy
set: every tenant with a live policy that says ``spec.images.block`` gets one more
record, ``_image-verdicts``, in its policy set; the policy streams and the gateways then
push it like a policy (same signature key, same acks, same version floors on the agent).
Its version is one more than the store's count of verdict writes (``scanstore_meta``
``verdicts_serial``, bumped in each verdict's transaction, so every server process on the
database gives one content one version). A tenant without such a policy gets no list
(its agents holding one get a removal; the agent accepts the same version again after a
removal of the list, agent/controlplane/policies.py).

Rate: a list is rebuilt at most once per ``min_interval`` (2 s): a registry scan storing
a verdict per image would otherwise push a new list to every agent per image. A newer
verdict within the interval leaves the previous list in place and sets ``retry_in``; the
watcher re-reads then (watch.py), so the last verdict of a burst is pushed at most
``min_interval`` late.

What moves it: a verdict stored (a scan, a rescan after new advisories, a verdict posted
by ``moray-scan --record-verdict``): the store calls the watcher's ``poke`` (this
process) or sends a ``verdicts`` notification (PostgreSQL: the other processes); the
watcher's safety-net poll compares ``version()`` too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from moray.api.imageverdicts import (
    VERDICTS_KIND,
    VERDICTS_NAME,
    ListedImage,
    StoredVerdict,
    list_json,
)
from moray.api.proto import moray_pb2
from moray.api.tenants import DEFAULT_TENANT
from moray.controlplane.server.pki import PolicyKey
from moray.controlplane.store.cpstore import PolicyRecord
from moray.controlplane.store.scanstore import ScanStore

log = logging.getLogger(__name__)


def uses_images(document: Mapping[str, Any]) -> bool:
    spec = document.get("spec") or {}
    images = spec.get("images") if isinstance(spec, Mapping) else None
    return isinstance(images, Mapping) and bool(images.get("block"))


class ImageListSource:
    def __init__(self, scans: ScanStore, key: PolicyKey, *, min_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scans, self.key = scans, key
        self.min_interval, self.clock = min_interval, clock
        self.retry_in = 0.0      # > 0: a newer list waits; read again after this long
        # tenant -> (version, json, sha256), all built at verdict version _built_version
        self._built: dict[str, tuple[int, str, str]] = {}
        self._built_version: int | None = None
        self._built_at = 0.0
        self._signed: dict[tuple[str, int], PolicyRecord] = {}

    def version(self) -> tuple[int, int]:
        """What the watcher's safety-net poll compares (blocking: a query)."""
        return self.scans.verdicts_version()

    def _documents(self, wanted: list[str]) -> dict[str, tuple[int, str, str]]:
        version, _count = self.scans.verdicts_version()
        self.retry_in = 0.0
        have = all(t in self._built for t in wanted)
        if self._built_version is not None and self._built_version != version and have:
            wait = self.min_interval - (self.clock() - self._built_at)
            if wait > 0:
                self.retry_in = wait
                return self._built
        if self._built_version != version or not have:
            self._built_at = self.clock()
            images: dict[str, list[Any]] = {}
            for v in self.scans.all_verdicts():
                entry = images.setdefault(v.image_digest, [v.config_digest, v.image, []])
                entry[0] = entry[0] or v.config_digest
                entry[2].append(StoredVerdict(v.policy, v.passed, tuple(v.reasons), False))
            owned = self.scans.image_tenants()
            nobodys = set(images).difference(*owned.values())
            built = {}
            for tenant in wanted:
                mine = images.keys() & (owned.get(tenant, set())
                                        | (nobodys if tenant == DEFAULT_TENANT else set()))
                # the tenant's digests only (a tenant with few images costs little, however
                # many the others have), in digest order (one content, one text)
                text = list_json(version + 1, [
                    ListedImage(d, images[d][0], images[d][1], tuple(images[d][2]))
                    for d in sorted(mine)])
                built[tenant] = (version, text, hashlib.sha256(text.encode()).hexdigest())
                log.info("image-verdict list built", extra={
                    "version": version, "tenant": tenant, "images": len(mine),
                    "bytes": len(text)})
            self._built, self._built_version = built, version
        return self._built

    def add(self, policies: dict[str, dict[str, PolicyRecord]]) -> None:
        """Put the list into each tenant's set that needs it (blocking: queries)."""
        wanted = [t for t, ps in policies.items()
                  if any(not r.removed and uses_images(r.document) for r in ps.values())]
        if not wanted:
            self.retry_in = 0.0
            return
        documents = self._documents(wanted)
        keep: dict[tuple[str, int], PolicyRecord] = {}
        for tenant in wanted:
            base, text, sha = documents[tenant]
            version = base + 1      # 1: no verdict stored yet (an empty list); = document's
            record = self._signed.get((tenant, version))
            if record is None or record.sha256 != sha:
                record = self._sign(tenant, version, text, sha)
            keep[(tenant, version)] = record
            # first: a stream sends the list before the policies that use it
            policies[tenant] = {VERDICTS_NAME: record, **policies[tenant]}
        self._signed = keep

    def _sign(self, tenant: str, version: int, text: str, sha: str) -> PolicyRecord:
        now = time.time()
        payload = moray_pb2.PolicyPayload(
            name=VERDICTS_NAME, tenant=tenant, version=version, document_json=text,
            issued_at_ms=int(now * 1000), sha256=sha, kind=VERDICTS_KIND).SerializeToString()
        return PolicyRecord(
            tenant=tenant, name=VERDICTS_NAME, version=version, action="apply",
            removed=False, document={}, sha256=sha, source="image verdicts",
            author="moray-server", comment="", created_at=now, payload=payload,
            signature=self.key.sign(payload), key_id=self.key.key_id)
