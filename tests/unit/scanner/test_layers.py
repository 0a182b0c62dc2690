"""Layer streaming: whiteouts, and hostile input refused without writing anywhere."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.cache import FileLayerCache
from moray.controlplane.scanner.engine.layers import EntryKind, Limits, iter_layer, link_escapes
from moray.controlplane.scanner.engine.model import LayerResult, ScanResult
from moray.controlplane.scanner.engine.scan import ScanOptions, _workers, scan_image
from moray.controlplane.scanner.engine.secrets import SecretScanner
from moray.controlplane.scanner.engine.source import ArchiveSource, OCILayoutSource
from moray.controlplane.scanner.errors import (
    DigestMismatchError,
    ImageFormatError,
    LimitExceededError,
)
from tests.fixtures.images import scenarios
from tests.fixtures.images.builder import Device, Dir, File, Hardlink, Image, Symlink, layer_tar

PY_META = b"Metadata-Version: 2.1\nName: requests\nVersion: 2.19.0\n\n"


def _entries(tar: bytes, limits: Limits | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    warnings: list[str] = []
    out = [
        (e.path, str(e.kind))
        for e in iter_layer(io.BytesIO(tar), "sha256:x", limits or Limits(),
                            lambda reason, path: warnings.append(f"{path}: {reason}"))
    ]
    return out, warnings


def test_hostile_entries_are_skipped_with_a_reason(tmp_path: Path) -> None:
    tar = layer_tar([
        ("../../etc/evil", b"x"),
        ("/abs/evil", b"x"),
        ("a/../../b", b"x"),
        ("ok/link", Symlink("../../../../etc/shadow")),
        ("ok/abs-link", Symlink("/etc/shadow")),
        ("ok/hard", Hardlink("../../etc/passwd")),
        ("dev/sda", Device()),
        ("ok/file", b"fine"),
    ])
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        entries, warnings = _entries(tar)
    finally:
        os.chdir(cwd)
    assert entries == [("ok/abs-link", "symlink"), ("ok/file", "file")]
    reasons = "\n".join(warnings)
    assert "../../etc/evil: refused: path traversal" in reasons
    assert "/abs/evil: refused: absolute path" in reasons
    assert "ok/link: refused: symlink escapes the image root" in reasons
    assert "ok/hard: refused: hard link path traversal" in reasons
    assert "dev/sda: refused: device file" in reasons
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_link_escape_rules() -> None:
    assert link_escapes("a/b", "../../x")
    assert not link_escapes("a/b", "../x")
    assert not link_escapes("usr/bin/sh", "/bin/dash")
    assert link_escapes("x", "..")


def test_decompression_bomb_is_refused() -> None:
    bomb = gzip.compress(layer_tar({"zeros": File(b"\0" * (8 << 20))}), compresslevel=9)
    assert len(bomb) < 64 << 10
    with pytest.raises(LimitExceededError, match="decompression bomb"):
        _entries(bomb, Limits(max_ratio=50, ratio_floor=1 << 20))
    with pytest.raises(LimitExceededError, match="inflates past"):
        _entries(bomb, Limits(max_layer_bytes=2 << 20))


def test_entry_count_limit() -> None:
    tar = layer_tar({f"f{i}": b"" for i in range(20)})
    with pytest.raises(LimitExceededError, match="entries"):
        _entries(tar, Limits(max_entries=10))


def test_oversized_file_listed_not_read(tmp_path: Path) -> None:
    meta = "usr/lib/python3/site-packages/requests-2.19.0.dist-info/METADATA"
    Image([{meta: PY_META + b"#" * 5000}]).write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions(limits=Limits(max_file_bytes=1000)))
    assert result.packages == []
    assert any("not analysed" in w.reason and w.path == meta for w in result.warnings)


def test_whiteouts_and_opaque_dirs_apply_in_order(tmp_path: Path) -> None:
    sp = "usr/lib/python3/site-packages/"
    Image([
        {sp + "requests-2.19.0.dist-info/METADATA": PY_META,
         sp + "six-1.0.dist-info/METADATA": b"Name: six\nVersion: 1.0\n",
         "opt/x/y-1.dist-info/METADATA": b"Name: y\nVersion: 1\n"},
        {sp + ".wh.requests-2.19.0.dist-info": b"",
         "opt/x/.wh..wh..opq": b""},
    ]).write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions())
    assert [p.name for p in result.packages] == ["six"]


def test_whiteout_entries_are_reported_as_such() -> None:
    entries, _ = _entries(layer_tar({"a/.wh.b": b"", "c/.wh..wh..opq": b""}))
    assert entries == [("a/b", EntryKind.WHITEOUT), ("c", EntryKind.OPAQUE)]


def test_hostile_image_scans_with_findings(tmp_path: Path) -> None:
    """Each hostile entry is a finding with its rule and severity; the root entry "/"
    (umoci, skopeo) is not one."""
    Image([[("/", Dir()), ("./", Dir()),
            ("../../escape", b"x"), ("/abs/evil", b"x"),
            ("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            ("ok/link", Symlink("../../../../etc/shadow")),
            ("ok/hard", Hardlink("/etc/shadow")),
            ("ok/hard2", Hardlink("etc/shadow")),  # not in this layer
            ("ok/hard3", Hardlink("etc/passwd")),  # fine: an earlier entry
            ("dev/sda", Device()), ("dev/pipe", Device(tarfile.FIFOTYPE))]]
          ).write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions())
    got = {(e.path, e.rule, str(e.severity)) for e in result.unsafe_entries}
    assert got == {
        ("../../escape", "path-traversal", "high"), ("/abs/evil", "absolute-path", "medium"),
        ("ok/link", "symlink-escape", "high"), ("ok/hard", "hardlink-escape", "high"),
        ("ok/hard2", "hardlink-dangling", "medium"), ("dev/sda", "device-file", "high"),
        ("dev/pipe", "fifo", "low")}
    assert result.warnings == []
    assert all(e.layer.startswith("sha256:") for e in result.unsafe_entries)
    assert not (tmp_path.parent / "escape").exists()


def test_zstd_layer(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    meta = "usr/lib/python3/site-packages/requests-2.19.0.dist-info/METADATA"
    blob = zstandard.ZstdCompressor().compress(layer_tar({meta: PY_META}))
    entries, _ = _entries(blob)
    assert entries == [(meta, "file")]


def test_progress_reports_bytes(tmp_path: Path) -> None:
    noise = random.Random(1).randbytes(3 << 20)  # incompressible
    img = Image([{"a": b"x"}, {"big": noise}])
    img.write_oci_layout(tmp_path)
    seen: list[tuple[int, int, str]] = []
    scan_image(OCILayoutSource(tmp_path), ScanOptions(progress=lambda *a: seen.append(a)))
    total = sum(len(b) for b in img.build()[1])
    assert seen[-1] == (total, total, "")
    assert len(seen) >= 3 and all(d <= t == total for d, t, _ in seen)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)


@pytest.mark.parametrize("compress", [False, True])
def test_files_across_buffer_boundaries_read_or_skipped(compress: bool) -> None:
    """Files around the 1 MiB read buffer's size, some read, some skipped (seeks), in a
    plain and a gzip layer: every read file has exactly its content."""
    rng = random.Random(7)
    sizes = [0, 1, 511, 512, (1 << 20) - 700, 1 << 20, (1 << 20) + 1, 3 << 20, 5, 2 << 20]
    files = {f"f/{i}": rng.randbytes(n) for i, n in enumerate(sizes)}
    tar = layer_tar(list(files.items()))
    blob = gzip.compress(tar, compresslevel=1) if compress else tar
    got = {}
    for i, e in enumerate(iter_layer(io.BytesIO(blob), "sha256:x", Limits(), lambda r, p: None)):
        if e.kind is EntryKind.FILE and i % 2 == 0:
            if i % 4 == 0:
                assert e.peek(100) == files[e.path][:100]
            got[e.path] = e.read(Limits().max_file_bytes)
    assert got == {p: d for i, (p, d) in enumerate(files.items()) if i % 2 == 0}


def _comparable(result: ScanResult) -> tuple[object, ...]:
    return (result.packages, sorted(result.secrets, key=str), result.warnings, result.os,
            result.layers)


def test_layers_read_by_worker_processes_give_the_same_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # forked workers are used only from a single-threaded process; earlier tests in a full
    # run may leave daemon threads behind in this one (the suite is one process)
    import moray.controlplane.scanner.engine.scan as scan_mod
    monkeypatch.setattr(scan_mod.threading, "active_count", lambda: 1)
    img = scenarios.debian_app()
    img.write_oci_layout(tmp_path / "oci")
    img.write_docker_archive(tmp_path / "app.tar")
    for src in (OCILayoutSource(tmp_path / "oci"), ArchiveSource(tmp_path / "app.tar")):
        assert getattr(src, "fork_safe", False)
        one = scan_image(src, ScanOptions(secrets=SecretScanner(), workers=1))
        options = ScanOptions(secrets=SecretScanner(), workers=2, parallel_min_layer=1)
        assert _workers(src, src.resolve().layers, options) == 2
        forked = scan_image(src, options)
        assert _comparable(forked) == _comparable(one)
        assert any(s.deleted_later for s in forked.secrets)  # still seen per layer


def test_worker_process_errors_name_the_layer(tmp_path: Path) -> None:
    Image([{"a": b"x" * 100}, {"b": b"y" * 100}]).write_oci_layout(tmp_path)
    digest = OCILayoutSource(tmp_path).resolve().layers[1].digest
    blob = tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes() + b"\0" * 512)  # same content, another digest
    with pytest.raises(DigestMismatchError) as err:
        scan_image(OCILayoutSource(tmp_path), ScanOptions(workers=2, parallel_min_layer=1))
    assert err.value.layer == digest and err.value.source == str(tmp_path)


def _tar(fmt: int, members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_formats_read_like_tarfile(fmt: int) -> None:
    """Long names (ustar prefix, GNU ././@LongLink, pax path), links, modes and sizes come
    out as tarfile itself reads them."""
    rng = random.Random(fmt)
    deep = "/".join(f"dir{i:02d}" for i in range(15))  # 89 characters
    members = []
    for i, name in enumerate([f"{deep}/file-{'x' * 60}.txt", "etc/short", f"{deep}/dir/",
                              "usr/bin/tool", f"{deep}/link", f"{deep}/hard"]):
        info = tarfile.TarInfo(name)
        data = b""
        if name.endswith("/"):
            info.type = tarfile.DIRTYPE
        elif name.endswith("/link"):
            info.type, info.linkname = tarfile.SYMTYPE, "../" + "y" * 120
        elif name.endswith("/hard"):
            info.type, info.linkname = tarfile.LNKTYPE, "etc/short"
        else:
            data = rng.randbytes(rng.randrange(0, 3000))
            info.size = len(data)
        info.mode = 0o640 + i
        if fmt == tarfile.PAX_FORMAT and name == "etc/short":
            info.name = "etc/größe"  # non-ASCII: a pax path record
        members.append((info, data))
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold the 120-character link target
        members = [(i, d) for i, d in members if not i.name.endswith("/link")]
    blob = _tar(fmt, members)
    want = [(i.name.rstrip("/"), i.mode, d) for i, d in members]
    got = [(e.path, e.mode, e.read(1 << 20) or b"") for e in iter_layer(
        io.BytesIO(blob), "sha256:x", Limits(), lambda r, p: None)]
    assert [(p, m) for p, m, _ in got] == [(p, m) for p, m, _ in want]
    assert [d for _, _, d in got] == [d for _, _, d in want]


def test_corrupt_tar_headers_are_refused() -> None:
    blob = bytearray(layer_tar([("a", b"x" * 10), ("b", b"y")]))
    bad_first = bytes(blob[:148]) + b"0000000\0" + bytes(blob[156:])
    with pytest.raises(ImageFormatError, match="not a readable tar archive: bad header"):
        list(iter_layer(io.BytesIO(bad_first), "sha256:x", Limits(), lambda r, p: None))
    second = 1024  # header, one data block
    blob[second + 148:second + 156] = b"0000000\0"
    with pytest.raises(ImageFormatError, match="corrupt layer: bad header checksum"):
        list(iter_layer(io.BytesIO(bytes(blob)), "sha256:x", Limits(), lambda r, p: None))
    with pytest.raises(ImageFormatError, match="empty file"):
        list(iter_layer(io.BytesIO(b""), "sha256:x", Limits(), lambda r, p: None))
    assert list(iter_layer(io.BytesIO(bytes(1024)), "sha256:x", Limits(),
                           lambda r, p: None)) == []  # an empty layer


def test_path_that_is_not_utf8_survives_the_layer_cache(tmp_path: Path) -> None:
    info = tarfile.TarInfo("app/caf\xe9.txt")  # written as latin-1 by the ustar format
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="latin-1") as tf:
        tf.addfile(info, io.BytesIO(b""))
    paths = [e.path for e in iter_layer(io.BytesIO(blob.getvalue()), "sha256:x", Limits(),
                                        lambda r, p: None)]
    assert paths == ["app/caf\udce9.txt"]
    cache = FileLayerCache(tmp_path / "cache.sqlite")
    result = LayerResult(digest="sha256:x", present={paths[0]})
    cache.put_layer(result, "v")
    got = cache.get_layer("sha256:x", "v")
    assert got is not None and got.present == {paths[0]}
