from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.source import ArchiveSource, OCILayoutSource, open_source
from moray.controlplane.scanner.errors import DigestMismatchError, ImageFormatError
from tests.fixtures.images.builder import Image, sha

DPKG = b"""Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1

"""


def _image() -> Image:
    return Image([
        {"etc/os-release": b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n',
         "var/lib/dpkg/status": DPKG},
        {"app/hello.txt": b"hi"},
    ])


@pytest.mark.parametrize("kind", ["oci-layout", "oci-archive", "docker-archive"])
def test_every_source_kind_gives_the_same_packages(tmp_path: Path, kind: str) -> None:
    img = _image()
    target = tmp_path / "img"
    if kind == "oci-layout":
        target.mkdir()
        img.write_oci_layout(target)
    elif kind == "oci-archive":
        img.write_oci_archive(target)
    else:
        img.write_docker_archive(target)
    result = scan_image(open_source(target), ScanOptions())
    assert [(p.name, p.version, p.source_name) for p in result.packages] == [
        ("zlib1g", "1:1.2.13.dfsg-1", "zlib")
    ]
    assert result.os is not None and result.os.codename == "bookworm"
    assert len(result.layers) == 2
    assert result.packages[0].layer == result.layers[0]


def test_docker_archive_tags_and_digest_are_stable(tmp_path: Path) -> None:
    img = _image()
    img.write_docker_archive(tmp_path / "a.tar")
    img.write_docker_archive(tmp_path / "b.tar")
    a = ArchiveSource(tmp_path / "a.tar").resolve()
    b = ArchiveSource(tmp_path / "b.tar").resolve()
    assert a.digest == b.digest
    assert a.repo_tags == ("example.test/app:1.0",)
    assert a.layers[0].digest == sha(img.build()[0][0])


def test_tampered_blob_is_refused(tmp_path: Path) -> None:
    img = _image()
    img.write_oci_layout(tmp_path)
    blob = tmp_path / "blobs/sha256" / sha(img.build()[1][1])[7:]
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises((DigestMismatchError, ImageFormatError)):
        scan_image(OCILayoutSource(tmp_path), ScanOptions())


def test_traversal_digest_in_index_is_refused(tmp_path: Path) -> None:
    _image().write_oci_layout(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageFormatError, match="malformed digest"):
        OCILayoutSource(tmp_path).resolve()


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"not a tar at all")
    with pytest.raises(ImageFormatError):
        open_source(tmp_path / "x.tar")
    with pytest.raises(ImageFormatError, match="not an OCI layout"):
        OCILayoutSource(tmp_path).resolve()


def test_docker_archive_member_traversal_is_refused(tmp_path: Path) -> None:
    img = _image()
    img.write_docker_archive(tmp_path / "ok.tar")
    with tarfile.open(tmp_path / "ok.tar") as src, tarfile.open(tmp_path / "evil.tar", "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "manifest.json":
                doc = json.loads(data)
                doc[0]["Layers"][0] = "../../../../etc/passwd"
                data = json.dumps(doc).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(ImageFormatError, match="escapes"):
        ArchiveSource(tmp_path / "evil.tar").resolve()


def test_docker_archive_with_anonymous_gzip_layers(tmp_path: Path) -> None:
    """containerd / crane write docker-save archives whose layers are compressed and named
    anything; the diff_id is checked against the uncompressed tar."""
    img = Image([{"etc/os-release": b"ID=alpine\nVERSION_ID=3.18.4\n"},
                 {"usr/lib/python3/site-packages/a-1.dist-info/METADATA":
                  b"Name: a\nVersion: 1\n"}])
    tars, _, config, _ = img.build()

    def write(path: Path, layers: list[bytes]) -> None:
        files = {"cfg.json": config, "manifest.json": json.dumps([{
            "Config": "cfg.json", "RepoTags": ["x:1"],
            "Layers": [f"blob-{i}" for i in range(len(layers))]}]).encode()}
        files.update({f"blob-{i}": data for i, data in enumerate(layers)})
        with tarfile.open(path, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    write(tmp_path / "a.tar", [gzip.compress(t) for t in tars])
    result = scan_image(ArchiveSource(tmp_path / "a.tar"), ScanOptions())
    assert [p.name for p in result.packages] == ["a"] and result.os is not None
    assert result.layers == ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    bad = bytearray(tars[1])
    bad[600] ^= 1  # a changed byte of the uncompressed layer: its diff_id no longer holds
    write(tmp_path / "b.tar", [gzip.compress(tars[0]), gzip.compress(bytes(bad))])
    with pytest.raises(DigestMismatchError):
        scan_image(ArchiveSource(tmp_path / "b.tar"), ScanOptions())
