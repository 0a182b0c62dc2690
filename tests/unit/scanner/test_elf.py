"""The binary analyzers' ELF reading: headers and sections only, odd files handled."""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.analyzers.elf import bytes_reader, parse_header
from moray.controlplane.scanner.engine.analyzers.gobinary import GoBinaryAnalyzer, read_buildinfo
from moray.controlplane.scanner.engine.analyzers.rustbinary import RustAuditableAnalyzer
from moray.controlplane.scanner.engine.layers import Entry
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.source import ArchiveSource, OCILayoutSource
from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import File, Image, Spec

DEPS = {"packages": [
    {"name": "app", "version": "0.1.0", "source": "local", "root": True},
    {"name": "smallvec", "version": "1.6.0", "source": "crates.io"},
]}
MODINFO = ("path\texample.com/app\nmod\texample.com/app\t(devel)\t\n"
           "dep\tgolang.org/x/net\tv0.7.0\th1:abc=\n")


class Reads:
    """A ``ReadAt`` over bytes that records every read and checks it stays in the file."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []
        self._inner = bytes_reader(data)

    def __call__(self, offset: int, n: int) -> bytes:
        assert offset >= 0 and offset + n <= len(self.data), (offset, n, len(self.data))
        self.reads.append((offset, n))
        return self._inner(offset, n)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.reads)


def _both(data: bytes) -> tuple[list[tuple[str, str]], Reads, list[tuple[str, str]], Reads]:
    go, rust = Reads(data), Reads(data)
    go_pkgs = GoBinaryAnalyzer().analyze_file("bin/x", go, len(data), "l")
    rust_pkgs = RustAuditableAnalyzer().analyze_file("bin/x", rust, len(data), "l")
    return ([(p.name, p.version) for p in go_pkgs], go,
            [(p.name, p.version) for p in rust_pkgs], rust)


def _elf_without_sections(payload: bytes) -> bytes:
    """A valid ELF64 header with no section header table (e_shoff 0, e_shnum 0)."""
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    return header + b"\0" * 960 + payload + b"\0" * 64


def test_go_binary_without_section_headers_falls_back_to_the_whole_file() -> None:
    blob = rootfs.go_buildinfo_blob("go1.21.0", MODINFO)
    odd = _elf_without_sections(blob[4:])
    go_pkgs, go, rust_pkgs, rust = _both(odd)
    assert go_pkgs == [("stdlib", "1.21.0"), ("golang.org/x/net", "v0.7.0")]
    assert go.total == 64 + len(odd)  # header, then the whole file: the old scan
    assert rust_pkgs == [] and rust.total == 64


@pytest.mark.parametrize("data", [b"\x7fELF", b"\x7fELF\x02\x01\x01", b"\x7fELF\x02" + bytes(40),
                                  b"\x7fELF\x01\x01" + bytes(30)])
def test_truncated_elf_header(data: bytes) -> None:
    assert parse_header(data) is None
    go_pkgs, _, rust_pkgs, _ = _both(data)
    assert go_pkgs == [] and rust_pkgs == []
    assert GoBinaryAnalyzer().analyze("x", data, "") == []
    assert RustAuditableAnalyzer().analyze("x", data, "") == []


def test_section_offsets_past_the_end_are_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    good = rootfs.elf_with_section(".dep-v0", zlib.compress(json.dumps(DEPS).encode()))
    shoff, = struct.unpack_from("<Q", good, 0x28)
    section = bytearray(good)  # .dep-v0 (entry 1) claims data far past the end
    struct.pack_into("<Q", section, shoff + 64 + 24, 1 << 40)
    table = bytearray(good)  # the section header table itself past the end
    struct.pack_into("<Q", table, 0x28, len(good) - 64)
    names = bytearray(good)  # .shstrtab past the end: no names, no sections
    struct.pack_into("<Q", names, shoff + 128 + 24, 1 << 40)
    caplog.set_level("DEBUG")
    for bad in (section, table, names):
        go_pkgs, _, rust_pkgs, _ = _both(bytes(bad))  # Reads asserts every read is inside
        assert go_pkgs == [] and rust_pkgs == []
    assert "ELF section past the end of the file" in caplog.text
    assert _both(good)[2] == [("smallvec", "1.6.0")]


def _extension_module() -> Path:
    pattern = os.path.join(os.path.dirname(os.__file__), "lib-dynload", "*.so")
    found = sorted(glob.glob(pattern)) or sorted(
        glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "*", "*.so")))
    if not found:
        pytest.skip("no Python extension module found")
    return Path(max(found, key=os.path.getsize))


def test_python_extension_module_costs_its_headers_only() -> None:
    data = _extension_module().read_bytes()
    header = parse_header(data[:64])
    assert header is not None and header.shnum > 0
    go_pkgs, go, rust_pkgs, rust = _both(data)
    assert go_pkgs == [] and rust_pkgs == []
    for reads in (go, rust):
        assert len(reads.reads) == 3  # ELF header, section header table, section names
        assert reads.total < 64 + header.shnum * header.shentsize + 4096 < len(data)


@pytest.mark.skipif(shutil.which("gofmt") is None, reason="Debian golang-go not installed")
def test_real_go_binary_read_by_its_sections() -> None:
    data = Path(os.path.realpath(shutil.which("gofmt") or "")).read_bytes()
    go_pkgs, go, _, _ = _both(data)
    info = read_buildinfo(data)
    assert info is not None and go_pkgs[0] == ("stdlib", info[0].removeprefix("go"))
    assert go.total < 64 * 1024 < len(data)


def _image(tmp_path: Path) -> tuple[Image, list[tuple[str, str]]]:
    so = _extension_module().read_bytes()
    files: dict[str, Spec] = {
        "usr/bin/rusty": File(rootfs.elf_with_section(
            ".dep-v0", zlib.compress(json.dumps(DEPS).encode())), 0o755),
        "usr/bin/go-old": File(rootfs.go_legacy_buildinfo_elf("go1.16.15", MODINFO), 0o755),
        "usr/bin/go-odd": File(rootfs.go_buildinfo_blob("go1.21.0", MODINFO), 0o755),
        "usr/lib/python3/ext.so": File(so, 0o755),
        "usr/bin/script": File(b"#!/bin/sh\n" + b"# x\n" * 400, 0o755),
    }
    expected = [("golang.org/x/net", "v0.7.0"), ("golang.org/x/net", "v0.7.0"),
                ("smallvec", "1.6.0"), ("stdlib", "1.16.15"), ("stdlib", "1.21.0")]
    return Image([files], compress=False), expected


@pytest.mark.parametrize("kind", ["oci", "docker", "oci-gzip"])
def test_binaries_found_the_same_from_every_kind_of_layer(tmp_path: Path, kind: str) -> None:
    img, expected = _image(tmp_path)
    if kind == "docker":
        img.write_docker_archive(tmp_path / "img.tar")
        source: OCILayoutSource | ArchiveSource = ArchiveSource(tmp_path / "img.tar")
    else:
        img.compress = kind == "oci-gzip"
        img.write_oci_layout(tmp_path)
        source = OCILayoutSource(tmp_path)
    result = scan_image(source, ScanOptions())
    assert sorted((p.name, p.version) for p in result.packages) == expected
    assert result.warnings == []


def test_uncompressed_layers_read_binaries_in_place(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    img, expected = _image(tmp_path)
    img.write_oci_layout(tmp_path)
    read_whole: list[str] = []
    real_read = Entry.read

    def read(self: Entry, limit: int) -> bytes | None:
        read_whole.append(self.path)
        return real_read(self, limit)

    def no_bytes(*_: object) -> list[object]:
        raise AssertionError("binary read whole")

    monkeypatch.setattr(Entry, "read", read)
    monkeypatch.setattr(GoBinaryAnalyzer, "analyze", no_bytes)
    monkeypatch.setattr(RustAuditableAnalyzer, "analyze", no_bytes)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions())
    assert sorted((p.name, p.version) for p in result.packages) == expected
    assert read_whole == []  # not even the extension module or the shell script
