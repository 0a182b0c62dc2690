"""The scan's pluggable parts, as Protocols: the secret and malware scanners a file is
handed to, the per-layer result cache, and the vulnerability matcher. ``scan.ScanOptions``
holds one of each (or None); the implementations live in ``secrets``, ``malware``,
``cache`` and ``controlplane.vulndb.matcher`` (or ``service.remote``), and tests swap in
fakes. Depends on the records (``model``) only, so any engine module can name them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from moray.controlplane.scanner.engine.model import (
    LayerResult,
    MalwareFinding,
    OSRelease,
    Package,
    SecretFinding,
    VulnFinding,
)


class SecretScanner(Protocol):
    max_bytes: int

    def wants(self, path: str) -> bool: ...

    def scan_file(self, path: str, data: bytes, layer: str) -> list[SecretFinding]: ...

    def scan_texts(self, files: Sequence[tuple[str, bytes]], layer: str
                   ) -> list[SecretFinding]: ...


class MalwareScanner(Protocol):
    max_bytes: int
    window: int  # files larger than this go to scan_windows
    overlap: int  # bytes each window starts before its new piece

    def scan_windows(self, path: str, size: int, windows: Iterable[tuple[bytes, int]],
                     layer: str, again: Callable[[], Iterable[bytes]] | None = None
                     ) -> list[MalwareFinding]: ...

    def wants(self, path: str, mode: int, peek: Callable[[int], bytes]) -> bool: ...

    def scan_file(self, path: str, data: bytes, layer: str) -> list[MalwareFinding]: ...


class LayerCache(Protocol):
    def get_layer(self, digest: str, version: str) -> LayerResult | None: ...

    def put_layer(self, result: LayerResult, version: str) -> None: ...


class VulnMatcher(Protocol):
    def match(self, packages: Sequence[Package], os: OSRelease | None) -> list[VulnFinding]: ...
