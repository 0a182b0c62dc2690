"""moray-scan on archives written by a real ``docker save`` (Docker 25+ writes OCI-layout
archives with a docker manifest.json beside index.json). Needs root and dockerd."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moray.controlplane.scanner.engine.malware import MalwareScanner
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.secrets import SecretScanner
from moray.controlplane.scanner.engine.source import ArchiveSource, open_source
from tests.fixtures.images import scenarios
from tests.helpers.containers import Dockerd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("dockerd") is None, reason="dockerd not installed"),
]

TAG = "registry.example.test/team/app:1.0"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("docker")
    built = root / "built.tar"
    scenarios.debian_app().write_docker_archive(built)
    out = root / "saved.tar"
    with Dockerd() as docker:
        docker.docker("load", "-i", str(built))
        docker.docker("save", "-o", str(out), TAG, timeout=120)
    yield out


def test_docker_save_archive_scans_like_the_original(saved: Path, tmp_path: Path) -> None:
    options = ScanOptions(secrets=SecretScanner(), malware=MalwareScanner())
    real = scan_image(open_source(saved), options)
    original = tmp_path / "orig"
    original.mkdir()
    scenarios.debian_app().write_oci_layout(original)
    ours = scan_image(open_source(original), options)
    assert real.config_digest == ours.config_digest
    assert TAG in real.repo_tags or not real.repo_tags
    assert sorted(p.purl for p in real.packages) == sorted(p.purl for p in ours.packages)
    assert {(s.rule, s.deleted_later) for s in real.secrets} == {
        (s.rule, s.deleted_later) for s in ours.secrets}
    assert {m.rule for m in real.malware} == {"yara:EICAR_Test_File", "sha256:EICAR-Test-File"}
    assert ArchiveSource(saved).resolve().layers  # readable directly as an archive
