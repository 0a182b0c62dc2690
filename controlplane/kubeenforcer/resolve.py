"""Image reference -> the digest its verdict is stored under.

Verdicts are stored per image manifest digest (what a scan of the image records). A pod
names an image by tag (``registry/app:1.0``), by digest (``registry/app@sha256:...``), or
by both; a digest may name a multi-platform index. ``Resolver.resolve`` asks the registry
(OCI distribution API, the scanner's ``RegistrySource``: the same auth, the same
loopback-only plain HTTP) for the manifest, and an index's manifest for the configured
platform, reading no config and no layer.

Cache (bounded, ``max_entries`` each): a digest reference's answer never changes and is
kept until evicted; a tag's answer is kept ``tag_ttl`` seconds, since a tag can be moved.
Known limit: the kubelet pulls the tag later than the webhook resolved it; a tag moved in
between runs an image the webhook did not judge (pin digests to close this).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from moray.controlplane.kubeenforcer.config import EnforcerConfig
from moray.controlplane.scanner.engine.registry import (
    Reference,
    RegistrySource,
    parse_reference,
)
from moray.controlplane.scanner.errors import ScanError
from moray.controlplane.scanner.service import credentials
from moray.errors import ControlPlaneError

log = logging.getLogger(__name__)


class ResolveError(ControlPlaneError):
    """The reference is malformed, or the registry could not say what it names."""


@dataclass(frozen=True, slots=True)
class Resolved:
    reference: Reference   # as parsed (registry, repository, tag, digest)
    digest: str            # the platform's image manifest digest

    @property
    def pinned(self) -> str:
        """``registry/repository@digest``: what a scan of exactly this image is asked for."""
        return f"{self.reference.registry}/{self.reference.repository}@{self.digest}"


class Resolver:
    def __init__(self, config: EnforcerConfig, *, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000) -> None:
        self.config = config
        self.clock = clock
        self.max_entries = max_entries
        self._tags: OrderedDict[str, tuple[float, Resolved]] = OrderedDict()
        self._digests: OrderedDict[str, Resolved] = OrderedDict()
        self.lookups = 0   # registry round trips (for /metrics)

    def cached(self, image: str) -> Resolved | None:
        found = self._digests.get(image)
        if found is not None:
            self._digests.move_to_end(image)
            return found
        entry = self._tags.get(image)
        if entry is not None and self.clock() - entry[0] < self.config.tag_ttl:
            return entry[1]
        return None

    def resolve(self, image: str) -> Resolved:
        """The digest ``image`` names now (blocking: registry I/O; run it off the loop)."""
        found = self.cached(image)
        if found is not None:
            return found
        try:
            ref = parse_reference(image)
        except ScanError as err:
            raise ResolveError(f"{image}: not an image reference: {err}") from err
        settings = self.config.registry(ref.registry)
        try:
            username, password = credentials.resolve(settings.credentials)
            source = RegistrySource(ref, insecure=settings.insecure, username=username,
                                    password=password, platform=self.config.platform,
                                    timeout=self.config.registry_timeout)
            self.lookups += 1
            digest = source.manifest_digest()
        except (ScanError, OSError) as err:
            raise ResolveError(f"{image}: cannot resolve to a digest: {err}") from err
        resolved = Resolved(ref, digest)
        if ref.digest:
            self._digests[image] = resolved
            if len(self._digests) > self.max_entries:
                self._digests.popitem(last=False)
        else:
            self._tags[image] = (self.clock(), resolved)
            self._tags.move_to_end(image)
            if len(self._tags) > self.max_entries:
                self._tags.popitem(last=False)
        log.debug("image resolved", extra={"image": image, "digest": digest})
        return resolved
