"""The scanner's one error hierarchy.

Every error carries the image path or reference, and where it applies the layer digest
and the path inside the layer, so a message names exactly what was refused.
"""

from __future__ import annotations


class ScanError(Exception):
    """Base class of every error the scanner raises on purpose."""

    def __init__(self, message: str, *, source: str = "", layer: str = "", path: str = "") -> None:
        self.message = message
        self.source = source
        self.layer = layer
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [
            f"{name}={value}"
            for name, value in (("source", self.source), ("layer", self.layer), ("path", self.path))
            if value
        ]
        return f"{self.message} ({', '.join(where)})" if where else self.message


class ImageFormatError(ScanError):
    """The input is not a readable image (missing index, bad manifest, unknown format)."""


class DigestMismatchError(ImageFormatError):
    """A blob's content does not hash to the digest that names it."""


class UnsafeEntryError(ScanError):
    """A layer entry that must not be used: traversal, escaping link, device file."""


class LimitExceededError(ScanError):
    """A resource limit was hit: decompression bomb, too many entries, oversized blob."""


class RegistryError(ScanError):
    """The registry refused or failed a request, or refused to be used insecurely."""


class VulnDBError(ScanError):
    """A vulnerability data file could not be imported."""


class AccessDenied(ScanError):
    """A server refused the token (HTTP 401/403): retrying cannot help."""
