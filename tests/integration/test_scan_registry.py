"""moray-scan against Debian's docker-registry on 127.0.0.1 (a real OCI distribution server).

Needs the Debian package ``docker-registry`` (/usr/bin/docker-registry); no root.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moray.controlplane.cli import main as moray
from moray.controlplane.scanner.cli import main
from moray.controlplane.scanner.engine.cache import StoreLayerCache
from moray.controlplane.scanner.engine.registry import RegistrySource, list_images, parse_reference
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.store.scanstore import ScanStore
from moray.controlplane.vulndb.importer import import_path
from tests.fixtures.images import scenarios
from tests.fixtures.images.registry import push_image, push_index
from tests.helpers.advisories import ADVISORIES
from tests.helpers.registry import REGISTRY_BIN, docker_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REGISTRY_BIN is None, reason="Debian package docker-registry missing"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with docker_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture(scope="module")
def pushed(registry: str) -> dict[str, str]:
    base = f"http://{registry}"
    app = scenarios.debian_app()
    digest = push_image(base, "team/app", "1.0", app)
    index = push_index(base, "team/multi", "1.0", {("linux", "arm64"): scenarios.alpine_app(),
                                                   ("linux", "amd64"): app})
    return {"app": digest, "index": index}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "moray.db"
    store = ScanStore(path)
    if ADVISORIES.is_dir():
        import_path(ADVISORIES, store)
    store.close()
    return path


def test_scan_by_tag_and_digest(registry: str, pushed: dict[str, str], db: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{registry}/team/app:1.0"
    code = main(["-q", ref, "--insecure-registry", "--db", str(db), "--format", "json",
                 "--fail-on", "critical"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1  # EICAR, AWS key
    assert doc["digest"] == pushed["app"]
    names = {p["name"] for p in doc["packages"]}
    assert {"libc6", "requests", "lodash", "golang.org/x/net"} <= names
    if ADVISORIES.is_dir():
        assert "CVE-2023-4911" in {v["id"] for v in doc["vulnerabilities"]}
    assert any(s["deleted_later"] for s in doc["secrets"])
    code = main(["-q", f"{registry}/team/app@{pushed['app']}", "--insecure-registry",
                 "--db", str(db), "--format", "json", "--no-malware", "--no-secrets"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["digest"] == pushed["app"]


def test_index_picks_linux_amd64(registry: str, pushed: dict[str, str]) -> None:
    src = RegistrySource(parse_reference(f"{registry}/team/multi:1.0"), insecure=True)
    result = scan_image(src, ScanOptions())
    assert result.digest == pushed["app"]
    arm = RegistrySource(parse_reference(f"{registry}/team/multi:1.0"), insecure=True,
                         platform=("linux", "arm64"))
    assert scan_image(arm, ScanOptions()).os.id == "alpine"  # type: ignore[union-attr]


def test_layer_cache_shared_across_images(registry: str, pushed: dict[str, str],
                                          tmp_path: Path) -> None:
    store = ScanStore(tmp_path / "moray.db")
    cache = StoreLayerCache(store)
    for ref in (f"{registry}/team/app:1.0", f"{registry}/team/multi:1.0"):
        scan_image(RegistrySource(parse_reference(ref), insecure=True), ScanOptions(cache=cache))
    assert (cache.misses, cache.hits) == (3, 3)  # same layers: scanned once


def test_registry_listing_queues_every_tag(registry: str, pushed: dict[str, str],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(list_images(registry, insecure=True)) == sorted([
        f"{registry}/team/app:1.0", f"{registry}/team/multi:1.0",
        f"{registry}/team/multi:amd64-only", f"{registry}/team/multi:arm64-only"])
    db = tmp_path / "moray.db"
    assert moray(["--db", str(db), "scan", "enqueue-registry", registry, "--insecure-registry",
                  "--repository", "team/app"]) == 0
    assert "queued 1 images" in capsys.readouterr().out
    # no vulnerability data yet: the job fails rather than record a verdict on nothing
    assert moray(["--db", str(db), "scan", "worker", "--once", "--insecure-registry"]) == 0
    assert "done 0, failed 1" in capsys.readouterr().out
    store = ScanStore(db)
    import_path(ADVISORIES, store)
    store.close()
    assert moray(["--db", str(db), "scan", "enqueue-registry", registry, "--insecure-registry",
                  "--repository", "team/app"]) == 0
    assert moray(["--db", str(db), "scan", "worker", "--once", "--insecure-registry"]) == 0
    assert "done 1, failed 0" in capsys.readouterr().out


def test_https_is_the_default(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-q", f"{registry}/team/app:1.0", "--no-vulns", "--no-cache"])
    assert code == 2
    assert "cannot reach registry" in capsys.readouterr().err
