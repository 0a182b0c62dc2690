"""moray's OCI images as `make images` builds them (packaging/images/build), for tests.

CI passes their directory as $MORAY_IMAGES (like $MORAY_DIST); without it, dist/images of
the checkout. A test that needs them skips when they are not built (a failure in CI, where
MORAY_REQUIRE_INTEGRATION=1)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(os.environ.get("MORAY_IMAGES") or ROOT / "dist" / "images")


def archive(name: str) -> Path:
    """``moray-<name>.tar`` (a ``docker load`` archive), or skip: not built."""
    path = IMAGES / f"moray-{name}.tar"
    if not path.is_file():
        pytest.skip(f"{path} not built (make images; CI sets MORAY_IMAGES)")
    return path


def reference(path: Path) -> str:
    """The name:tag the archive loads as (its manifest's one RepoTag)."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    tags: list[str] = manifest[0]["RepoTags"]
    assert len(tags) == 1, tags
    return tags[0]
