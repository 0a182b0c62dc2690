"""The scanner's error kinds, under ``moray.errors.ScanError``.

Every error carries the image path or reference, and where it applies the layer digest
and the path inside the layer, so a message names exactly what was refused.
"""

from __future__ import annotations

from moray.errors import ScanError  # the base, one of moray's error kinds

__all__ = [
    "AccessDenied",
    "DigestMismatchError",
    "ImageFormatError",
    "LimitExceededError",
    "RegistryError",
    "ScanError",
    "UnsafeEntryError",
    "VulnDBError",
    "VulnDataError",
]


class ImageFormatError(ScanError):
    """The input is not a readable image (missing index, bad manifest, unknown format)."""


class DigestMismatchError(ImageFormatError):
    """A blob's content does not hash to the digest that names it."""


class UnsafeEntryError(ScanError):
    """A layer entry that must not be used: traversal, escaping link, device file.
    ``rule`` names the kind (the layer-entry finding's rule id)."""

    rule = "unsafe-entry"


class LimitExceededError(ScanError):
    """A resource limit was hit: decompression bomb, too many entries, oversized blob."""


class RegistryError(ScanError):
    """The registry refused or failed a request, or refused to be used insecurely."""


class VulnDBError(ScanError):
    """A vulnerability data file could not be imported."""


class VulnDataError(ScanError):
    """Vulnerabilities were asked for but the store is missing, empty or too old."""


class AccessDenied(ScanError):
    """A server refused the token (HTTP 401/403): retrying cannot help."""
