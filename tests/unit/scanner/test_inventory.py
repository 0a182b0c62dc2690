"""Package inventory per ecosystem, with purls and layer digests."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.analyzers import java
from moray.controlplane.scanner.engine.analyzers.gobinary import GoBinaryAnalyzer
from moray.controlplane.scanner.engine.analyzers.java import JavaArchiveAnalyzer
from moray.controlplane.scanner.engine.analyzers.ospkg import RpmAnalyzer
from moray.controlplane.scanner.engine.model import OSRelease
from moray.controlplane.scanner.engine.scan import ScanOptions, parse_os_release, scan_image
from moray.controlplane.scanner.engine.source import OCILayoutSource
from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import File, Hardlink, Image, sha


def _scan(tmp_path: Path, *layers: dict[str, object]) -> list[tuple[str, str, str, str]]:
    Image(list(layers)).write_oci_layout(tmp_path)  # type: ignore[arg-type]
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions())
    return [(p.ecosystem, p.name, p.version, p.purl) for p in result.packages]


def test_dpkg_status_with_sources_and_purls(tmp_path: Path) -> None:
    pkgs = _scan(tmp_path, {"etc/os-release": rootfs.DEBIAN_OS_RELEASE,
                            "var/lib/dpkg/status": rootfs.dpkg_status(rootfs.DEBIAN_PACKAGES)})
    purl = "pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=debian-12&source=glibc"
    assert ("deb", "libc6", "2.36-9+deb12u1", purl) in pkgs
    assert len(pkgs) == 5  # the deinstalled stanza is not listed
    bash = next(p for p in pkgs if p[1] == "bash")
    assert "source=" not in bash[3]  # "bash (5.2.15-2)" is the same source name


def test_dpkg_status_d_distroless(tmp_path: Path) -> None:
    status = rootfs.dpkg_status([("tzdata", "2024a-0+deb12u1", "")])
    pkgs = _scan(tmp_path, {"var/lib/dpkg/status.d/tzdata": status,
                            "var/lib/dpkg/status.d/tzdata.md5sums": b"abc  x\n"})
    assert [(n, v) for _, n, v, _ in pkgs] == [("tzdata", "2024a-0+deb12u1")]


def test_apk_installed(tmp_path: Path) -> None:
    Image([{"etc/os-release": rootfs.ALPINE_OS_RELEASE,
            "lib/apk/db/installed": rootfs.apk_installed(rootfs.ALPINE_PACKAGES)}]
          ).write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions())
    assert result.os is not None and (result.os.id, result.os.version_id) == ("alpine", "3.18")
    ssl = next(p for p in result.packages if p.name == "libssl3")
    assert (ssl.source_name, ssl.version, ssl.licenses) == ("openssl", "3.1.2-r0", ("MIT",))
    assert ssl.purl.startswith("pkg:apk/alpine/libssl3@3.1.2-r0?arch=x86_64&distro=alpine-3.18")


def test_rpm_sqlite_database(tmp_path: Path) -> None:
    db = rootfs.rpmdb_sqlite([
        {1000: "openssl-libs", 1001: "3.0.7", 1002: "24.el9", 1003: 1, 1022: "x86_64",
         1044: "openssl-3.0.7-24.el9.src.rpm"},
        {1000: "bash", 1001: "5.1.8", 1002: "6.el9", 1022: "x86_64",
         1044: "bash-5.1.8-6.el9.src.rpm"},
        {1000: "gpg-pubkey", 1001: "fd431d51", 1002: "4ae0493b"},
    ])
    pkgs = RpmAnalyzer().analyze("var/lib/rpm/rpmdb.sqlite", db, "sha256:l")
    assert [(p.name, p.version, p.source_name, p.source_version) for p in pkgs] == [
        ("openssl-libs", "1:3.0.7-24.el9", "openssl", "1:3.0.7-24.el9"),
        ("bash", "5.1.8-6.el9", "bash", "5.1.8-6.el9"),
    ]
    assert RpmAnalyzer().analyze("x", b"garbage" * 100, "") == []


def test_python_dist_info_and_egg_info(tmp_path: Path) -> None:
    layer = {**rootfs.dist_info("requests", "2.19.0"), **rootfs.dist_info("PyYAML", "5.3"),
             "usr/lib/python3/dist-packages/six-1.16.0.egg-info":
                 b"Metadata-Version: 1.1\nName: six\nVersion: 1.16.0\n",
             "opt/venv/lib/python3.11/site-packages/Jinja2-2.10.egg-info/PKG-INFO":
                 b"Metadata-Version: 1.1\nName: Jinja2\nVersion: 2.10\n",
             "home/x/notes/METADATA": b"Name: nope\nVersion: 1\n"}
    pkgs = _scan(tmp_path, layer)
    assert sorted((n, v, p) for _, n, v, p in pkgs) == [
        ("Jinja2", "2.10", "pkg:pypi/jinja2@2.10"),
        ("PyYAML", "5.3", "pkg:pypi/pyyaml@5.3"),
        ("requests", "2.19.0", "pkg:pypi/requests@2.19.0"),
        ("six", "1.16.0", "pkg:pypi/six@1.16.0"),
    ]


def test_npm_node_modules_including_scoped_and_nested(tmp_path: Path) -> None:
    layer = {**rootfs.npm_package("lodash", "4.17.15"),
             **rootfs.npm_package("@babel/core", "7.0.0"),
             **rootfs.npm_package("minimist", "1.2.0", "app/node_modules/mkdirp/node_modules"),
             "app/package.json": b'{"name": "app", "version": "1.0.0"}',
             "app/node_modules/lodash/fp/package.json": b'{"main": "../fp.js"}'}
    pkgs = _scan(tmp_path, layer)
    assert sorted((n, v, p) for _, n, v, p in pkgs) == [
        ("core", "7.0.0", "pkg:npm/%40babel/core@7.0.0"),
        ("lodash", "4.17.15", "pkg:npm/lodash@4.17.15"),
        ("minimist", "1.2.0", "pkg:npm/minimist@1.2.0"),
    ]


def test_cargo_lock(tmp_path: Path) -> None:
    lock = b'version = 3\n[[package]]\nname = "smallvec"\nversion = "1.6.0"\n\n' \
           b'[[package]]\nname = "app"\nversion = "0.1.0"\n'
    pkgs = _scan(tmp_path, {"src/app/Cargo.lock": lock})
    assert [(n, v, p) for _, n, v, p in pkgs] == [
        ("smallvec", "1.6.0", "pkg:cargo/smallvec@1.6.0"), ("app", "0.1.0", "pkg:cargo/app@0.1.0")]


def test_java_archives(tmp_path: Path) -> None:
    pom = b"groupId=com.fasterxml.jackson.core\nartifactId=jackson-databind\nversion=2.9.8\n"
    inner = rootfs.jar({"META-INF/maven/org.yaml/snakeyaml/pom.properties":
                        b"#x\ngroupId=org.yaml\nartifactId=snakeyaml\nversion=1.33\n"})
    layer = {
        "app/lib/jackson-databind-2.9.8.jar": rootfs.jar(
            {"META-INF/maven/com.fasterxml.jackson.core/jackson-databind/pom.properties": pom}),
        "app/lib/plain.jar": rootfs.jar({"META-INF/MANIFEST.MF":
            b"Manifest-Version: 1.0\nImplementation-Title: plain\n"
            b"Implementation-Version: 3.1\nImplementation-Vendor-Id: org.example\n"}),
        "app/lib/asm-9.2.jar": rootfs.jar({"META-INF/MANIFEST.MF":
            b"Manifest-Version: 1.0\nBundle-SymbolicName: org.objectweb.asm\n"
            b"Implementation-Title: ASM, a very small and fast Java bytecode manipul\n"
            b" ation framework\nImplementation-Version: 9.2\nBundle-Version: 9.2.0\n"}),
        "app/app.war": rootfs.jar({"WEB-INF/lib/snakeyaml-1.33.jar": inner}),
        "app/broken.jar": b"not a zip",
    }
    pkgs = _scan(tmp_path, layer)
    assert sorted(p for _, _, _, p in pkgs) == [
        "pkg:maven/com.fasterxml.jackson.core/jackson-databind@2.9.8",
        "pkg:maven/org.example/plain@3.1",
        "pkg:maven/org.objectweb.asm/asm@9.2",
        "pkg:maven/org.yaml/snakeyaml@1.33",
    ]


def _manifest(*lines: str) -> bytes:
    return rootfs.jar({"META-INF/MANIFEST.MF": ("Manifest-Version: 1.0\n" + "\n".join(lines)
                                                + "\n").encode()})


POM_XML = b"""<?xml version="1.0"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <parent><groupId>org.ow2</groupId><artifactId>ow2</artifactId><version>1.5</version></parent>
  <artifactId>asm-tree</artifactId><version>9.6</version>
  <licenses><license><name>BSD-3-Clause</name></license></licenses>
</project>"""


def test_java_coordinates_cleaned(tmp_path: Path) -> None:
    """The issue's manifests: quoted, prose and build-tagged versions; pom.properties over
    the manifest; pom.xml alone; a shaded jar; groupIds from a Maven repository path."""
    lib = "app/lib/"
    m2 = "root/.m2/repository/org/apache/commons/commons-text/1.10.0/commons-text-1.10.0.jar"
    shaded_pom = b"groupId=com.google.guava\nartifactId=guava\nversion=31.1-jre\n"
    layer = {
        lib + "commons-digester-1.6.jar": _manifest('Implementation-Version: "1.6"',
                                                    "Implementation-Vendor-Id: commons-digester"),
        lib + "json-path-2.7.0.jar": _manifest("Implementation-Version: task",
                                               "Bundle-SymbolicName: com.jayway.jsonpath"),
        lib + "kotlin-stdlib-1.8.21.jar": _manifest(
            "Implementation-Version: 1.8.21-release-380(1.8.21)",
            "Implementation-Vendor-Id: org.jetbrains.kotlin"),
        lib + "renamed.jar": _manifest("Implementation-Version: ${project.version}"),
        # the manifest says 2.1 (a re-packaged jar); the embedded coordinates win
        lib + "jackson-core-2.15.2.jar": rootfs.jar({
            "META-INF/MANIFEST.MF": b"Implementation-Version: 2.1\n",
            "META-INF/maven/com.fasterxml.jackson.core/jackson-core/pom.properties":
                b"groupId=com.fasterxml.jackson.core\nartifactId=jackson-core\n"
                b"version=2.15.2\n"}),
        lib + "asm-tree-9.6.jar": rootfs.jar({"META-INF/maven/org.ow2.asm/asm-tree/pom.xml":
                                              POM_XML}),
        lib + "tool-3.0.jar": rootfs.jar({
            "META-INF/MANIFEST.MF": b"Implementation-Version: 3.0\n"
                                    b"Implementation-Vendor-Id: org.example\n",
            "META-INF/maven/com.google.guava/guava/pom.properties": shaded_pom}),
        m2: _manifest("Implementation-Version: 1.10.0"),
    }
    pkgs = _scan(tmp_path, layer)
    assert sorted(p for _, _, _, p in pkgs) == [
        "pkg:maven/com.fasterxml.jackson.core/jackson-core@2.15.2",
        "pkg:maven/com.google.guava/guava@31.1-jre",
        "pkg:maven/com.jayway.jsonpath/json-path@2.7.0",
        "pkg:maven/commons-digester/commons-digester@1.6",
        "pkg:maven/org.apache.commons/commons-text@1.10.0",
        "pkg:maven/org.example/tool@3.0",
        "pkg:maven/org.jetbrains.kotlin/kotlin-stdlib@1.8.21",
        "pkg:maven/org.ow2.asm/asm-tree@9.6",
    ]


def test_clean_version() -> None:
    assert java.clean_version('"1.6"') == "1.6"
    assert java.clean_version("2.0.8 2003-12-28 11:00:13") == "2.0.8"
    assert java.clean_version("1.8.21-release-380(1.8.21)") == "1.8.21-release-380"
    assert java.clean_version("task") == java.clean_version("${project.version}") == ""


MODINFO = ("path\texample.com/app\nmod\texample.com/app\t(devel)\t\n"
           "dep\tgolang.org/x/net\tv0.7.0\th1:abc=\n"
           "dep\tgolang.org/x/text\tv0.3.0\th1:def=\n"
           "=>\tgolang.org/x/text\tv0.3.2\th1:ghi=\n"
           "build\t-compiler=gc\n")


def test_go_buildinfo_inline_format() -> None:
    blob = rootfs.go_buildinfo_blob("go1.20.5", MODINFO)
    pkgs = GoBinaryAnalyzer().analyze("app/server", blob, "sha256:l")
    assert [(p.name, p.version) for p in pkgs] == [
        ("stdlib", "1.20.5"), ("golang.org/x/net", "v0.7.0"), ("golang.org/x/text", "v0.3.2")]
    assert pkgs[1].purl == "pkg:golang/golang.org/x/net@v0.7.0"
    assert GoBinaryAnalyzer().analyze("x", b"\x7fELF" + b"\0" * 5000, "") == []


@pytest.mark.skipif(shutil.which("go") is None, reason="Debian golang-go not installed")
def test_real_go_binary(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "go.mod").write_text("module example.com/hello\n\ngo 1.19\n")
    (src / "main.go").write_text('package main\nfunc main() { println("hi") }\n')
    env = {"HOME": str(tmp_path), "GOCACHE": str(tmp_path / "cache"), "GOFLAGS": "-mod=mod",
           "GOPROXY": "off", "PATH": "/usr/bin:/bin", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(tmp_path / "hello"), "."], cwd=src, env=env,
                   check=True, timeout=120)
    go_version = subprocess.run(["go", "env", "GOVERSION"], env=env, capture_output=True,
                                text=True, check=True).stdout.strip()
    img = tmp_path / "img"
    img.mkdir()
    pkgs = _scan(img, {"usr/local/bin/hello": File((tmp_path / "hello").read_bytes(), 0o755)})
    assert ("golang", "stdlib", go_version.removeprefix("go"),
            f"pkg:golang/stdlib@{go_version.removeprefix('go')}") in pkgs


def test_package_layer_digest_points_at_the_layer_holding_the_file(tmp_path: Path) -> None:
    img = Image([rootfs.dist_info("requests", "2.19.0"), rootfs.npm_package("lodash", "4.17.15")])
    img.write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions())
    by_name = {p.name: p for p in result.packages}
    blobs = img.build()[1]
    assert by_name["requests"].layer == sha(blobs[0])
    assert by_name["lodash"].layer == sha(blobs[1])
    assert by_name["lodash"].path == "/app/node_modules/lodash/package.json"


def test_rust_auditable_binary(tmp_path: Path) -> None:
    deps = {"packages": [
        {"name": "app", "version": "0.1.0", "source": "local", "root": True},
        {"name": "smallvec", "version": "1.6.0", "source": "crates.io"},
        {"name": "time", "version": "0.1.44", "source": "crates.io", "kind": "build"},
    ]}
    binary = rootfs.elf_with_section(".dep-v0", zlib.compress(json.dumps(deps).encode()))
    pkgs = _scan(tmp_path, {"usr/bin/app": File(binary, 0o755)})
    assert [(n, v) for _, n, v, _ in pkgs] == [("smallvec", "1.6.0"), ("time", "0.1.44")]


def test_os_release_fallbacks() -> None:
    assert parse_os_release(b"3.18.4\n", "etc/alpine-release") == OSRelease("alpine", "3.18")
    assert parse_os_release(b"12.5\n", "etc/debian_version") == OSRelease("debian", "12")
    assert parse_os_release(b"trixie/sid\n", "etc/debian_version") is None
    assert parse_os_release(b'ID=ubuntu\nVERSION_ID="22.04"\nVERSION_CODENAME=jammy\n') == \
        OSRelease("ubuntu", "22.04", "jammy")


def test_hard_link_to_an_analysed_file(tmp_path: Path) -> None:
    meta = "usr/lib/python3/site-packages/six-1.0.dist-info/METADATA"
    link = "opt/app/site-packages/six-1.0.dist-info/METADATA"
    pkgs = _scan(tmp_path, [(meta, b"Name: six\nVersion: 1.0\n"), (link, Hardlink(meta))])
    assert [n for _, n, _, _ in pkgs] == ["six", "six"]


def test_go_buildinfo_pointer_format_before_go_1_18() -> None:
    blob = rootfs.go_legacy_buildinfo_elf("go1.16.15", MODINFO)
    pkgs = GoBinaryAnalyzer().analyze("app/old", blob, "sha256:l")
    assert [(p.name, p.version) for p in pkgs] == [
        ("stdlib", "1.16.15"), ("golang.org/x/net", "v0.7.0"), ("golang.org/x/text", "v0.3.2")]
    broken = bytearray(blob)
    broken[0x110:0x118] = b"\xff" * 8  # pointer outside every segment
    assert GoBinaryAnalyzer().analyze("app/old", bytes(broken), "") == []


def test_rpm_berkeley_db_packages(tmp_path: Path) -> None:
    pkgs = [
        {1000: "openssl-libs", 1001: "1.1.1k", 1002: "9.el8_7", 1003: 1, 1022: "x86_64",
         1044: "openssl-1.1.1k-9.el8_7.src.rpm", 1014: "OpenSSL and ASL 2.0" + " " * 9000},
        {1000: "bash", 1001: "4.4.20", 1002: "4.el8_6", 1022: "x86_64",
         1044: "bash-4.4.20-4.el8_6.src.rpm"},
    ]
    db = rootfs.rpmdb_bdb(pkgs, tmp_path)
    if db is None:
        pytest.skip("db5.3_load (Debian db5.3-util) not installed")
    found = RpmAnalyzer().analyze("var/lib/rpm/Packages", db, "sha256:l")
    assert sorted((p.name, p.version, p.source_name) for p in found) == [
        ("bash", "4.4.20-4.el8_6", "bash"), ("openssl-libs", "1:1.1.1k-9.el8_7", "openssl")]
    assert RpmAnalyzer().analyze("var/lib/rpm/Packages", b"\0" * 8192, "") == []
    rng = random.Random(5)
    for _ in range(200):  # corrupt pages: no crash, at most fewer packages
        bad = bytearray(db)
        for _ in range(20):
            bad[rng.randrange(72, len(bad))] = rng.randrange(256)
        assert isinstance(RpmAnalyzer().analyze("var/lib/rpm/Packages", bytes(bad), ""), list)


def test_nested_jar_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java, "MAX_NESTED_TOTAL", 3 << 20)
    inner = rootfs.jar({"META-INF/maven/g/a/pom.properties": b"groupId=g\nartifactId=a\n"
                        b"version=1\n", "pad": b"\0" * (1 << 20)})
    outer = rootfs.jar({f"lib/x{i}.jar": inner for i in range(10)})
    pkgs = JavaArchiveAnalyzer().analyze("app.jar", outer, "")
    assert 1 <= len(pkgs) <= 3  # stops after the budget, does not inflate all ten


def test_metadata_headers_read_like_email_parser() -> None:
    from email.parser import BytesHeaderParser

    from moray.controlplane.scanner.engine.analyzers.lang import metadata_headers

    data = (b"Metadata-Version: 2.1\nName: Foo-Bar\nVersion:  1.0\nLicense: MIT or\n"
            b"  Apache-2.0\nName: ignored\nSummary: s\n\nVersion: 9 (the body)\n")
    ours = metadata_headers(data)
    theirs = BytesHeaderParser().parsebytes(data)
    for key in ("Name", "Version", "License", "Summary"):
        assert ours[key.lower()].strip() == str(theirs[key]).strip()
    assert ours["version"] == "1.0" and "license-expression" not in ours
